/**
 * Imports an image from an OCI/Docker registry as an ext4 root file system: resolve the
 * reference (linux/amd64 from an index), download each layer with its digest verified, apply
 * the layers in order to a tree under `workDir` (whiteouts and opaque directories honoured),
 * then `mkfs.ext4 -d` the tree into `outFile`. The next layer downloads while one is applied.
 * On failure or abort nothing is left: the tree and a partial `outFile` are removed.
 */
import fs from 'node:fs/promises';
import { join } from 'node:path';
import { type ErrorCode, NqvmError } from '@nqvm/api';
import { ext4Geometry, makeExt4, measureTree } from './ext4';
import { openLayer } from './layer-source';
import { type Descriptor, parseImageConfig, parseManifest, selectLinuxAmd64 } from './manifest';
import { formatImageReference, parseImageReference, usesPlainHttp } from './reference';
import { RegistryClient } from './registry-client';
import { RootfsTree } from './rootfs-tree';

export { formatImageReference, type ImageReference, parseImageReference } from './reference';

export interface OciImportRequest {
  /** `alpine`, `docker.io/library/alpine:3.20`, `registry.example:5000/a/b:tag`, `name@sha256:...` */
  reference: string;
  username?: string;
  password?: string;
  /** http instead of https; when not given, http only for loopback registries (localhost, 127.x). */
  plainHttp?: boolean;
  /** A folder for the download and the tree (created if missing); a private subfolder is used and removed. */
  workDir: string;
  outFile: string;
  onProgress: (percent: number, message: string) => void;
  signal?: AbortSignal;
}

export interface OciImageConfig {
  entrypoint: string[] | null;
  cmd: string[] | null;
  env: string[];
  working_dir: string | null;
  user: string | null;
  exposed_ports: string[];
}

export interface OciImportResult {
  /** The digest of the linux/amd64 image manifest imported (not of the index that listed it). */
  manifestDigest: string;
  config: OciImageConfig;
  layers: number;
  /** Compressed layer bytes downloaded. */
  downloadedBytes: number;
  /** Entries not reproduced exactly (device nodes without CAP_MKNOD, extended attributes). */
  warnings: string[];
  /** Wall time downloading all layers, applying them (overlapping the downloads), and mkfs. */
  durationsMs: { download: number; apply: number; mkfs: number };
}

/** Percent of the whole import reached when the layers are downloaded / applied / ext4 is made. */
const DOWNLOAD_SHARE = 45;
const APPLY_SHARE = 45;

/**
 * Pulls `reference` and writes it as an ext4 image to `outFile`.
 *
 * @example
 * const result = await importOciImage({
 *   reference: 'docker.io/library/alpine:3.20',
 *   workDir: '/var/lib/nqvm/tmp',
 *   outFile: '/var/lib/nqvm/images/alpine.ext4',
 *   onProgress: (percent, message) => operation.progress(percent, message),
 * });
 */
export async function importOciImage(req: OciImportRequest): Promise<OciImportResult> {
  const ref = parseImageReference(req.reference);
  const name = formatImageReference(ref);
  const aborter = new AbortController();
  const onAbort = () => aborter.abort(req.signal?.reason);
  if (req.signal?.aborted) onAbort();
  req.signal?.addEventListener('abort', onAbort, { once: true });
  const progress = throttled(req.onProgress);
  const client = new RegistryClient({
    baseUrl: `${usesPlainHttp(ref, req.plainHttp) ? 'http' : 'https'}://${ref.apiHost}`,
    repository: ref.repository,
    username: req.username,
    password: req.password,
    signal: aborter.signal,
  });

  await fs.mkdir(req.workDir, { recursive: true });
  const work = await fs.mkdtemp(join(req.workDir, 'oci-import-'));
  let outFileTouched = false;
  try {
    progress(0, `resolving ${name}`);
    const image = await resolveImage(client, ref.digest ?? ref.tag!, name);
    const built = await buildTree(client, image.layers, work, aborter, progress);

    const geometry = ext4Geometry(await measureTree(built.tree.root));
    progress(DOWNLOAD_SHARE + APPLY_SHARE, `making a ${geometry.sizeMiB} MiB ext4 file system`);
    const t0 = performance.now();
    outFileTouched = true;
    await makeExt4(built.tree.root, req.outFile, geometry, aborter.signal);
    const mkfsMs = performance.now() - t0;
    progress(100, `imported ${name}`);
    return {
      manifestDigest: image.manifestDigest,
      config: image.config,
      layers: image.layers.length,
      downloadedBytes: built.downloadedBytes,
      warnings: built.tree.warnings,
      durationsMs: { download: built.downloadMs, apply: built.applyMs, mkfs: mkfsMs },
    };
  } catch (err) {
    if (outFileTouched) await fs.rm(req.outFile, { force: true }).catch(() => {});
    throw asImportError(err, name, req.signal);
  } finally {
    req.signal?.removeEventListener('abort', onAbort);
    await fs.rm(work, { recursive: true, force: true }).catch(() => {});
  }
}

