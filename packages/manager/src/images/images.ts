/**
 * Image lookups the reconciler needs: an explicit image by id, or the default of its kind
 * (`nqvm up` registers a default kernel, initrd and rootfs so a newcomer names none).
 */
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import { type AgentImageRef, NqvmError } from '@nqvm/api';
import { nowIso } from '../clock';
import type { Datastore } from '../db/datastore';
import type { ImageRow } from '../db/schema';

type Kind = 'kernel' | 'initrd' | 'rootfs';

export async function resolveImage(
  store: Datastore,
  kind: Kind,
  id: string | null,
  opts: { optional?: boolean; useDefault?: boolean } = {},
): Promise<AgentImageRef | null> {
  let q = store.db.selectFrom('images').selectAll().where('kind', '=', kind);
  if (id) q = q.where('id', '=', id);
  else if (opts.useDefault === false) return null;
  else q = q.where('is_default', '=', 1);
  const row = await q.executeTakeFirst();
  if (!row) {
    if (opts.optional && !id) return null;
    throw new NqvmError(
      'IMAGE_NOT_FOUND',
      id
        ? `${kind} image ${id} does not exist`
        : `no ${kind} image given and no default ${kind} is registered`,
      { field: `${kind}_image_id` },
    );
  }
  if (row.status !== 'ready') {
    throw new NqvmError('IMAGE_NOT_READY', `${kind} image ${row.name} is ${row.status}, not ready`, {
      field: `${kind}_image_id`,
    });
  }
  return toAgentImageRef(row);
}

/** What an agent needs to find or fetch an image's bytes. */
export function toAgentImageRef(row: ImageRow): AgentImageRef {
  const source = JSON.parse(row.source) as { path?: string };
  const meta = JSON.parse(row.metadata) as {
    vmlinux?: { sha256: string; size_bytes: number };
    has_cloud_init?: boolean;
  };
  return {
    id: row.id,
    sha256: row.sha256,
    size_bytes: row.size_bytes === null ? null : Number(row.size_bytes),
    path: source.path ?? null,
    format: row.format,
    vmlinux: meta.vmlinux ?? null,
    has_cloud_init: meta.has_cloud_init ?? null,
  };
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/**
 * Registers a file on this machine as an image (idempotent by name), optionally as the default
 * of its kind, trusting its bytes: test fixtures (stand-in kernels for stand-in hosts) use it.
 * Every import users make, and `nqvm up`'s built-in guest, goes through ImageService, which
 * refuses a file that is not an image of its kind.
 */
export async function registerPathImage(
  store: Datastore,
  input: { name: string; kind: Kind; path: string; isDefault?: boolean; format?: string },
): Promise<string> {
  const st = await fs.stat(input.path);
  const sha256 = await sha256File(input.path);
  const at = nowIso();
  const existing = await store.db
    .selectFrom('images')
    .select(['id'])
    .where('name', '=', input.name)
    .executeTakeFirst();
  if (input.isDefault)
    await store.db.updateTable('images').set({ is_default: 0 }).where('kind', '=', input.kind).execute();
  const values = {
    kind: input.kind,
    sha256,
    size_bytes: st.size,
    stored_bytes: st.blocks * 512,
    format: input.format ?? (input.kind === 'rootfs' ? 'ext4' : null),
    status: 'ready',
    source: JSON.stringify({ type: 'path', path: input.path }),
    is_default: input.isDefault ? 1 : 0,
    updated_at: at,
  };
  if (existing) {
    await store.db.updateTable('images').set(values).where('id', '=', existing.id).execute();
    return existing.id;
  }
  const id = randomUUID();
  await store.db
    .insertInto('images')
    .values({ id, name: input.name, metadata: '{}', created_at: at, ...values })
    .execute();
  return id;
}
