/**
 * The volume resource: data disks recorded here, made by the agent of the host a VM using them
 * is first placed on (the reconciler sends each VM's volumes with its spec), and removed there
 * when deleted. Attaching and detaching change the VM's spec, so they bump its generation.
 */
import { randomUUID } from 'node:crypto';
import {
  NqvmError,
  type Vm,
  type Volume,
  type VolumeCreate,
  type VolumePatch,
  type VolumeStatus,
} from '@nqvm/api';
import { sql } from 'kysely';
import { nowIso } from '../clock';
import { type Datastore, isUniqueViolation } from '../db/datastore';
import { paginate } from '../db/pagination';
import type { VmRow, VolumeRow } from '../db/schema';
import type { EventBus } from '../events/bus';
import type { AgentClient } from '../hosts/agent-client';
import type { Vms } from '../vms/vms';
import { checkAttachable, claimVolumes, publishVolumes, toVolume } from './vm-volumes';

export interface VolumeListFilter {
  limit: number;
  cursor?: string;
  vm_id?: string;
  host_id?: string;
  status?: VolumeStatus;
  name?: string;
}

export class Volumes {
  /** Volumes a request is deleting right now: the sweep leaves them to it. */
  private readonly deletingNow = new Set<string>();

  constructor(
    private readonly store: Datastore,
    private readonly bus: EventBus,
    private readonly agents: AgentClient,
    private readonly vms: Vms,
    private readonly log: { warn: (o: object, m: string) => void },
  ) {}

  async list(f: VolumeListFilter): Promise<{ items: Volume[]; next: string | null }> {
    let q = this.store.db.selectFrom('volumes').selectAll();
    if (f.vm_id) q = q.where('vm_id', '=', f.vm_id);
    if (f.host_id) q = q.where('host_id', '=', f.host_id);
    if (f.status) q = q.where('status', '=', f.status);
    if (f.name) q = q.where('name', '>=', f.name).where('name', '<', `${f.name}\uffff`);
    const page = await paginate(q, 'created_at', f);
    return { items: page.items.map(toVolume), next: page.next };
  }

  async findRow(id: string): Promise<VolumeRow | undefined> {
    return this.store.db.selectFrom('volumes').selectAll().where('id', '=', id).executeTakeFirst();
  }

  async getRow(id: string): Promise<VolumeRow> {
    const row = await this.findRow(id);
    if (!row) throw new NqvmError('VOLUME_NOT_FOUND', { id });
    return row;
  }

  async get(id: string): Promise<Volume> {
    return toVolume(await this.getRow(id));
  }

  async create(input: VolumeCreate, actor: string | null): Promise<Volume> {
    const at = nowIso();
    const row: VolumeRow = {
      id: randomUUID(),
      name: input.name,
      size_mib: input.size_mib,
      filesystem: input.filesystem,
      host_id: null,
      vm_id: null,
      delete_with_vm: input.delete_with_vm ? 1 : 0,
      status: 'available',
      created_by: actor,
      created_at: at,
      updated_at: at,
    };
    try {
      await this.store.db.insertInto('volumes').values(row).execute();
    } catch (err) {
      throw nameTaken(err, input.name);
    }
    const volume = toVolume(row);
    await this.bus.publish({
      type: 'volume.created',
      resourceType: 'volume',
      resourceId: row.id,
      data: volume,
    });
    return volume;
  }