export interface OciResolveOptions {
  username?: string;
  password?: string;
  /** As for an import: http instead of https; when not given, http only for loopback registries. */
  plainHttp?: boolean;
  signal?: AbortSignal;
}

export interface OciResolved {
  /** The canonical reference pinned to the manifest, e.g. `registry.local:5000/app:v1@sha256:...`. */
  pinned: string;
  /** The digest of the linux/amd64 image manifest (not of the index that listed it). */
  manifestDigest: string;
  config: OciImageConfig;
}

/** What a registry failure means to a client that asked for an image by reference. */
const RESOLVE_CODES: Record<string, ErrorCode> = {
  not_found: 'REGISTRY_IMAGE_NOT_FOUND',
  unauthorized: 'REGISTRY_AUTH_FAILED',
  forbidden: 'REGISTRY_AUTH_FAILED',
  unreachable: 'REGISTRY_UNREACHABLE',
  platform: 'IMAGE_UNSUPPORTED',
  unsupported: 'IMAGE_UNSUPPORTED',
};

/**
 * Resolves `reference` at its registry without pulling any layer: the linux/amd64 manifest's
 * digest and the image config (two or three small requests, with the import's client and
 * checks). Failures carry codes a client can act on: 400 VALIDATION_FAILED (not a reference),
 * 422 REGISTRY_IMAGE_NOT_FOUND, REGISTRY_AUTH_FAILED, IMAGE_UNSUPPORTED, 502
 * REGISTRY_UNREACHABLE (also when `signal` times out), REGISTRY_ERROR (anything else).
 *
 * @example
 * const { manifestDigest, config } = await resolveOciImage('registry.local:5000/app:v1', {
 *   signal: AbortSignal.timeout(10_000),
 * });
 */
export async function resolveOciImage(reference: string, opts: OciResolveOptions = {}): Promise<OciResolved> {
  const ref = parseImageReference(reference);
  const name = formatImageReference(ref);
  const client = new RegistryClient({
    baseUrl: `${usesPlainHttp(ref, opts.plainHttp) ? 'http' : 'https'}://${ref.apiHost}`,
    repository: ref.repository,
    username: opts.username,
    password: opts.password,
    signal: opts.signal,
  });
  try {
    const image = await resolveImage(client, ref.digest ?? ref.tag!, name);
    return {
      pinned: formatImageReference({ ...ref, digest: image.manifestDigest }),
      manifestDigest: image.manifestDigest,
      config: image.config,
    };
  } catch (err) {
    if (opts.signal?.aborted) {
      const reason = opts.signal.reason as Error | undefined;
      if (reason?.name !== 'TimeoutError') throw reason ?? err;
      throw new NqvmError('REGISTRY_UNREACHABLE', `the registry ${ref.registry} did not answer in time`, {
        reference: name,
      });
    }
    const e = err as NqvmError;
    const why = (e.details as { reason?: string } | undefined)?.reason ?? '';
    throw new NqvmError(RESOLVE_CODES[why] ?? 'REGISTRY_ERROR', e.message ?? String(err), {
      reference: name,
    });
  }
}

/** The linux/amd64 image manifest, its layers and its config. */
async function resolveImage(
  client: RegistryClient,
  reference: string,
  name: string,
): Promise<{ manifestDigest: string; layers: Descriptor[]; config: OciImageConfig }> {
  const manifest = await resolveImageManifest(client, reference);
  const { os, architecture, config } = parseImageConfig(await client.getBlob(manifest.config));
  if ((os && os !== 'linux') || (architecture && architecture !== 'amd64')) {
    throw new NqvmError('IMPORT_FAILED', `${name} is a ${os}/${architecture} image, not linux/amd64`, {
      reason: 'platform',
    });
  }
  return { manifestDigest: manifest.digest, layers: manifest.layers, config };
}

