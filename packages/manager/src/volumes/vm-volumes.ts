/**
 * What the VM side needs to know about volumes: their JSON, the volumes each VM shows, the
 * rules for attaching (free, not being deleted, all on the VM's one host), and the writes
 * that attach and release them inside the caller's transaction.
 */
import { MAX_VM_VOLUMES, NqvmError, type Volume } from '@nqvm/api';
import type { Kysely, Transaction } from 'kysely';
import { nowIso } from '../clock';
import type { Database, VmRow, VolumeRow } from '../db/schema';
import type { EventBus } from '../events/bus';

export interface VmVolume {
  id: string;
  name: string;
  size_mib: number;
}

export function toVolume(r: VolumeRow): Volume {
  return {
    id: r.id,
    name: r.name,
    size_mib: Number(r.size_mib),
    filesystem: r.filesystem,
    host_id: r.host_id,
    vm_id: r.vm_id,
    status: r.status,
    delete_with_vm: r.delete_with_vm === 1,
    created_at: r.created_at,
    updated_at: r.updated_at,
  };
}

/** The volumes attached to each of `vmIds`, in the order the agent gets them. */
export async function volumesOfVms(db: Kysely<Database>, vmIds: string[]): Promise<Map<string, VmVolume[]>> {
  const out = new Map<string, VmVolume[]>(vmIds.map((id) => [id, []]));
  if (!vmIds.length) return out;
  const rows = await db
    .selectFrom('volumes')
    .select(['id', 'name', 'size_mib', 'vm_id'])
    .where('vm_id', 'in', vmIds)
    .orderBy('created_at')
    .orderBy('id')
    .execute();
  for (const r of rows) out.get(r.vm_id!)?.push({ id: r.id, name: r.name, size_mib: Number(r.size_mib) });
  return out;
}

export async function publishVolumes(
  db: Kysely<Database>,
  bus: EventBus,
  ids: string[],
  type: 'volume.updated' | 'volume.created' = 'volume.updated',
): Promise<void> {
  if (!ids.length) return;
  const rows = await db.selectFrom('volumes').selectAll().where('id', 'in', ids).execute();
  for (const r of rows)
    await bus.publish({ type, resourceType: 'volume', resourceId: r.id, data: toVolume(r) });
}

/**
 * Refuses, with the reason, attaching `volumes` to `vm`: one being deleted or attached, more
 * than a VM takes, or volumes (and the VM's placement) on different hosts, where no placement
 * could ever satisfy them all.
 */
export async function checkAttachable(
  db: Kysely<Database>,
  vm: Pick<VmRow, 'id' | 'name' | 'host_id'> | null,
  volumes: VolumeRow[],
): Promise<void> {
  for (const v of volumes) {
    if (v.status === 'deleting')
      throw new NqvmError('CONFLICT', `volume ${v.name} is being deleted`, { volume_id: v.id });
    if (v.vm_id !== null) {
      const what = v.vm_id === vm?.id ? 'this VM' : `VM ${v.vm_id}`;
      throw new NqvmError('VOLUME_IN_USE', `volume ${v.name} is already attached to ${what}`, {
        volume_id: v.id,
        vm_id: v.vm_id,
      });
    }
  }
  const attached = vm
    ? await db.selectFrom('volumes').selectAll().where('vm_id', '=', vm.id).orderBy('created_at').execute()
    : [];
  if (attached.length + volumes.length > MAX_VM_VOLUMES)
    throw new NqvmError('CONFLICT', `a VM takes at most ${MAX_VM_VOLUMES} volumes`, {
      attached: attached.length,
    });
  const hostIds = new Set<string>();
  if (vm?.host_id) hostIds.add(vm.host_id);
  for (const v of [...attached, ...volumes]) if (v.host_id) hostIds.add(v.host_id);
  if (hostIds.size <= 1) return;
  const hosts = await db
    .selectFrom('hosts')
    .select(['id', 'name'])
    .where('id', 'in', [...hostIds])
    .execute();
  const hostName = (id: string) => hosts.find((h) => h.id === id)?.name ?? id;
  const pinned = [...attached, ...volumes].filter((v) => v.host_id);
  const where = pinned.map((v) => `${v.name} on host ${hostName(v.host_id!)}`);
  if (vm?.host_id) where.push(`VM ${vm.name} on host ${hostName(vm.host_id)}`);
  throw new NqvmError(
    'CONFLICT',
    `a VM and its volumes live on one host; these do not: ${where.join(', ')}`,
    { host_ids: [...hostIds] },
  );
}

/**
 * Attaches free volumes to a VM inside `trx`; VOLUME_IN_USE (rolling back) when one was taken
 * meanwhile. A VM already on a host pins them there: that host makes their files.
 */
export async function claimVolumes(
  trx: Transaction<Database>,
  vm: Pick<VmRow, 'id' | 'host_id'>,
  ids: string[],
): Promise<void> {
  if (!ids.length) return;
  const claimed = await trx
    .updateTable('volumes')
    .set({
      vm_id: vm.id,
      status: 'in-use',
      ...(vm.host_id ? { host_id: vm.host_id } : {}),
      updated_at: nowIso(),
    })
    .where('id', 'in', ids)
    .where('vm_id', 'is', null)
    .where('status', '=', 'available')
    .executeTakeFirst();
  if (Number(claimed.numUpdatedRows) !== ids.length)
    throw new NqvmError('VOLUME_IN_USE', 'a volume was attached or deleted meanwhile; retry', {
      volume_ids: ids,
    });
}

/**
 * Frees the volumes of a VM being removed, inside `trx`: those marked delete_with_vm become
 * `deleting` (the volume sweep removes them from their host), the rest `available`. Answers
 * the ids it changed.
 */
export async function releaseVolumes(trx: Transaction<Database>, vmId: string): Promise<string[]> {
  const rows = await trx.selectFrom('volumes').select('id').where('vm_id', '=', vmId).execute();
  if (!rows.length) return [];
  const at = nowIso();
  await trx
    .updateTable('volumes')
    .set({ vm_id: null, status: 'deleting', updated_at: at })
    .where('vm_id', '=', vmId)
    .where('delete_with_vm', '=', 1)
    .execute();
  await trx
    .updateTable('volumes')
    .set({ vm_id: null, status: 'available', updated_at: at })
    .where('vm_id', '=', vmId)
    .execute();
  return rows.map((r) => r.id);
}
