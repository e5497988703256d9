/**
 * Admission of a new VM's disk: a create is refused (507 INSUFFICIENT_STORAGE, the code a full
 * image store answers) when no host that could run the VM has room for its whole disk now, by the
 * free space its last heartbeat measured. A VM on a full host would pause at its first writes.
 */
import { NqvmError, type VmCreate } from '@nqvm/api';
import type { Datastore } from '../db/datastore';
import type { HostRow } from '../db/schema';
import { hasVmm } from '../scheduler/scheduler';

const MiB = 1024 * 1024;

/**
 * The disk a VM takes on its host, which its placement reserves: `disk_size_mib`, or its root
 * image's size (the default one when it names none); 0 when neither is known.
 */
export async function vmDiskMib(
  store: Datastore,
  input: Pick<VmCreate, 'disk_size_mib' | 'rootfs_image_id'>,
): Promise<number> {
  return input.disk_size_mib ?? (await rootImageMib(store, input.rootfs_image_id));
}

/**
 * Throws INSUFFICIENT_STORAGE when every host the VM could run on reports less free disk than
 * the VM's disk (`vmDiskMib`). Hosts that do not report free space (older agents) count as
 * having room; with no usable host at all, placement says why.
 *
 * @example
 * await admitDisk(store, { vmm: 'qemu' }, 4096); // 507 when every host has less than 4 GiB free
 */
export async function admitDisk(
  store: Datastore,
  input: Pick<VmCreate, 'vmm'>,
  diskMib: number,
): Promise<void> {
  if (!diskMib) return;
  const hosts = (await store.db.selectFrom('hosts').selectAll().execute()).filter(
    (h) =>
      h.status === 'ready' &&
      h.schedulable === 1 &&
      h.credential_hash !== null &&
      hasVmm(h, input.vmm ?? null),
  );
  const free = hosts.map((h) => ({ host: h, freeMib: freeDiskMib(h) }));
  if (free.length === 0 || free.some((f) => f.freeMib === null || f.freeMib >= diskMib)) return;
  throw new NqvmError(
    'INSUFFICIENT_STORAGE',
    `no host has room for the VM's ${diskMib} MiB disk (${free.map((f) => `${f.host.name}: ${f.freeMib} MiB free`).join('; ')}); free space on a host or ask for a smaller disk_size_mib`,
    {
      disk_mib: diskMib,
      hosts: free.map((f) => ({ host_id: f.host.id, name: f.host.name, disk_free_mib: f.freeMib })),
    },
  );
}

/** The free disk a host reported in its last heartbeat; null when it reports none. */
function freeDiskMib(h: HostRow): number | null {
  const free = (JSON.parse(h.capacity) as { disk_free_mib?: unknown }).disk_free_mib;
  return typeof free === 'number' ? free : null;
}

/** The size of the root image the VM's disk starts as (the given one, or the default); 0 when unknown. */
async function rootImageMib(store: Datastore, imageId: string | undefined): Promise<number> {
  let q = store.db.selectFrom('images').select('size_bytes').where('kind', '=', 'rootfs');
  q = imageId ? q.where('id', '=', imageId) : q.where('is_default', '=', 1);
  const row = await q.executeTakeFirst();
  return Math.ceil(Number(row?.size_bytes ?? 0) / MiB);
}
