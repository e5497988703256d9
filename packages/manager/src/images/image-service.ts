/**
 * The image registry: rows in `images`, bytes in the blob store. Uploads stream through the
 * request; URL and OCI imports run in the background as operations; host paths are registered
 * in place. Every image is inspected before it becomes `ready` (format, the vmlinux inside a
 * bzImage, cloud-init in an ext4). A failed or cancelled import keeps nothing, its row
 * included: the operation carries the error. Imports name the manager process running them,
 * so those of a stopped manager are resolved as soon as a manager (its restart) looks.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import {
  type Image,
  type ImageActionResponse,
  type ImageCreate,
  type ImageKind,
  type ImageMetadata,
  type ImagePatch,
  type ImageSource,
  type ImageStatus,
  NqvmError,
  type Operation,
} from '@nqvm/api';
import { extractVmlinux } from '@nqvm/api/kernel';
import { nowIso } from '../clock';
import { type Datastore, isUniqueViolation } from '../db/datastore';
import { paginate } from '../db/pagination';
import type { Presence } from '../db/presence';
import type { ImageRow } from '../db/schema';
import type { EventBus } from '../events/bus';
import type { Operations } from '../operations/operations';
import { BlobStore, BlobTooLargeError, hashFile, type StagedBlob, storageError } from './blob-store';
import { detectCloudInit } from './formats';
import { resolveHostPath } from './host-paths';
import { importOciImage } from './oci/index';
import { KEEPALIVE_MS, mib, ProgressReporter } from './progress';
import { parseFetchAllow, UrlPolicy } from './url-policy';
import { openUrl } from './url-source';
import { validateImage } from './validation';

export interface ImageServiceConfig {
  dataDir: string;
  imageRoot: string;
  allowImagePaths: boolean;
  imageMaxBytes: number;
  /** NQVM_IMAGE_FETCH_ALLOW's entries: what URL imports may fetch from despite the URL policy. */
  imageFetchAllow: string[];
}

interface Log {
  warn: (o: object, m: string) => void;
  error: (o: object, m: string) => void;
}

export interface ImageListFilter {
  limit: number;
  cursor?: string;
  kind?: ImageKind;
  status?: ImageStatus;
  name?: string;
}

/** Who references an image, as DELETE's 409 lists them. */
export interface ImageUser {
  type: 'vm' | 'template' | 'snapshot';
  id: string;
  name: string;
  fields: string[];
}

export const UPLOAD_KIND = 'image.upload';
export const IMPORT_KIND = 'image.import';
const MAX_LISTED_USERS = 50;

class ImportCancelled extends Error {
  constructor(message = 'import cancelled') {
    super(message);
    this.name = 'ImportCancelled';
  }
}

export function toImage(r: ImageRow): Image {
  const source = JSON.parse(r.source) as Partial<ImageSource>;
  const meta = JSON.parse(r.metadata) as ImageMetadata;
  return {
    id: r.id,
    name: r.name,
    kind: r.kind,
    status: r.status as ImageStatus,
    sha256: r.sha256,
    size_bytes: r.size_bytes === null ? null : Number(r.size_bytes),
    stored_bytes: r.stored_bytes === null ? null : Number(r.stored_bytes),
    format: r.format,
    source: {
      type: source.type ?? 'path',
      ...(source.url !== undefined ? { url: source.url } : {}),
      ...(source.reference !== undefined ? { reference: source.reference } : {}),
      ...(source.path !== undefined ? { path: source.path } : {}),
    },
    is_default: Boolean(r.is_default),
    metadata: {
      ...(meta.vmlinux ? { vmlinux: meta.vmlinux } : {}),
      ...(meta.has_cloud_init !== undefined ? { has_cloud_init: meta.has_cloud_init } : {}),
      ...(meta.oci ? { oci: meta.oci } : {}),
    },
    created_at: r.created_at,
    updated_at: r.updated_at,
  };
}

