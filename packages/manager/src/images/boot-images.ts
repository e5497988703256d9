/**
 * The initrd a VM boots with. A kernel whose disk and network drivers are modules (the built-in
 * Debian cloud kernel) cannot mount a root disk on its own: it panics. Such a kernel records its
 * companion initrd (the one that carries its modules and switches to the root disk), and a VM
 * that names the kernel but no initrd (the reference system's kernel + rootfs form, templates)
 * boots with it.
 */
import type { AgentImageRef } from '@nqvm/api';
import { nowIso } from '../clock';
import type { Datastore } from '../db/datastore';
import { resolveImage } from './images';

/**
 * The initrd the VM names; else the default initrd when it names no kernel (the default kernel
 * and initrd are a pair); else its kernel's companion, when the kernel has one and it is ready.
 *
 * @example
 * const initrd = await resolveInitrd(store, spec); // null: the kernel boots without one
 */
export async function resolveInitrd(
  store: Datastore,
  spec: { kernel_image_id: string | null; initrd_image_id: string | null },
): Promise<AgentImageRef | null> {
  if (spec.initrd_image_id || spec.kernel_image_id === null)
    return resolveImage(store, 'initrd', spec.initrd_image_id, {
      optional: true,
      useDefault: spec.kernel_image_id === null,
    });
  const kernel = await store.db
    .selectFrom('images')
    .select('metadata')
    .where('id', '=', spec.kernel_image_id)
    .executeTakeFirst();
  const companion = kernel
    ? (JSON.parse(kernel.metadata) as { companion_initrd_id?: string }).companion_initrd_id
    : undefined;
  if (!companion) return null;
  const ready = await store.db
    .selectFrom('images')
    .select('id')
    .where('id', '=', companion)
    .where('kind', '=', 'initrd')
    .where('status', '=', 'ready')
    .executeTakeFirst();
  return ready ? resolveImage(store, 'initrd', companion) : null;
}

/** Records `initrdId` as the initrd `kernelId` boots with when a VM names none. */
export async function setCompanionInitrd(
  store: Datastore,
  kernelId: string,
  initrdId: string,
): Promise<void> {
  const row = await store.db
    .selectFrom('images')
    .select('metadata')
    .where('id', '=', kernelId)
    .executeTakeFirstOrThrow();
  const metadata = {
    ...(JSON.parse(row.metadata) as Record<string, unknown>),
    companion_initrd_id: initrdId,
  };
  await store.db
    .updateTable('images')
    .set({ metadata: JSON.stringify(metadata), updated_at: nowIso() })
    .where('id', '=', kernelId)
    .execute();
}
