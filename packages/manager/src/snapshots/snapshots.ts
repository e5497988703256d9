/**
 * The snapshot resource: a VM's memory, device state and disk frozen by the agent of its host,
 * which keeps the files. A snapshot restores its own VM in place (a new generation whose command
 * carries `restore`) or becomes a new VM, a clone placed on the same host. The row's `spec`
 * keeps what a clone needs, so a snapshot outlives the VM it was taken of.
 */
import { randomUUID } from 'node:crypto';
import {
  type AgentSnapshot,
  NqvmError,
  type Operation,
  type Snapshot,
  type SnapshotCreate,
  type SnapshotInstantiate,
  type SnapshotInstantiateResponse,
  type SnapshotStatus,
  type Vm,
  type VmCreate,
} from '@nqvm/api';
import type { Kysely } from 'kysely';
import { isoAfter, nowIso } from '../clock';
import { type Datastore, isUniqueViolation } from '../db/datastore';
import { paginate } from '../db/pagination';
import type { Database, HostRow, SnapshotRow, VmRow } from '../db/schema';
import type { EventBus } from '../events/bus';
import type { AgentClient } from '../hosts/agent-client';
import { resolveInitrd } from '../images/boot-images';
import { resolveImage } from '../images/images';
import type { Operations } from '../operations/operations';
import type { StoredSpec, Vms } from '../vms/vms';

/** The agent answers once the files are written: minutes for a big guest. */
const TAKE_TIMEOUT_MS = 15 * 60_000;
/** A manager working on a snapshot with its host (taking, deleting) renews its claim this often... */
const CLAIM_RENEW_MS = 5_000;
/** ...and a claim not renewed for this long is taken over (that manager stopped). */
const CLAIM_MS = 15_000;

/**
 * What `snapshots.spec` keeps: the VM's shape when it was taken, images resolved to the ids it
 * ran with and under the VM spec's names (image delete finds its users by them), the guest
 * password only as its hash, networks by id (a clone gets new addresses on them).
 */
export interface SnapshotSpec {
  source_vm_id: string;
  name: string;
  vcpu: number;
  mem_mib: number;
  vmm: 'firecracker' | 'qemu';
  restart_policy: 'never' | 'on-failure' | 'always';
  kernel_image_id: string | null;
  rootfs_image_id: string | null;
  initrd_image_id: string | null;
  disk_size_mib: number | null;
  boot_args: string | null;
  networks: Array<{ network_id: string }>;
  guest_config: StoredSpec['guest_config'];
}

export function toSnapshot(r: SnapshotRow): Snapshot {
  return {
    id: r.id,
    name: r.name,
    description: r.description,
    vm_id: r.vm_id,
    vm_name: r.vm_name,
    host_id: r.host_id,
    snapshot_type: r.snapshot_type,
    parent_id: r.parent_id,
    status: r.status,
    vmm: r.vmm,
    vcpu: r.vcpu,
    mem_mib: Number(r.mem_mib),
    size_bytes: r.size_bytes === null ? null : Number(r.size_bytes),
    sizes: r.sizes === null ? null : JSON.parse(r.sizes),
    guest_agent: r.guest_agent === 1,
    error: r.error,
    created_by: r.created_by,
    created_at: r.created_at,
    updated_at: r.updated_at,
  };
}

/** Publishes `snapshot.updated` for each of `ids` still there (after a change made elsewhere). */
export async function publishSnapshots(db: Kysely<Database>, bus: EventBus, ids: string[]): Promise<void> {
  if (!ids.length) return;
  const rows = await db.selectFrom('snapshots').selectAll().where('id', 'in', ids).execute();
  for (const r of rows)
    await bus.publish({
      type: 'snapshot.updated',
      resourceType: 'snapshot',
      resourceId: r.id,
      data: toSnapshot(r),
    });
}

export interface SnapshotListFilter {
  limit: number;
  cursor?: string;
  vm_id?: string;
  name?: string;
  host_id?: string;
  status?: SnapshotStatus;
}