/**
 * Downloads the layers one after the other into `work` and applies each, in order, as soon as
 * it is complete, so layer n+1 downloads while layer n is applied.
 */
async function buildTree(
  client: RegistryClient,
  layers: Descriptor[],
  work: string,
  aborter: AbortController,
  progress: OciImportRequest['onProgress'],
): Promise<{ tree: RootfsTree; downloadedBytes: number; downloadMs: number; applyMs: number }> {
  const total = Math.max(
    1,
    layers.reduce((sum, l) => sum + l.size, 0),
  );
  let downloaded = 0;
  let applied = 0;
  const percent = () => (downloaded / total) * DOWNLOAD_SHARE + (applied / total) * APPLY_SHARE;
  const file = (i: number) => join(work, `layer-${i}`);

  const started = performance.now();
  let downloadMs = 0;
  let chain = Promise.resolve();
  const downloads = layers.map((layer, i) => {
    chain = chain.then(() =>
      client.downloadBlob(layer, file(i), (n) => {
        downloaded += n;
        progress(
          percent(),
          `downloading layer ${i + 1}/${layers.length} (${mib(downloaded)} of ${mib(total)} MiB)`,
        );
      }),
    );
    chain.catch(() => {});
    return chain;
  });
  chain.then(
    () => {
      downloadMs = performance.now() - started;
    },
    () => {},
  );

  const tree = new RootfsTree(join(work, 'rootfs'));
  await fs.mkdir(tree.root, { mode: 0o755 });
  let applyMs = 0;
  try {
    for (const [i, layer] of layers.entries()) {
      await downloads[i];
      const t0 = performance.now();
      progress(percent(), `applying layer ${i + 1}/${layers.length}`);
      const source = await openLayer(file(i), aborter.signal);
      await tree.applyLayer(source.tar, aborter.signal);
      await source.finished;
      await fs.rm(file(i));
      applied += layer.size;
      applyMs += performance.now() - t0;
      progress(percent(), `applied layer ${i + 1}/${layers.length}`);
    }
    tree.finish();
  } catch (err) {
    // Stop the downloads still running and let them settle before the work folder goes.
    aborter.abort(err);
    await chain.catch(() => {});
    throw err;
  }
  return { tree, downloadedBytes: downloaded, downloadMs, applyMs };
}

/** The image manifest `reference` names, through the index when it names one. */
async function resolveImageManifest(
  client: RegistryClient,
  reference: string,
): Promise<{ digest: string; config: Descriptor; layers: Descriptor[] }> {
  let fetched = await client.getManifest(reference);
  let doc = parseManifest(fetched.body, fetched.contentType);
  if (doc.kind === 'index') {
    fetched = await client.getManifest(selectLinuxAmd64(doc.manifests).digest);
    doc = parseManifest(fetched.body, fetched.contentType);
    if (doc.kind === 'index')
      throw new NqvmError('IMPORT_FAILED', 'the linux/amd64 entry of the index is another index', {
        reason: 'unsupported',
      });
  }
  return { digest: fetched.digest, config: doc.config, layers: doc.layers };
}

function asImportError(err: unknown, name: string, signal?: AbortSignal): unknown {
  if (signal?.aborted) return signal.reason ?? err;
  if (err instanceof NqvmError) return err;
  const e = err as NodeJS.ErrnoException;
  if (e.code === 'ENOSPC')
    return new NqvmError('INSUFFICIENT_STORAGE', `no space left on disk importing ${name}`);
  return new NqvmError('IMPORT_FAILED', `importing ${name} failed: ${e.message ?? String(err)}`);
}

/** Reports when the whole percent changes or the step does, not on every chunk. */
function throttled(report: OciImportRequest['onProgress']): OciImportRequest['onProgress'] {
  let lastPercent = -1;
  let lastStep = '';
  return (percent, message) => {
    const whole = Math.min(100, Math.floor(percent));
    const step = message.replace(/\(.*\)$/, '');
    if (whole === lastPercent && step === lastStep) return;
    lastPercent = whole;
    lastStep = step;
    report(whole, message);
  };
}

function mib(bytes: number): string {
  return (bytes / 1024 / 1024).toFixed(1);
}