/** Bytes a file's allocated blocks take (st_blocks), less than its length when it is sparse. */
async function storedBytesOf(file: string): Promise<number> {
  return (await fs.stat(file)).blocks * 512;
}

/** Paths (a.b.c) of the string values equal to `id` in a JSON document. */
function fieldsHolding(json: string, id: string): string[] {
  const found: string[] = [];
  const stack: Array<[unknown, string]> = [[JSON.parse(json), '']];
  while (stack.length) {
    const [v, at] = stack.pop()!;
    if (v === id) found.push(at || '(root)');
    else if (v !== null && typeof v === 'object')
      for (const [k, x] of Object.entries(v)) stack.push([x, at ? `${at}.${k}` : k]);
  }
  return found.sort();
}

function errorOf(err: unknown): { code: string; message: string } {
  if (err instanceof NqvmError) return { code: err.code, message: err.message };
  return { code: 'IMPORT_FAILED', message: (err as Error)?.message ?? String(err) };
}

export class ImageService {
  readonly blobs: BlobStore;
  private readonly workRoot: string;
  private readonly urls: UrlPolicy;
  /** Abort controllers of the imports this manager runs, by operation id. */
  private readonly running = new Map<string, AbortController>();
  private readonly background = new Set<Promise<void>>();
  private sweeper?: NodeJS.Timeout;

  constructor(
    private readonly store: Datastore,
    private readonly bus: EventBus,
    private readonly ops: Operations,
    private readonly config: ImageServiceConfig,
    private readonly log: Log,
    private readonly presence: Presence,
  ) {
    const root = path.join(config.dataDir, 'images');
    this.blobs = new BlobStore(path.join(root, 'blobs'), presence.id);
    this.workRoot = path.join(root, 'work');
    this.urls = new UrlPolicy(parseFetchAllow(config.imageFetchAllow.join(',')), async () =>
      (await store.db.selectFrom('hosts').select('address').execute()).map((h) => h.address),
    );
    const cancel = async (op: { id: string }) => this.running.get(op.id)?.abort(new ImportCancelled());
    ops.onCancel(UPLOAD_KIND, cancel);
    ops.onCancel(IMPORT_KIND, cancel);
  }

  get maxBytes(): number {
    return this.config.imageMaxBytes;
  }

  // ---- reads ----------------------------------------------------------------------------

  async list(f: ImageListFilter): Promise<{ items: Image[]; next: string | null }> {
    let q = this.store.db.selectFrom('images').selectAll();
    if (f.kind) q = q.where('kind', '=', f.kind);
    if (f.status) q = q.where('status', '=', f.status);
    if (f.name) q = q.where('name', '>=', f.name).where('name', '<', `${f.name}\uffff`);
    const page = await paginate(q, 'created_at', f);
    return { items: page.items.map(toImage), next: page.next };
  }