interface DriverReport {
  kind: string;
  available: boolean;
  features?: string[];
}

export class Snapshots {
  /** Snapshots this process is asking an agent for. */
  private readonly jobs = new Set<string>();

  constructor(
    private readonly store: Datastore,
    private readonly bus: EventBus,
    private readonly ops: Operations,
    private readonly agents: AgentClient,
    private readonly vms: Vms,
    private readonly log: { warn: (o: object, m: string) => void },
  ) {}

  async list(f: SnapshotListFilter): Promise<{ items: Snapshot[]; next: string | null }> {
    let q = this.store.db.selectFrom('snapshots').selectAll();
    if (f.vm_id) q = q.where('vm_id', '=', f.vm_id);
    if (f.name) q = q.where('name', '=', f.name);
    if (f.host_id) q = q.where('host_id', '=', f.host_id);
    if (f.status) q = q.where('status', '=', f.status);
    const page = await paginate(q, 'created_at', f);
    return { items: page.items.map(toSnapshot), next: page.next };
  }

  async findRow(id: string): Promise<SnapshotRow | undefined> {
    return this.store.db.selectFrom('snapshots').selectAll().where('id', '=', id).executeTakeFirst();
  }

  async getRow(id: string): Promise<SnapshotRow> {
    const row = await this.findRow(id);
    if (!row) throw new NqvmError('SNAPSHOT_NOT_FOUND', { id });
    return row;
  }

  async get(id: string): Promise<Snapshot> {
    return toSnapshot(await this.getRow(id));
  }

  /**
   * Records a snapshot of a running or paused VM as `creating` and asks its host for it in the
   * background; the operation follows that work. Refusals record nothing.
   */
  async create(
    vmId: string,
    input: SnapshotCreate,
    actor: string | null,
  ): Promise<{ snapshot: Snapshot; operation: Operation }> {
    const vm = await this.vms.getRow(vmId);
    if (vm.state !== 'running' && vm.state !== 'paused')
      throw new NqvmError(
        'VM_INVALID_STATE',
        `a snapshot is taken of a running or paused VM (it is ${vm.state})`,
        { state: vm.state },
      );
    const host = vm.host_id ? await this.hostRow(vm.host_id) : undefined;
    if (!host)
      throw new NqvmError('VM_INVALID_STATE', 'the VM has no host to take the snapshot', {
        state: vm.state,
      });
    const volumes = await this.store.db
      .selectFrom('volumes')
      .select('id')
      .where('vm_id', '=', vm.id)
      .execute();
    if (volumes.length)
      throw new NqvmError(
        'SNAPSHOT_UNSUPPORTED',
        'the VM has volumes attached: volumes are not captured; detach them first',
        { volume_ids: volumes.map((v) => v.id) },
      );
    const vmm = (vm.vmm as SnapshotSpec['vmm'] | null) ?? onlyVmmOf(host);
    if (input.snapshot_type === 'Diff') checkDiffSupported(vmm, host);
    const busy = await this.store.db
      .selectFrom('snapshots')
      .select('name')
      .where('vm_id', '=', vm.id)
      .where('status', '=', 'creating')
      .executeTakeFirst();
    if (busy)
      throw new NqvmError(
        'VM_INVALID_STATE',
        `snapshot ${busy.name} of this VM is being taken; wait for it to finish`,
        { state: vm.state },
      );
    const at = nowIso();
    const row: SnapshotRow = {
      id: randomUUID(),
      name: input.name,
      description: input.description ?? null,
      vm_id: vm.id,
      vm_name: vm.name,
      host_id: host.id,
      snapshot_type: input.snapshot_type,
      parent_id: null,
      status: 'creating',
      vmm: vmm ?? 'qemu',
      vcpu: vm.vcpu,
      mem_mib: Number(vm.mem_mib),
      size_bytes: null,
      sizes: null,
      guest_agent: 0,
      error: null,
      files: '{}',
      spec: JSON.stringify(await this.specOf(vm, vmm ?? 'qemu')),
      created_by: actor,
      claimed_until: isoAfter(CLAIM_MS),
      created_at: at,
      updated_at: at,
    };
    try {
      await this.store.db.insertInto('snapshots').values(row).execute();
    } catch (err) {
      if (isUniqueViolation(err))
        throw new NqvmError('NAME_TAKEN', `VM ${vm.name} has a snapshot named "${input.name}"`, {
          field: 'name',
          vm_id: vm.id,
        });
      throw err;
    }
    const snapshot = toSnapshot(row);
    await this.publish('snapshot.created', snapshot);
    const operation = await this.ops.create({
      kind: 'snapshot.create',
      target: { type: 'snapshot', id: row.id },
      createdBy: actor,
      params: { vm_id: vm.id, snapshot_type: input.snapshot_type },
      message: `waiting for host ${host.name}`,
    });
    void this.take(row);
    return { snapshot, operation };
  }