  async patch(id: string, p: VolumePatch): Promise<Volume> {
    const row = await this.getRow(id);
    if (row.status === 'deleting')
      throw new NqvmError('CONFLICT', `volume ${row.name} is being deleted`, { volume_id: id });
    const resizing = p.size_mib !== undefined && p.size_mib !== Number(row.size_mib);
    if (resizing && p.size_mib! < Number(row.size_mib))
      throw new NqvmError('VALIDATION_FAILED', `volumes only grow (${row.name} has ${row.size_mib} MiB)`, {
        fields: [{ path: 'body.size_mib', message: `at least ${row.size_mib}` }],
      });
    if (resizing && row.vm_id)
      throw new NqvmError('VOLUME_IN_USE', `volume ${row.name} grows only while detached`, {
        volume_id: id,
        vm_id: row.vm_id,
      });
    let updated: bigint;
    try {
      let q = this.store.db
        .updateTable('volumes')
        .set({
          ...(p.name !== undefined ? { name: p.name } : {}),
          ...(resizing ? { size_mib: p.size_mib } : {}),
          ...(p.delete_with_vm !== undefined ? { delete_with_vm: p.delete_with_vm ? 1 : 0 } : {}),
          updated_at: nowIso(),
        })
        .where('id', '=', id)
        .where('status', '!=', 'deleting');
      if (resizing) q = q.where('vm_id', 'is', null);
      updated = (await q.executeTakeFirst()).numUpdatedRows;
    } catch (err) {
      throw nameTaken(err, p.name ?? row.name);
    }
    if (Number(updated) === 0)
      throw new NqvmError('VOLUME_IN_USE', `volume ${row.name} was attached or deleted meanwhile`, {
        volume_id: id,
      });
    return this.publishUpdated(id);
  }

  /**
   * Deletes a detached volume: its host's agent removes the file first, then the row goes. When
   * the host does not answer, 503 HOST_UNAVAILABLE and the volume stays as it was.
   */
  async delete(id: string): Promise<void> {
    const row = await this.getRow(id);
    if (row.vm_id)
      throw new NqvmError(
        'VOLUME_IN_USE',
        `volume ${row.name} is attached to VM ${row.vm_id}; detach it first`,
        {
          volume_id: id,
          vm_id: row.vm_id,
        },
      );
    // One delete per volume at a time in this manager: a user's and the sweep's never overlap.
    if (this.deletingNow.has(id))
      throw new NqvmError('CONFLICT', `volume ${row.name} is being deleted`, { volume_id: id });
    this.deletingNow.add(id);
    try {
      await this.deleteClaimed(id, row);
    } finally {
      this.deletingNow.delete(id);
    }
  }

  private async deleteClaimed(id: string, row: VolumeRow): Promise<void> {
    // Marked deleting before the host is asked, so no attach slips in meanwhile.
    const claimed = await this.store.db
      .updateTable('volumes')
      .set({ status: 'deleting' })
      .where('id', '=', id)
      .where('vm_id', 'is', null)
      .executeTakeFirst();
    if (Number(claimed.numUpdatedRows) === 0) {
      const now = await this.getRow(id);
      throw new NqvmError('VOLUME_IN_USE', `volume ${now.name} was attached meanwhile`, {
        volume_id: id,
        vm_id: now.vm_id,
      });
    }
    try {
      await this.removeFromHost(row);
    } catch (err) {
      await this.store.db
        .updateTable('volumes')
        .set({ status: row.status })
        .where('id', '=', id)
        .where('status', '=', 'deleting')
        .execute();
      throw err;
    }
    await this.drop(id);
  }

  /** Attaches a volume to a stopped VM; the VM's next command carries it. */
  async attach(vmId: string, volumeId: string): Promise<Vm> {
    const vm = await this.vms.getRow(vmId);
    const volume = await this.getRow(volumeId);
    requireStopped(vm, 'attach a volume to');
    await checkAttachable(this.store.db, vm, [volume]);
    await this.store.db.transaction().execute(async (trx) => {
      await bumpStoppedVm(trx, vm);
      await claimVolumes(trx, vm, [volumeId]);
    });
    await publishVolumes(this.store.db, this.bus, [volumeId]);
    return this.vms.publishUpdated(vmId);
  }