  async getRow(id: string): Promise<ImageRow> {
    const row = await this.store.db.selectFrom('images').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) throw new NqvmError('IMAGE_NOT_FOUND', { id });
    return row;
  }

  async get(id: string): Promise<Image> {
    return toImage(await this.getRow(id));
  }

  /**
   * The file holding the bytes of digest `sha256` for an agent: a blob of a ready image (or of
   * its extracted vmlinux), or the file of a ready path image when the store has no blob.
   */
  async fileOf(sha256: string): Promise<{ path: string; size: number }> {
    const rows = await this.store.db
      .selectFrom('images')
      .selectAll()
      .where('status', '=', 'ready')
      .where((eb) => eb.or([eb('sha256', '=', sha256), eb('metadata', 'like', `%${sha256}%`)]))
      .execute();
    const blob = await this.blobs.stat(sha256);
    const owners = rows.filter(
      (r) => r.sha256 === sha256 || (JSON.parse(r.metadata) as ImageMetadata).vmlinux?.sha256 === sha256,
    );
    if (blob && owners.length) return blob;
    for (const r of owners) {
      const source = JSON.parse(r.source) as Partial<ImageSource>;
      if (r.sha256 !== sha256 || source.type !== 'path' || !source.path) continue;
      const st = await fs.stat(source.path).catch(() => null);
      // A path image's file may have changed since it was hashed; its size is the cheap check.
      if (st?.isFile() && st.size === Number(r.size_bytes)) return { path: source.path, size: st.size };
    }
    throw new NqvmError('IMAGE_NOT_FOUND', `image blob ${sha256} not found`, { id: sha256 });
  }

  // ---- changes --------------------------------------------------------------------------

  async patch(id: string, p: ImagePatch): Promise<Image> {
    const row = await this.getRow(id);
    if (p.is_default === true && row.status !== 'ready')
      throw new NqvmError(
        'IMAGE_NOT_READY',
        `image ${row.name} is ${row.status}; only a ready image can be the default`,
        {
          status: row.status,
        },
      );
    let demoted: string[] = [];
    try {
      await this.store.db.transaction().execute(async (trx) => {
        if (p.is_default === true) {
          const prev = await trx
            .selectFrom('images')
            .select('id')
            .where('kind', '=', row.kind)
            .where('is_default', '=', 1)
            .where('id', '!=', id)
            .execute();
          demoted = prev.map((r) => r.id);
          if (demoted.length)
            await trx
              .updateTable('images')
              .set({ is_default: 0, updated_at: nowIso() })
              .where('id', 'in', demoted)
              .execute();
        }
        await trx
          .updateTable('images')
          .set({
            ...(p.name !== undefined ? { name: p.name } : {}),
            ...(p.is_default !== undefined ? { is_default: p.is_default ? 1 : 0 } : {}),
            updated_at: nowIso(),
          })
          .where('id', '=', id)
          .execute();
      });
    } catch (err) {
      if (isUniqueViolation(err))
        throw new NqvmError('NAME_TAKEN', `an image named "${p.name}" exists`, { field: 'name' });
      throw err;
    }
    for (const other of demoted) await this.publish('image.updated', await this.getRow(other));
    return this.publish('image.updated', await this.getRow(id));
  }

  /**
   * Deletes an image nothing references. A default image is refused unless `force`: VMs and
   * templates that name no image of its kind fall back to it.
   */
  async delete(id: string, force: boolean): Promise<void> {
    const row = await this.getRow(id);
    if (row.status === 'importing') {
      const [op] = await this.ops.active(id);
      throw new NqvmError(
        'IMAGE_NOT_READY',
        `image ${row.name} is still importing; cancel its operation first`,
        op ? { operation_id: op.id } : {},
      );
    }
    const users = await this.usersOf(id);
    if (users.length)
      throw new NqvmError(
        'IMAGE_IN_USE',
        `image ${row.name} is used by ${users.map((u) => `${u.type} ${u.name}`).join(', ')}`,
        { users },
      );
    if (row.is_default && !force)
      throw new NqvmError(
        'IMAGE_IN_USE',
        `image ${row.name} is the default ${row.kind}: VMs and templates that name no ${row.kind} use it. ` +
          'Make another image the default first, or delete with ?force=true',
        { users: [], is_default: true },
      );
    await this.store.db.deleteFrom('images').where('id', '=', id).execute();
    await this.bus.publish({
      type: 'image.deleted',
      resourceType: 'image',
      resourceId: id,
      data: toImage(row),
    });
    await this.releaseBlobsOf(row);
  }

  /** VMs, templates and snapshots whose stored spec (or snapshot files) name the image id. */
  async usersOf(id: string): Promise<ImageUser[]> {
    const like = `%${id}%`;
    const users: ImageUser[] = [];
    const vms = await this.store.db
      .selectFrom('vms')
      .select(['id', 'name', 'spec'])
      .where('spec', 'like', like)
      .limit(MAX_LISTED_USERS)
      .execute();
    for (const v of vms)
      users.push({ type: 'vm', id: v.id, name: v.name, fields: fieldsHolding(v.spec, id) });
    const templates = await this.store.db
      .selectFrom('templates')
      .select(['id', 'name', 'spec'])
      .where('spec', 'like', like)
      .limit(MAX_LISTED_USERS)
      .execute();
    for (const t of templates)
      users.push({ type: 'template', id: t.id, name: t.name, fields: fieldsHolding(t.spec, id) });
    const snapshots = await this.store.db
      .selectFrom('snapshots')
      .select(['id', 'name', 'spec', 'files'])
      .where((eb) => eb.or([eb('spec', 'like', like), eb('files', 'like', like)]))
      .limit(MAX_LISTED_USERS)
      .execute();
    for (const s of snapshots)
      users.push({
        type: 'snapshot',
        id: s.id,
        name: s.name,
        fields: [
          ...fieldsHolding(s.spec, id).map((f) => `spec.${f}`),
          ...fieldsHolding(s.files, id).map((f) => `files.${f}`),
        ],
      });
    return users.filter((u) => u.fields.length > 0);
  }

  // ---- imports --------------------------------------------------------------------------

  /**
   * Receives an upload: the image row and its `image.upload` operation exist while bytes
   * arrive (progress from Content-Length); answers once the image is ready. Any failure
   * removes the row and the bytes.
   */
  async upload(
    input: { name: string; kind: ImageKind; sha256?: string },
    body: Readable,
    contentLength: number | null,
    actor: string | null,
  ): Promise<ImageActionResponse> {
    if (contentLength !== null && contentLength > this.maxBytes) throw new BlobTooLargeError(this.maxBytes);
    const { row, operation } = await this.begin(
      input.name,
      input.kind,
      { type: 'upload' },
      UPLOAD_KIND,
      actor,
      {
        sha256: input.sha256 ?? null,
        content_length: contentLength,
      },
    );
    const ac = new AbortController();
    this.running.set(operation.id, ac);
    const progress = new ProgressReporter(this.ops, operation.id, () => ac.abort(new ImportCancelled()));
    try {
      await this.ops.update(operation.id, { status: 'running', message: 'receiving' });
      const staged = await this.blobs.receive(body, {
        maxBytes: this.maxBytes,
        expectedSha256: input.sha256,
        signal: ac.signal,
        onBytes: (n) =>
          progress.report(
            contentLength ? (n * 100) / contentLength : 0,
            contentLength ? `received ${mib(n)} of ${mib(contentLength)}` : `received ${mib(n)}`,
          ),
      });
      const image = await this.finish(row, staged, {}, ac.signal, progress);
      return { image, operation: (await this.ops.succeed(operation.id, 'uploaded')) ?? operation };
    } catch (err) {
      await progress.stop();
      const e = ac.signal.aborted
        ? new NqvmError('CONFLICT', 'the upload was cancelled')
        : storageError(err, this.blobs.dir);
      // The row goes first: whoever sees the operation end finds no image.
      await this.removeImporting(row);
      await this.ops.fail(operation.id, errorOf(e).code, errorOf(e).message);
      throw e;
    } finally {
      this.running.delete(operation.id);
      await progress.stop();
    }
  }

  /**
   * POST /images: url and oci sources start a background `image.import` operation (the caller
   * answers 202); a path is hashed and registered in place at once (201, no operation).
   */
  async create(input: ImageCreate, actor: string | null): Promise<ImageActionResponse> {
    const src = input.source;
    if (src.type === 'path')
      return { image: await this.registerPath(input.name, input.kind, src.path, actor), operation: null };
    if (src.type === 'oci' && input.kind !== 'rootfs')
      throw new NqvmError(
        'VALIDATION_FAILED',
        'an OCI image becomes a root filesystem: kind must be rootfs',
        { field: 'kind' },
      );
    if (src.type === 'url') await this.urls.admit(src.url);
    const source: ImageSource =
      src.type === 'url' ? { type: 'url', url: src.url } : { type: 'oci', reference: src.reference };
    // The operation's params never hold the registry credentials.
    const { row, operation } = await this.begin(input.name, input.kind, source, IMPORT_KIND, actor, {
      source: source.type,
      ...(src.type === 'url' ? { url: src.url, sha256: src.sha256 ?? null } : { reference: src.reference }),
    });
    const work = this.runImport(row, operation.id, src).finally(() => this.background.delete(work));
    this.background.add(work);
    return { image: toImage(row), operation };
  }

  /** Waits for background imports (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.background.size) await Promise.all([...this.background]);
  }

  /**
   * Resolves the imports stopped managers left (this one's previous run included) before it
   * answers, then looks again every `intervalMs` (one manager at a time).
   */
  async start(intervalMs = 60_000): Promise<void> {
    const sweep = async () => {
      try {
        await this.store.withSingletonLock('nqvm:image-recover', () => this.recover());
      } catch (err) {
        this.log.error({ err }, 'recovering abandoned image imports failed; retrying');
      }
    };
    await sweep();
    this.sweeper = setInterval(sweep, intervalMs);
    this.sweeper.unref();
  }

  /** Aborts the imports this manager runs (shutdown); their rows go, their operations end cancelled. */
  async stop(): Promise<void> {
    if (this.sweeper) clearInterval(this.sweeper);
    for (const ac of this.running.values())
      ac.abort(new ImportCancelled('the manager stopped during the import'));
    await this.idle();
  }

  /**
   * Imports whose manager process stopped (killed, restarted, its host gone) end at once: the
   * operation fails saying so, the row and the partial files go. An import whose operation
   * names no manager (or a running one, yet went silent: no keep-alive for `staleMs`) is
   * judged by its last report.
   */
  async recover(staleMs = 4 * KEEPALIVE_MS): Promise<number> {
    const rows = await this.store.db
      .selectFrom('images')
      .selectAll()
      .where('status', '=', 'importing')
      .execute();
    const fresh = (at: string) => Date.now() - Date.parse(at) < staleMs;
    let recovered = 0;
    for (const row of rows) {
      const active = await this.ops.active(row.id);
      // A row without an operation is a begin() in progress, or a leftover once old.
      let live = active.length === 0 && fresh(row.updated_at);
      for (const op of active) {
        const owner = (JSON.parse(op.params) as { manager?: unknown }).manager;
        const ownerRuns = typeof owner === 'string' ? await this.presence.isRunning(owner) : true;
        if (this.running.has(op.id) || (ownerRuns && fresh(op.updated_at))) live = true;
      }
      if (live) continue;
      const message =
        'the import was cut off: the manager running it stopped (restarted or killed) before it ' +
        'finished; nothing was kept. Import the image again';
      await this.removeImporting(row);
      await this.removeWorkOf(row.id);
      for (const op of active) await this.ops.fail(op.id, 'IMPORT_FAILED', message);
      recovered++;
    }
    await this.blobs.sweepTemp(staleMs, async (owner) => !(await this.presence.isRunning(owner)));
    return recovered;
  }

  // ---- internals ------------------------------------------------------------------------

  private async begin(
    name: string,
    kind: ImageKind,
    source: ImageSource,
    opKind: string,
    actor: string | null,
    params: Record<string, unknown>,
  ): Promise<{ row: ImageRow; operation: Operation }> {
    const at = nowIso();
    const row: ImageRow = {
      id: randomUUID(),
      name,
      kind,
      sha256: null,
      size_bytes: null,
      stored_bytes: null,
      format: null,
      status: 'importing',
      source: JSON.stringify(source),
      metadata: '{}',
      is_default: 0,
      error: null,
      created_by: actor,
      created_at: at,
      updated_at: at,
    };
    try {
      await this.store.db.insertInto('images').values(row).execute();
    } catch (err) {
      if (isUniqueViolation(err))
        throw new NqvmError('NAME_TAKEN', `an image named "${name}" exists`, { field: 'name' });
      throw err;
    }
    await this.publish('image.created', row);
    const operation = await this.ops.create({
      kind: opKind,
      target: { type: 'image', id: row.id },
      createdBy: actor,
      params: { ...params, manager: this.presence.id },
      message: 'queued',
    });
    return { row, operation };
  }

  private async runImport(
    row: ImageRow,
    opId: string,
    src: Exclude<ImageCreate['source'], { type: 'path' }>,
  ) {
    const ac = new AbortController();
    this.running.set(opId, ac);
    const progress = new ProgressReporter(this.ops, opId, () => ac.abort(new ImportCancelled()));
    const work = path.join(this.workRoot, row.id);
    const removeWork = () => fs.rm(work, { recursive: true, force: true });
    try {
      if (!(await this.ops.update(opId, { status: 'running', message: 'starting' })))
        throw new ImportCancelled();
      let staged: StagedBlob;
      const metadata: ImageMetadata = {};
      if (src.type === 'url') {
        const opened = await openUrl(src.url, {
          maxBytes: this.maxBytes,
          policy: this.urls,
          signal: ac.signal,
        });
        const total = opened.contentLength;
        staged = await this.blobs.receive(opened.body, {
          maxBytes: this.maxBytes,
          expectedSha256: src.sha256,
          signal: ac.signal,
          onBytes: (n) =>
            progress.report(
              total ? (n * 100) / total : 0,
              total ? `downloaded ${mib(n)} of ${mib(total)}` : `downloaded ${mib(n)}`,
            ),
        });
      } else {
        await fs.mkdir(work, { recursive: true });
        const outFile = path.join(work, 'rootfs.ext4');
        const result = await importOciImage({
          reference: src.reference,
          username: src.username,
          password: src.password,
          plainHttp: src.plain_http,
          workDir: work,
          outFile,
          onProgress: (percent, message) => progress.report(percent, message),
          signal: ac.signal,
        });
        ac.signal.throwIfAborted();
        staged = await this.blobs.stageFile(outFile);
        metadata.oci = {
          reference: src.reference,
          manifest_digest: result.manifestDigest,
          config: result.config,
        };
      }
      await this.finish(row, staged, metadata, ac.signal, progress);
      // The work folder goes before the operation ends: a finished import leaves nothing behind.
      await removeWork();
      await this.ops.succeed(opId, 'imported');
    } catch (err) {
      await progress.stop();
      await removeWork();
      await this.removeImporting(row);
      if (ac.signal.aborted) {
        const reason =
          ac.signal.reason instanceof ImportCancelled ? ac.signal.reason.message : 'import cancelled';
        await this.ops.update(opId, { status: 'cancelled', message: reason });
      } else {
        const e = errorOf(storageError(err, this.blobs.dir));
        await this.ops.fail(opId, e.code, e.message);
        if (!(err instanceof NqvmError)) this.log.warn({ err, imageId: row.id }, 'image import failed');
      }
    } finally {
      this.running.delete(opId);
      await progress.stop();
      await removeWork();
    }
  }

  /** Inspects staged bytes, commits them (and any vmlinux) as blobs and marks the image ready. */
  private async finish(
    row: ImageRow,
    staged: StagedBlob,
    metadata: ImageMetadata,
    signal: AbortSignal,
    progress: ProgressReporter,
  ): Promise<Image> {
    const extra: StagedBlob[] = [];
    const work = path.join(this.workRoot, `${row.id}-inspect`);
    try {
      progress.report(99, 'inspecting the image');
      const found = await this.inspect(row.kind, staged.tmpPath, staged.size, work);
      if (found.vmlinux) extra.push(found.vmlinux);
      signal.throwIfAborted();
      await this.blobs.commit([staged, ...extra], async () => {
        const res = await this.store.db
          .updateTable('images')
          .set({
            sha256: staged.sha256,
            size_bytes: staged.size,
            format: found.format,
            metadata: JSON.stringify({ ...metadata, ...found.metadata }),
            updated_at: nowIso(),
          })
          .where('id', '=', row.id)
          .where('status', '=', 'importing')
          .executeTakeFirst();
        if (Number(res.numUpdatedRows) === 0) throw new ImportCancelled();
      });
    } catch (err) {
      for (const s of [staged, ...extra]) await this.blobs.discard(s);
      throw err;
    } finally {
      await fs.rm(work, { recursive: true, force: true });
    }
    const stored = await this.blobs.stat(staged.sha256);
    await this.store.db
      .updateTable('images')
      .set({ status: 'ready', stored_bytes: stored?.storedBytes ?? null, error: null, updated_at: nowIso() })
      .where('id', '=', row.id)
      .execute();
    return this.publish('image.updated', await this.getRow(row.id));
  }

  /**
   * Format and metadata of an image file; a bzImage also yields its vmlinux, staged as a
   * blob. A vmlinux that cannot be extracted leaves the kernel usable by QEMU only.
   */
  private async inspect(
    kind: ImageKind,
    file: string,
    size: number,
    work: string,
  ): Promise<{ format: string; metadata: ImageMetadata; vmlinux: StagedBlob | null }> {
    if (size === 0) throw new NqvmError('VALIDATION_FAILED', 'the image is empty', { field: 'body' });
    const format = await validateImage(kind, file);
    const metadata: ImageMetadata = {};
    let vmlinux: StagedBlob | null = null;
    if (format === 'bzimage') {
      await fs.mkdir(work, { recursive: true });
      const out = path.join(work, 'vmlinux');
      try {
        await extractVmlinux(file, out);
        vmlinux = await this.blobs.stageFile(out);
        metadata.vmlinux = { sha256: vmlinux.sha256, size_bytes: vmlinux.size };
      } catch (err) {
        const full = storageError(err, this.blobs.dir);
        if (full !== err) throw full;
        this.log.warn(
          { err, file },
          'no vmlinux could be extracted from the bzImage; Firecracker cannot boot it',
        );
      }
    }
    if (format === 'ext4') {
      const hasCloudInit = await detectCloudInit(file);
      if (hasCloudInit !== null) metadata.has_cloud_init = hasCloudInit;
    }
    return { format, metadata, vmlinux };
  }

  /** Registers a file under the image root in place: hashed and inspected, never copied. */
  private async registerPath(
    name: string,
    kind: ImageKind,
    requested: string,
    actor: string | null,
  ): Promise<Image> {
    const real = await resolveHostPath(
      { ...this.config, reserved: [path.dirname(this.blobs.dir), this.workRoot] },
      requested,
    );
    const taken = await this.store.db
      .selectFrom('images')
      .select('id')
      .where('name', '=', name)
      .executeTakeFirst();
    if (taken) throw new NqvmError('NAME_TAKEN', `an image named "${name}" exists`, { field: 'name' });
    const { sha256, size } = await hashFile(real);
    const id = randomUUID();
    const found = await this.inspect(kind, real, size, path.join(this.workRoot, `${id}-inspect`));
    const at = nowIso();
    const row: ImageRow = {
      id,
      name,
      kind,
      sha256,
      size_bytes: size,
      stored_bytes: await storedBytesOf(real),
      format: found.format,
      status: 'ready',
      source: JSON.stringify({ type: 'path', path: real }),
      metadata: JSON.stringify(found.metadata),
      is_default: 0,
      error: null,
      created_by: actor,
      created_at: at,
      updated_at: at,
    };
    try {
      await this.blobs.commit(found.vmlinux ? [found.vmlinux] : [], async () => {
        await this.store.db.insertInto('images').values(row).execute();
      });
    } catch (err) {
      if (found.vmlinux) await this.blobs.discard(found.vmlinux);
      if (isUniqueViolation(err))
        throw new NqvmError('NAME_TAKEN', `an image named "${name}" exists`, { field: 'name' });
      throw err;
    } finally {
      await fs.rm(path.join(this.workRoot, `${id}-inspect`), { recursive: true, force: true });
    }
    return this.publish('image.created', row);
  }

  /**
   * Registers a file the manager provides itself (the built-in guest of `nqvm up`) in place, as
   * the default of its kind unless `isDefault` is false (the container init), inspected like any
   * import (a bzImage kernel gets its vmlinux for Firecracker). Idempotent by name: an unchanged
   * file keeps its row.
   */
  async registerBuiltin(input: {
    name: string;
    kind: ImageKind;
    path: string;
    isDefault?: boolean;
  }): Promise<string> {
    const { sha256, size } = await hashFile(input.path);
    const existing = await this.store.db
      .selectFrom('images')
      .selectAll()
      .where('name', '=', input.name)
      .executeTakeFirst();
    let id = existing?.id;
    const samePath = existing && (JSON.parse(existing.source) as { path?: string }).path === input.path;
    if (!existing || existing.sha256 !== sha256 || !samePath || existing.status !== 'ready') {
      id ??= randomUUID();
      const work = path.join(this.workRoot, `${id}-inspect`);
      const found = await this.inspect(input.kind, input.path, size, work);
      const at = nowIso();
      const values = {
        kind: input.kind,
        sha256,
        size_bytes: size,
        stored_bytes: await storedBytesOf(input.path),
        format: found.format,
        status: 'ready',
        source: JSON.stringify({ type: 'path', path: input.path }),
        metadata: JSON.stringify(found.metadata),
        error: null,
        updated_at: at,
      };
      const rowId = id;
      try {
        await this.blobs.commit(found.vmlinux ? [found.vmlinux] : [], async () => {
          if (existing)
            await this.store.db.updateTable('images').set(values).where('id', '=', rowId).execute();
          else
            await this.store.db
              .insertInto('images')
              .values({
                id: rowId,
                name: input.name,
                is_default: 0,
                created_by: null,
                created_at: at,
                ...values,
              })
              .execute();
        });
      } catch (err) {
        if (found.vmlinux) await this.blobs.discard(found.vmlinux);
        throw err;
      } finally {
        await fs.rm(work, { recursive: true, force: true });
      }
    }
    const current = await this.getRow(id as string);
    if (!current.is_default && input.isDefault !== false) await this.patch(current.id, { is_default: true });
    return current.id;
  }

  /** The work folders an import of image `id` may have left (its download or conversion, its inspection). */
  private async removeWorkOf(id: string): Promise<void> {
    for (const dir of [id, `${id}-inspect`])
      await fs.rm(path.join(this.workRoot, dir), { recursive: true, force: true });
  }

  /** Removes the row of an import that ended without an image, and any blob it had committed. */
  private async removeImporting(row: ImageRow): Promise<void> {
    const current = await this.store.db
      .selectFrom('images')
      .selectAll()
      .where('id', '=', row.id)
      .executeTakeFirst();
    const gone = await this.store.db
      .deleteFrom('images')
      .where('id', '=', row.id)
      .where('status', '=', 'importing')
      .executeTakeFirst();
    if (!current || Number(gone.numDeletedRows) === 0) return;
    await this.bus.publish({
      type: 'image.deleted',
      resourceType: 'image',
      resourceId: row.id,
      data: toImage(current),
    });
    await this.releaseBlobsOf(current);
  }

  /** Removes the blobs of a deleted row that no other image row names. */
  private async releaseBlobsOf(row: ImageRow): Promise<void> {
    const digests = [row.sha256, (JSON.parse(row.metadata) as ImageMetadata).vmlinux?.sha256].filter(
      (d): d is string => !!d,
    );
    for (const d of digests) {
      await this.blobs.release(d, async () => {
        const user = await this.store.db
          .selectFrom('images')
          .select('id')
          .where((eb) => eb.or([eb('sha256', '=', d), eb('metadata', 'like', `%${d}%`)]))
          .executeTakeFirst();
        return user !== undefined;
      });
    }
  }

  private async publish(type: string, row: ImageRow): Promise<Image> {
    const image = toImage(row);
    await this.bus.publish({ type, resourceType: 'image', resourceId: row.id, data: image });
    return image;
  }
}