  /**
   * Deletes a snapshot nothing depends on: marked `deleting`, then its host removes the files.
   * An unreachable host leaves it `deleting` for the sweep; the host refusing (a VM maps its
   * memory) puts it back and answers that refusal.
   */
  async delete(id: string): Promise<void> {
    const row = await this.getRow(id);
    if (row.status === 'creating')
      throw new NqvmError(
        'SNAPSHOT_NOT_READY',
        `snapshot ${row.name} is being taken; delete it once it is ready or failed`,
        { status: row.status },
      );
    await this.checkUnused(row);
    // Claimed as it is marked, so the sweep leaves it to this request.
    const marked = await this.store.db
      .updateTable('snapshots')
      .set({ status: 'deleting', claimed_until: isoAfter(CLAIM_MS), updated_at: nowIso() })
      .where('id', '=', id)
      .where('status', '=', row.status)
      .where((eb) => eb.or([eb('claimed_until', 'is', null), eb('claimed_until', '<', nowIso())]))
      .executeTakeFirst();
    if (Number(marked.numUpdatedRows) === 0)
      throw new NqvmError('CONFLICT', `snapshot ${row.name} changed or is being deleted meanwhile; retry`, {
        id,
      });
    if (row.status !== 'deleting') await this.publishUpdated(id);
    await this.removeFromHost({ ...row, status: 'deleting' });
  }

  /**
   * Returns a VM to a snapshot of its own: a new generation whose command makes the host stop
   * the VMM (if any) and restore from the files.
   */
  async restore(
    vmId: string,
    snapshotId: string,
    actor: string | null,
  ): Promise<{ vm: Vm; operation: Operation }> {
    const vm = await this.vms.getRow(vmId);
    const snap = await this.getRow(snapshotId);
    if (snap.vm_id !== vm.id)
      throw new NqvmError(
        'SNAPSHOT_MISMATCH',
        `snapshot ${snap.name} was taken of VM ${snap.vm_name}${snap.vm_id ? '' : ' (since deleted)'}, not of this VM; ` +
          `instantiate it instead (POST /api/v1/snapshots/${snap.id}/instantiate)`,
        { snapshot_id: snap.id, vm_id: snap.vm_id },
      );
    requireReady(snap);
    if (snap.host_id !== vm.host_id) {
      const where = async (hostId: string | null) =>
        hostId ? `host ${(await this.hostRow(hostId))?.name ?? hostId}` : 'no host';
      throw new NqvmError(
        'CONFLICT',
        `snapshot ${snap.name} is kept on ${await where(snap.host_id)} and the VM is on ${await where(vm.host_id)}; ` +
          'a VM restores only on the host that keeps the snapshot',
        { snapshot_host_id: snap.host_id, vm_host_id: vm.host_id },
      );
    }
    if (vm.vcpu !== snap.vcpu || Number(vm.mem_mib) !== Number(snap.mem_mib))
      throw new NqvmError(
        'CONFLICT',
        `the VM has ${vm.vcpu} vCPU and ${vm.mem_mib} MiB, the snapshot ${snap.vcpu} vCPU and ${snap.mem_mib} MiB; ` +
          'resize the VM back (while stopped) first',
        {
          vcpu: vm.vcpu,
          mem_mib: Number(vm.mem_mib),
          snapshot_vcpu: snap.vcpu,
          snapshot_mem_mib: Number(snap.mem_mib),
        },
      );
    const volumes = await this.store.db
      .selectFrom('volumes')
      .select('id')
      .where('vm_id', '=', vm.id)
      .execute();
    if (volumes.length)
      throw new NqvmError(
        'SNAPSHOT_UNSUPPORTED',
        'the VM has volumes attached, which the snapshot does not hold; detach them first',
        { volume_ids: volumes.map((v) => v.id) },
      );
    return this.vms.act(vmId, 'restore', actor, { restore_snapshot_id: snap.id });
  }