  /** Detaches a volume from a stopped VM; it stays on its host, available. */
  async detach(vmId: string, volumeId: string): Promise<Vm> {
    const vm = await this.vms.getRow(vmId);
    const volume = await this.getRow(volumeId);
    if (volume.vm_id !== vmId)
      throw new NqvmError('VOLUME_NOT_FOUND', `volume ${volume.name} is not attached to VM ${vm.name}`, {
        id: volumeId,
        vm_id: volume.vm_id,
      });
    requireStopped(vm, 'detach a volume from');
    await this.store.db.transaction().execute(async (trx) => {
      await bumpStoppedVm(trx, vm);
      const freed = await trx
        .updateTable('volumes')
        .set({ vm_id: null, status: 'available', updated_at: nowIso() })
        .where('id', '=', volumeId)
        .where('vm_id', '=', vmId)
        .executeTakeFirst();
      if (Number(freed.numUpdatedRows) !== 1)
        throw new NqvmError('CONFLICT', 'the volume was detached meanwhile', { volume_id: volumeId });
    });
    await publishVolumes(this.store.db, this.bus, [volumeId]);
    return this.vms.publishUpdated(vmId);
  }

  /**
   * Finishes the deletes a VM delete left behind (volumes in `deleting`, attached to nothing)
   * on hosts that are ready; the rest wait for their host. Run by the manager's loop.
   */
  async sweep(): Promise<void> {
    const ready = this.store.db.selectFrom('hosts').select('id').where('status', '=', 'ready');
    const pending = await this.store.db
      .selectFrom('volumes')
      .selectAll()
      .where('status', '=', 'deleting')
      .where('vm_id', 'is', null)
      .where((eb) => eb.or([eb('host_id', 'is', null), eb('host_id', 'in', ready)]))
      .execute();
    for (const row of pending) {
      if (this.deletingNow.has(row.id)) continue;
      this.deletingNow.add(row.id);
      try {
        // Read again now that this sweep holds the volume: a user's delete may have finished,
        // or failed and put the volume back, since the list above was read.
        const now = await this.findRow(row.id);
        if (now?.status !== 'deleting' || now.vm_id) continue;
        await this.removeFromHost(now);
        await this.drop(now.id);
      } catch (err) {
        this.log.warn({ err, volumeId: row.id }, 'volume delete on its host failed; will retry');
      } finally {
        this.deletingNow.delete(row.id);
      }
    }
  }

  private async removeFromHost(row: VolumeRow): Promise<void> {
    if (!row.host_id) return;
    const host = await this.store.db
      .selectFrom('hosts')
      .select(['address'])
      .where('id', '=', row.host_id)
      .executeTakeFirst();
    if (host) await this.agents.deleteVolume(host.address, row.id);
  }

  private async drop(id: string): Promise<void> {
    const row = await this.findRow(id);
    if (!row) return;
    const gone = await this.store.db.deleteFrom('volumes').where('id', '=', id).executeTakeFirst();
    if (Number(gone.numDeletedRows) === 1)
      await this.bus.publish({
        type: 'volume.deleted',
        resourceType: 'volume',
        resourceId: id,
        data: toVolume(row),
      });
  }

  private async publishUpdated(id: string): Promise<Volume> {
    const volume = await this.get(id);
    await this.bus.publish({ type: 'volume.updated', resourceType: 'volume', resourceId: id, data: volume });
    return volume;
  }
}

function requireStopped(vm: VmRow, what: string): void {
  if (vm.state !== 'stopped')
    throw new NqvmError('VM_INVALID_STATE', `cannot ${what} a VM that is ${vm.state}; stop it first`, {
      state: vm.state,
    });
}

/**
 * A spec change: the reconciler sends the VM's host the new spec under the next generation.
 * Only while the VM is still stopped on the host it was read with.
 */
async function bumpStoppedVm(trx: Parameters<typeof claimVolumes>[0], vm: VmRow): Promise<void> {
  const bumped = await trx
    .updateTable('vms')
    .set({ generation: sql`generation + 1`, commanded_at: null, updated_at: nowIso() })
    .where('id', '=', vm.id)
    .where('state', '=', 'stopped')
    .where('host_id', vm.host_id === null ? 'is' : '=', vm.host_id)
    .executeTakeFirst();
  if (Number(bumped.numUpdatedRows) !== 1)
    throw new NqvmError('VM_INVALID_STATE', 'the VM changed state meanwhile; retry', { state: vm.state });
}

function nameTaken(err: unknown, name: string): unknown {
  return isUniqueViolation(err)
    ? new NqvmError('NAME_TAKEN', `a volume named "${name}" exists`, { field: 'name' })
    : err;
}