  /**
   * A new VM from the snapshot, made as POST /api/v1/vms makes one (new id, MACs and addresses
   * on the same networks), placed on the host that keeps the files, booting from them.
   */
  async instantiate(
    id: string,
    input: SnapshotInstantiate,
    actor: string | null,
  ): Promise<SnapshotInstantiateResponse> {
    const snap = await this.getRow(id);
    requireReady(snap);
    const host = snap.host_id ? await this.hostRow(snap.host_id) : undefined;
    if (!host)
      throw new NqvmError('CONFLICT', `the host that kept snapshot ${snap.name}'s files is gone`, {
        snapshot_id: snap.id,
      });
    const spec = JSON.parse(snap.spec) as SnapshotSpec;
    for (const n of spec.networks) {
      const found = await this.store.db
        .selectFrom('networks')
        .select('id')
        .where('id', '=', n.network_id)
        .executeTakeFirst();
      if (!found)
        throw new NqvmError(
          'CONFLICT',
          `network ${n.network_id} of the snapshot's VM no longer exists; a clone needs the same networks`,
          { network_id: n.network_id },
        );
    }
    const gc = spec.guest_config;
    const create: VmCreate = {
      name: input.name,
      vcpu: snap.vcpu,
      mem_mib: Number(snap.mem_mib),
      kernel_image_id: spec.kernel_image_id ?? undefined,
      rootfs_image_id: spec.rootfs_image_id ?? undefined,
      initrd_image_id: spec.initrd_image_id ?? undefined,
      disk_size_mib: spec.disk_size_mib ?? undefined,
      boot_args: spec.boot_args ?? undefined,
      vmm: snap.vmm,
      networks: spec.networks.map((n) => ({ network_id: n.network_id })),
      volumes: [],
      guest_config: {
        mode: gc.mode,
        username: gc.username ?? undefined,
        ssh_authorized_keys: gc.ssh_authorized_keys,
        // Its own identity: the clone's name, not the source's host name (the agent sets it).
        user_data: gc.user_data ?? undefined,
      },
      restart_policy: 'never',
      labels: input.labels,
      start: true,
    };
    const out = await this.vms.create(create, actor, {
      passwordHash: gc.password_hash,
      clone: { snapshotId: snap.id },
    });
    const warnings = [
      `clones of one snapshot share the guest's entropy pool, random generator state and identity ` +
        '(machine-id, SSH host keys): reseed the generator and regenerate them in each clone',
    ];
    if (snap.guest_agent === 0)
      warnings.push(
        "the guest ran no nqvm guest agent: the clone's NICs keep the snapshot's MAC and address in its memory " +
          'and are blocked by the anti-spoofing rules until the guest reconfigures them (e.g. after a reboot)',
      );
    return {
      ...out,
      placement: {
        host_id: host.id,
        reason: `the snapshot's files are on host ${host.name}: the VM runs there`,
      },
      warnings,
    };
  }

  /**
   * Finishes deletes an unreachable host held back, and asks agents again for snapshots that no
   * live manager is asking for (one that stopped mid-way). Run by the manager's loop.
   */
  async sweep(): Promise<void> {
    const now = nowIso();
    const unclaimed = await this.store.db
      .selectFrom('snapshots')
      .selectAll()
      .where('status', 'in', ['creating', 'deleting'])
      .where((eb) => eb.or([eb('claimed_until', 'is', null), eb('claimed_until', '<', now)]))
      .orderBy('created_at')
      .execute();
    for (const row of unclaimed) {
      if (this.jobs.has(row.id) || !(await this.claim(row))) continue;
      if (row.status === 'creating') {
        void this.take(row);
        continue;
      }
      try {
        await this.removeFromHost(row);
      } catch (err) {
        this.log.warn({ err, snapshotId: row.id }, 'snapshot delete on its host failed');
      }
    }
  }

  /** Takes over the work on a snapshot whose claim has expired; false when another manager did. */
  private async claim(row: SnapshotRow): Promise<boolean> {
    const claimed = await this.store.db
      .updateTable('snapshots')
      .set({ claimed_until: isoAfter(CLAIM_MS) })
      .where('id', '=', row.id)
      .where('status', '=', row.status)
      .where('claimed_until', row.claimed_until === null ? 'is' : '=', row.claimed_until)
      .executeTakeFirst();
    return Number(claimed.numUpdatedRows) === 1;
  }

  /** Asks the snapshot's host for the files and records the outcome; holds the claim meanwhile. */
  private async take(row: SnapshotRow): Promise<void> {
    if (this.jobs.has(row.id)) return;
    this.jobs.add(row.id);
    const renew = setInterval(() => {
      this.store.db
        .updateTable('snapshots')
        .set({ claimed_until: isoAfter(CLAIM_MS) })
        .where('id', '=', row.id)
        .where('status', '=', 'creating')
        .execute()
        .catch((err) => this.log.warn({ err, snapshotId: row.id }, 'could not renew the snapshot claim'));
    }, CLAIM_RENEW_MS);
    renew.unref();
    try {
      await this.takeOnHost(row);
    } catch (err) {
      this.log.warn({ err, snapshotId: row.id }, 'snapshot job failed; the sweep retries it');
    } finally {
      clearInterval(renew);
      this.jobs.delete(row.id);
    }
  }

  private async takeOnHost(row: SnapshotRow): Promise<void> {
    const host = row.host_id ? await this.hostRow(row.host_id) : undefined;
    if (!host) return this.finishFailed(row.id, 'the host that was to keep the snapshot is gone');
    const spec = JSON.parse(row.spec) as SnapshotSpec;
    await this.progress(row.id, 20, `pausing the VM and writing its memory and disk on host ${host.name}`);
    let taken: AgentSnapshot;
    try {
      taken = await this.agents.putSnapshot(
        host.address,
        spec.source_vm_id,
        row.id,
        { type: row.snapshot_type },
        TAKE_TIMEOUT_MS,
      );
    } catch (err) {
      return this.finishFailed(row.id, (err as Error).message);
    }
    if (taken.status === 'failed')
      return this.finishFailed(row.id, taken.error ?? `host ${host.name} could not take the snapshot`);
    const done = await this.store.db
      .updateTable('snapshots')
      .set({
        status: 'ready',
        parent_id: taken.parent_id,
        vmm: taken.vmm,
        vcpu: taken.vcpu,
        mem_mib: taken.mem_mib,
        size_bytes: taken.size_bytes,
        sizes: JSON.stringify(taken.sizes),
        guest_agent: taken.guest_agent ? 1 : 0,
        // The host's word on what it froze, also for clones made from the spec.
        spec: JSON.stringify({ ...spec, vmm: taken.vmm, vcpu: taken.vcpu, mem_mib: taken.mem_mib }),
        error: null,
        claimed_until: null,
        updated_at: nowIso(),
      })
      .where('id', '=', row.id)
      .where('status', '=', 'creating')
      .executeTakeFirst();
    if (Number(done.numUpdatedRows) === 0) return;
    await this.publishUpdated(row.id);
    const mib = Math.ceil(taken.size_bytes / 1_048_576);
    for (const op of await this.createOps(row.id))
      await this.ops.succeed(op.id, `snapshot ready: ${mib} MiB on host ${host.name}`);
  }

  private async finishFailed(id: string, message: string): Promise<void> {
    const done = await this.store.db
      .updateTable('snapshots')
      .set({ status: 'failed', error: message.slice(0, 2000), claimed_until: null, updated_at: nowIso() })
      .where('id', '=', id)
      .where('status', '=', 'creating')
      .executeTakeFirst();
    if (Number(done.numUpdatedRows) === 0) return;
    await this.publishUpdated(id);
    for (const op of await this.createOps(id)) await this.ops.fail(op.id, 'SNAPSHOT_FAILED', message);
  }

  private async progress(id: string, percent: number, message: string): Promise<void> {
    for (const op of await this.createOps(id))
      if (op.progress_message !== message)
        await this.ops.update(op.id, { status: 'running', percent, message });
  }

  private async createOps(id: string) {
    return (await this.ops.active(id)).filter((o) => o.kind === 'snapshot.create');
  }

  /**
   * 409 SNAPSHOT_IN_USE while a live Diff builds on the snapshot, a VM is booting from it, or a
   * clone of it has not run yet (its first boot restores it).
   */
  private async checkUnused(row: SnapshotRow): Promise<void> {
    const child = await this.store.db
      .selectFrom('snapshots')
      .select(['id', 'name'])
      .where('parent_id', '=', row.id)
      .where('status', '!=', 'failed')
      .executeTakeFirst();
    if (child)
      throw new NqvmError(
        'SNAPSHOT_IN_USE',
        `snapshot ${child.name} (a Diff) builds on snapshot ${row.name}; delete it first`,
        { snapshot_id: child.id },
      );
    const booting = await this.store.db
      .selectFrom('operations')
      .select(['id', 'kind', 'target_id'])
      .where('status', 'in', ['queued', 'running'])
      // Whatever its kind (a restore, an instantiate, a clone's start): it boots from the files.
      .where('params', 'like', `%"restore_snapshot_id":"${row.id}"%`)
      .executeTakeFirst();
    if (booting)
      throw new NqvmError(
        'SNAPSHOT_IN_USE',
        `VM ${booting.target_id} is booting from snapshot ${row.name} (operation ${booting.id}); wait for it`,
        { operation_id: booting.id, vm_id: booting.target_id },
      );
    const clone = await this.store.db
      .selectFrom('vms')
      .select(['id', 'name'])
      .where('boot_snapshot_id', '=', row.id)
      .executeTakeFirst();
    if (clone)
      throw new NqvmError(
        'SNAPSHOT_IN_USE',
        `VM ${clone.name} is a clone of snapshot ${row.name} that has not run yet: its first boot restores it; start or delete that VM first`,
        { vm_id: clone.id },
      );
  }

  /**
   * Has the host remove a `deleting` snapshot the caller has claimed, then drops the row.
   * Without a host (it was removed) the row goes at once; a host that is not ready or does not
   * answer is left to the sweep (the claim released); a host that refuses puts the snapshot
   * back and throws its refusal.
   */
  private async removeFromHost(row: SnapshotRow): Promise<void> {
    const host = row.host_id ? await this.hostRow(row.host_id) : undefined;
    if (host) {
      const release = (set: { status?: 'ready' | 'failed'; updated_at?: string } = {}) =>
        this.store.db
          .updateTable('snapshots')
          .set({ ...set, claimed_until: null })
          .where('id', '=', row.id)
          .where('status', '=', 'deleting')
          .executeTakeFirst();
      if (host.status !== 'ready') {
        await release();
        return;
      }
      try {
        await this.agents.deleteSnapshot(host.address, row.id);
      } catch (err) {
        // The host refused (a VM or a Diff still needs the files) or could not be asked: only the latter is retried.
        if (!(err instanceof NqvmError) || err.code === 'HOST_UNAVAILABLE') {
          this.log.warn({ err, snapshotId: row.id }, 'snapshot delete on its host failed; will retry');
          await release();
          return;
        }
        const back = await release({ status: row.error === null ? 'ready' : 'failed', updated_at: nowIso() });
        if (Number(back.numUpdatedRows) === 1) await this.publishUpdated(row.id);
        throw err;
      }
    }
    const last = await this.findRow(row.id);
    const gone = await this.store.db
      .deleteFrom('snapshots')
      .where('id', '=', row.id)
      .where('status', '=', 'deleting')
      .executeTakeFirst();
    if (last && Number(gone.numDeletedRows) === 1) await this.publish('snapshot.deleted', toSnapshot(last));
  }

  /** The clone's shape, taken from the VM now: images resolved to those it runs with. */
  private async specOf(vm: VmRow, vmm: SnapshotSpec['vmm']): Promise<SnapshotSpec> {
    const spec = JSON.parse(vm.spec) as StoredSpec;
    const [kernel, initrd, rootfs] = await Promise.all([
      resolveImage(this.store, 'kernel', spec.kernel_image_id, { optional: true }),
      resolveInitrd(this.store, spec),
      resolveImage(this.store, 'rootfs', spec.rootfs_image_id, { optional: true }),
    ]);
    const nics = await this.store.db
      .selectFrom('vm_nics')
      .select('network_id')
      .where('vm_id', '=', vm.id)
      .orderBy('nic_index')
      .execute();
    return {
      source_vm_id: vm.id,
      name: vm.name,
      vcpu: vm.vcpu,
      mem_mib: Number(vm.mem_mib),
      vmm,
      restart_policy: vm.restart_policy as SnapshotSpec['restart_policy'],
      kernel_image_id: kernel?.id ?? null,
      rootfs_image_id: rootfs?.id ?? null,
      initrd_image_id: initrd?.id ?? null,
      disk_size_mib: spec.disk_size_mib,
      boot_args: spec.boot_args,
      networks: nics.map((n) => ({ network_id: n.network_id })),
      guest_config: { ...spec.guest_config },
    };
  }

  private async hostRow(id: string): Promise<HostRow | undefined> {
    return this.store.db.selectFrom('hosts').selectAll().where('id', '=', id).executeTakeFirst();
  }

  private async publishUpdated(id: string): Promise<void> {
    const row = await this.findRow(id);
    if (row) await this.publish('snapshot.updated', toSnapshot(row));
  }

  private async publish(type: string, s: Snapshot): Promise<Snapshot> {
    await this.bus.publish({ type, resourceType: 'snapshot', resourceId: s.id, data: s });
    return s;
  }
}

function requireReady(snap: SnapshotRow): void {
  if (snap.status !== 'ready')
    throw new NqvmError('SNAPSHOT_NOT_READY', `snapshot ${snap.name} is ${snap.status}, not ready`, {
      status: snap.status,
    });
}

/** The VMM a host runs a VM with when the VM has not reported one: its only available driver. */
function onlyVmmOf(host: HostRow): SnapshotSpec['vmm'] | null {
  const drivers = ((JSON.parse(host.capacity).drivers ?? []) as DriverReport[]).filter((d) => d.available);
  const kind = drivers.length === 1 ? drivers[0]!.kind : null;
  return kind === 'firecracker' || kind === 'qemu' ? kind : null;
}

/** Diff snapshots need Firecracker with dirty-page tracking on the VM's host. */
function checkDiffSupported(vmm: SnapshotSpec['vmm'] | null, host: HostRow): void {
  if (vmm !== 'firecracker')
    throw new NqvmError(
      'SNAPSHOT_TYPE_UNSUPPORTED',
      `Diff snapshots need the firecracker VMM; this VM runs on ${vmm ?? 'an unknown VMM'}: take a Full one`,
      { snapshot_type: 'Diff', vmm },
    );
  const drivers = (JSON.parse(host.capacity).drivers ?? []) as DriverReport[];
  const fc = drivers.find((d) => d.kind === 'firecracker');
  if (!fc?.features?.includes('diff-snapshot'))
    throw new NqvmError(
      'SNAPSHOT_TYPE_UNSUPPORTED',
      `host ${host.name}'s firecracker does not offer diff snapshots: take a Full one`,
      { snapshot_type: 'Diff', host_id: host.id },
    );
}
