/**
 * The VM resource: desired state recorded in the datastore, transitions checked against the
 * state machine, long work handed to operations. Execution (placement, agent commands) is the
 * reconciler's; this module only records intent.
 */
import { randomUUID } from 'node:crypto';
import {
  type AgentContainerSpec,
  NqvmError,
  type Operation,
  type Vm,
  type VmCreate,
  type VmPatch,
  type VmState,
} from '@nqvm/api';
import { nowIso } from '../clock';
import { type Datastore, isUniqueViolation } from '../db/datastore';
import { paginate } from '../db/pagination';
import type { VmRow } from '../db/schema';
import type { EventBus } from '../events/bus';
import { createNics, isAddressClash, nicsOfVms, type VmNic } from '../networks/vm-nics';
import type { Operations } from '../operations/operations';
import type { Scheduler } from '../scheduler/scheduler';
import { publishSnapshots } from '../snapshots/snapshots';
import {
  checkAttachable,
  claimVolumes,
  publishVolumes,
  releaseVolumes,
  type VmVolume,
  volumesOfVms,
} from '../volumes/vm-volumes';
import { admitDisk, vmDiskMib } from './disk-admission';
import { hashGuestPassword } from './guest-secrets';
import { canTransition, LIVE_STATES, TRANSITIONS, type VmAction } from './state-machine';

/** What is kept in `vms.spec`: the create request minus secrets, plus derived values. */
export interface StoredSpec {
  kernel_image_id: string | null;
  rootfs_image_id: string | null;
  initrd_image_id: string | null;
  disk_size_mib: number | null;
  boot_args: string | null;
  /** As requested; the NICs made from it (addresses, MACs) are in `vm_nics`. */
  networks: Array<{ network_id: string; ip: string | null; mac: string | null }>;
  guest_config: {
    mode: 'auto' | 'cloud-init' | 'inject' | 'none';
    username: string | null;
    password_hash: string | null;
    ssh_authorized_keys: string[];
    hostname: string | null;
    user_data: string | null;
  };
  /** A clone's snapshot: the VM boots from it first, so it is placed on the snapshot's host. */
  source_snapshot_id?: string;
  /** A container's VM: what its init runs (the rootfs is the image, the initrd nqvm's container init). */
  container?: AgentContainerSpec;
}

export interface VmCreateOptions {
  /** A guest password already hashed (from a template or snapshot), used when the input carries no plaintext one. */
  passwordHash?: string | null;
  /** The VM is made from a snapshot; its first boot restores from it (operation `snapshot.instantiate`). */
  clone?: { snapshotId: string };
  /** The id to give the VM (a container's VM shares the container's); default: a new one. */
  id?: string;
  container?: AgentContainerSpec;
}

/** Told about a VM after each change (`vm.updated`) and once it is gone (`vm.deleted`); must not throw. */
export type VmHook = (vm: Vm) => Promise<void>;

export function toVm(r: VmRow, volumes: VmVolume[], nics: VmNic[]): Vm {
  const spec = JSON.parse(r.spec) as StoredSpec;
  return {
    id: r.id,
    name: r.name,
    state: r.state as VmState,
    desired_state: r.desired_state as Vm['desired_state'],
    host_id: r.host_id,
    vcpu: r.vcpu,
    mem_mib: Number(r.mem_mib),
    kernel_image_id: spec.kernel_image_id,
    rootfs_image_id: spec.rootfs_image_id,
    initrd_image_id: spec.initrd_image_id,
    disk_size_mib: spec.disk_size_mib,
    boot_args: spec.boot_args,
    vmm: (r.vmm as Vm['vmm']) ?? null,
    networks: nics,
    volumes,
    guest_config: {
      mode: spec.guest_config.mode,
      username: spec.guest_config.username,
      has_password: spec.guest_config.password_hash !== null,
      ssh_authorized_keys: spec.guest_config.ssh_authorized_keys,
      hostname: spec.guest_config.hostname,
      has_user_data: spec.guest_config.user_data !== null,
    },
    restart_policy: r.restart_policy as Vm['restart_policy'],
    labels: JSON.parse(r.labels),
    generation: r.generation,
    last_error: r.last_error,
    // Only a running VM's guest is up; a stale time from before a stop is not shown.
    guest_ready_at: r.state === 'running' ? (r.guest_ready_at ?? null) : null,
    guest_ready_signal: r.state === 'running' ? (r.guest_ready_signal ?? null) : null,
    created_at: r.created_at,
    updated_at: r.updated_at,
  };
}

export interface VmListFilter {
  limit: number;
  cursor?: string;
  state?: VmState;
  host_id?: string;
  name?: string;
  label?: string;
}

export class Vms {
  private readonly changeHooks: VmHook[] = [];
  private readonly removeHooks: VmHook[] = [];

  constructor(
    private readonly store: Datastore,
    private readonly bus: EventBus,
    private readonly ops: Operations,
    /** Admits a create only when some host could take it (or none takes VMs yet: it waits). */
    private readonly scheduler: Scheduler,
  ) {
    const revertToStopped = async (op: { target_id: string }) => {
      const row = await this.findRow(op.target_id);
      if (!row) return;
      await this.write(row.id, {
        state: 'stopped',
        desired_state: 'stopped',
        generation: row.generation + 1,
      });
    };
    ops.onCancel('vm.create', revertToStopped);
    ops.onCancel('vm.start', revertToStopped);
    ops.onCancel('snapshot.instantiate', revertToStopped);
  }

  /** Registers a hook run after every `vm.updated` (a container follows its VM this way). */
  onChange(hook: VmHook): void {
    this.changeHooks.push(hook);
  }

  /** Registers a hook run after a VM row is removed for good. */
  onRemove(hook: VmHook): void {
    this.removeHooks.push(hook);
  }

  async list(f: VmListFilter): Promise<{ items: Vm[]; next: string | null }> {
    let q = this.store.db.selectFrom('vms').selectAll('vms');
    if (f.state) q = q.where('vms.state', '=', f.state);
    if (f.host_id) q = q.where('vms.host_id', '=', f.host_id);
    if (f.name) q = q.where('vms.name', '>=', f.name).where('vms.name', '<', `${f.name}\uffff`);
    if (f.label) {
      const eq = f.label.indexOf('=');
      const key = f.label.slice(0, eq);
      const value = f.label.slice(eq + 1);
      q = q.where((eb) =>
        eb.exists(
          eb
            .selectFrom('vm_labels')
            .select('vm_labels.vm_id')
            .whereRef('vm_labels.vm_id', '=', 'vms.id')
            .where('vm_labels.key', '=', key)
            .where('vm_labels.value', '=', value),
        ),
      );
    }
    const page = await paginate(q, 'created_at', f);
    const ids = page.items.map((r) => r.id);
    const volumes = await volumesOfVms(this.store.db, ids);
    const nics = await nicsOfVms(this.store.db, ids);
    return { items: page.items.map((r) => toVm(r, volumes.get(r.id)!, nics.get(r.id)!)), next: page.next };
  }

  async findRow(id: string): Promise<VmRow | undefined> {
    return this.store.db.selectFrom('vms').selectAll().where('id', '=', id).executeTakeFirst();
  }

  async getRow(id: string): Promise<VmRow> {
    const row = await this.findRow(id);
    if (!row) throw new NqvmError('VM_NOT_FOUND', { id });
    return row;
  }

  async get(id: string): Promise<Vm> {
    const row = await this.getRow(id);
    const volumes = (await volumesOfVms(this.store.db, [id])).get(id)!;
    return toVm(row, volumes, (await nicsOfVms(this.store.db, [id])).get(id)!);
  }

  async create(
    input: VmCreate,
    actor: string | null,
    opts: VmCreateOptions = {},
  ): Promise<{ vm: Vm; operation: Operation }> {
    const clone = opts.clone ?? null;
    await this.checkImages(input);
    const diskMib = await vmDiskMib(this.store, input);
    // A VM defined without starting takes no disk yet: its start is placed like any other.
    if (input.start) await admitDisk(this.store, input, diskMib);
    const volumeIds = input.volumes.map((v) => v.volume_id);
    await this.checkVolumes(volumeIds);
    const networks = input.networks ?? (await this.defaultNetworks());
    const at = nowIso();
    const id = opts.id ?? randomUUID();
    // A container's VM is named like it: a VM may not take the name of another container.
    const container = await this.store.db
      .selectFrom('containers')
      .select('id')
      .where('name', '=', input.name)
      .where('id', '!=', id)
      .executeTakeFirst();
    if (container)
      throw new NqvmError('NAME_TAKEN', `a container named "${input.name}" exists`, { field: 'name' });
    const gc = input.guest_config;
    const spec: StoredSpec = {
      kernel_image_id: input.kernel_image_id ?? null,
      rootfs_image_id: input.rootfs_image_id ?? null,
      initrd_image_id: input.initrd_image_id ?? null,
      disk_size_mib: input.disk_size_mib ?? null,
      boot_args: input.boot_args ?? null,
      networks: networks.map((n) => ({ network_id: n.network_id, ip: n.ip ?? null, mac: null })),
      guest_config: {
        mode: gc?.mode ?? 'auto',
        username: gc?.username ?? null,
        password_hash:
          gc?.password !== undefined ? hashGuestPassword(gc.password) : (opts.passwordHash ?? null),
        ssh_authorized_keys: gc?.ssh_authorized_keys ?? [],
        hostname: gc?.hostname ?? null,
        user_data: gc?.user_data ?? null,
      },
      ...(clone ? { source_snapshot_id: clone.snapshotId } : {}),
      ...(opts.container ? { container: opts.container } : {}),
    };
    const row: VmRow = {
      id,
      name: input.name,
      state: input.start ? 'creating' : 'stopped',
      desired_state: input.start && !clone ? 'running' : 'stopped',
      host_id: null,
      generation: 1,
      vcpu: input.vcpu,
      mem_mib: input.mem_mib,
      disk_mib: diskMib,
      vmm: input.vmm ?? null,
      spec: JSON.stringify(spec),
      labels: JSON.stringify(input.labels),
      restart_policy: input.restart_policy,
      last_error: null,
      created_by: actor,
      created_at: at,
      updated_at: at,
      observed_generation: 0,
      commanded_at: null,
      pid: null,
      guest_ready_at: null,
      guest_ready_signal: null,
      boot_snapshot_id: clone?.snapshotId ?? null,
    };
    try {
      await this.store.db.transaction().execute(async (trx) => {
        await trx.insertInto('vms').values(row).execute();
        const labels = Object.entries(input.labels).map(([key, value]) => ({ vm_id: id, key, value }));
        if (labels.length) await trx.insertInto('vm_labels').values(labels).execute();
        await claimVolumes(trx, row, volumeIds);
        await createNics(trx, id, networks);
        // With its volumes and NICs in place: the scheduler sees the VM as it will place it.
        if (input.start) await this.scheduler.admit(trx, id);
      });
    } catch (err) {
      if (isUniqueViolation(err) && isAddressClash(err))
        throw new NqvmError('ADDRESS_IN_USE', 'another VM took the address meanwhile; retry', {
          field: 'networks',
        });
      if (isUniqueViolation(err))
        throw new NqvmError('NAME_TAKEN', `a VM named "${input.name}" exists`, { field: 'name' });
      throw err;
    }
    const open = () =>
      this.ops.create({
        kind: clone ? 'snapshot.instantiate' : input.start ? 'vm.create' : 'vm.define',
        target: { type: 'vm', id },
        createdBy: actor,
        params: clone ? { generation: 1, restore_snapshot_id: clone.snapshotId } : { generation: 1 },
        message: clone ? "waiting for the snapshot's host" : input.start ? 'waiting for a host' : 'defined',
      });
    // A clone's first command carries its restore, read from this operation: the clone was
    // inserted not wanting to run (the reconciler leaves it alone) until the operation exists.
    const cloneOp = clone ? await open() : null;
    if (clone)
      await this.store.db.updateTable('vms').set({ desired_state: 'running' }).where('id', '=', id).execute();
    const vm = await this.get(id);
    await this.bus.publish({ type: 'vm.created', resourceType: 'vm', resourceId: id, data: vm });
    await publishVolumes(this.store.db, this.bus, volumeIds);
    const operation = cloneOp ?? (await open());
    if (!input.start)
      return { vm, operation: (await this.ops.succeed(operation.id, 'defined, not started')) ?? operation };
    return { vm, operation };
  }

  async patch(id: string, p: VmPatch): Promise<Vm> {
    const row = await this.getRow(id);
    const resizing = p.vcpu !== undefined || p.mem_mib !== undefined;
    if (resizing && row.boot_snapshot_id)
      throw new NqvmError(
        'VM_INVALID_STATE',
        `the VM is a clone that has not run yet: its first boot restores its snapshot's ${row.vcpu} vCPU and ${row.mem_mib} MiB; resize it once it has run`,
        { state: row.state, snapshot_id: row.boot_snapshot_id },
      );
    if (resizing && row.state !== 'stopped') {
      throw new NqvmError(
        'VM_INVALID_STATE',
        `vCPU and memory change only while the VM is stopped (it is ${row.state})`,
        {
          state: row.state,
        },
      );
    }
    try {
      await this.store.db.transaction().execute(async (trx) => {
        // A stopped VM keeps its place on its host: its reservation follows the new size.
        if (resizing)
          await this.scheduler.resize(trx, row, {
            vcpu: p.vcpu ?? row.vcpu,
            memMib: p.mem_mib ?? Number(row.mem_mib),
          });
        await trx
          .updateTable('vms')
          .set({
            ...(p.name !== undefined ? { name: p.name } : {}),
            ...(p.labels !== undefined ? { labels: JSON.stringify(p.labels) } : {}),
            ...(p.restart_policy !== undefined ? { restart_policy: p.restart_policy } : {}),
            ...(p.vcpu !== undefined ? { vcpu: p.vcpu } : {}),
            ...(p.mem_mib !== undefined ? { mem_mib: p.mem_mib } : {}),
            ...(resizing ? { generation: row.generation + 1, commanded_at: null } : {}),
            updated_at: nowIso(),
          })
          .where('id', '=', id)
          .execute();
        if (p.labels !== undefined) {
          await trx.deleteFrom('vm_labels').where('vm_id', '=', id).execute();
          const labels = Object.entries(p.labels).map(([key, value]) => ({ vm_id: id, key, value }));
          if (labels.length) await trx.insertInto('vm_labels').values(labels).execute();
        }
      });
    } catch (err) {
      if (isUniqueViolation(err))
        throw new NqvmError('NAME_TAKEN', `a VM named "${p.name}" exists`, { field: 'name' });
      throw err;
    }
    return this.publishUpdated(id);
  }

  /** Records the intent of an action and opens its operation; 409 when the state forbids it. */
  async act(
    id: string,
    action: VmAction,
    actor: string | null,
    params: Record<string, unknown> = {},
  ): Promise<{ vm: Vm; operation: Operation }> {
    const row = await this.getRow(id);
    const state = row.state as VmState;
    if (!canTransition(action, state)) {
      throw new NqvmError('VM_INVALID_STATE', `cannot ${action} a VM that is ${state}`, {
        state,
        action,
        allowed_from: TRANSITIONS[action].from,
      });
    }
    // A clone that has not run yet boots only by restoring its snapshot: a start is that restore.
    const restore =
      action === 'start' && row.boot_snapshot_id
        ? { restore_snapshot_id: await this.bootSnapshot(row, row.boot_snapshot_id) }
        : {};
    const t = TRANSITIONS[action];
    // Without a host there is no process to act on: the change is complete at once.
    const immediate = row.host_id === null && (action === 'stop' || state === 'creating');
    const next: VmState = immediate && action === 'stop' ? 'stopped' : t.to;
    const generation = row.generation + 1;
    // Opened before its generation exists: the command for that generation is built from the
    // operation (reboot, stop options, restore), so none goes out without them.
    let operation = await this.ops.create({
      kind: `vm.${action}`,
      target: { type: 'vm', id },
      createdBy: actor,
      params: { ...params, ...restore, generation },
      message: immediate ? 'done' : 'waiting for the host',
    });
    const updated = await this.store.db
      .updateTable('vms')
      .set({
        state: next,
        desired_state: t.desired,
        generation,
        // A new generation goes out at once, not after the resend window of the previous one.
        commanded_at: null,
        last_error: null,
        updated_at: nowIso(),
      })
      .where('id', '=', id)
      .where('state', '=', state)
      .executeTakeFirst();
    if (Number(updated.numUpdatedRows) === 0) {
      await this.ops.update(operation.id, { status: 'cancelled', message: 'the VM changed state meanwhile' });
      throw new NqvmError('VM_INVALID_STATE', 'the VM changed state meanwhile; retry', { state });
    }
    await this.supersede(id, action, operation.id);
    const vm = await this.publishUpdated(id);
    if (immediate)
      operation =
        (await this.ops.succeed(operation.id, 'done: the VM was not placed on a host')) ?? operation;
    return { vm, operation };
  }

  /**
   * Deletes a VM; its volumes are detached, except those with delete_with_vm (all of them with
   * `deleteVolumes`), which are deleted once the VM is gone from its host.
   */
  async delete(
    id: string,
    force: boolean,
    actor: string | null,
    deleteVolumes = false,
  ): Promise<{ vm: Vm; operation: Operation }> {
    const row = await this.getRow(id);
    const state = row.state as VmState;
    if (state === 'deleting')
      throw new NqvmError('VM_INVALID_STATE', 'the VM is already being deleted', { state });
    if (LIVE_STATES.has(state) && !force) {
      throw new NqvmError(
        'VM_INVALID_STATE',
        `the VM is ${state}: stop it first or delete with ?force=true`,
        { state },
      );
    }
    await this.supersede(id, 'delete');
    if (deleteVolumes) {
      // Kept on the volumes, so the intent survives until the host has deleted the VM.
      const marked = await this.store.db
        .updateTable('volumes')
        .set({ delete_with_vm: 1, updated_at: nowIso() })
        .where('vm_id', '=', id)
        .where('delete_with_vm', '=', 0)
        .returning('id')
        .execute();
      const ids = marked.map((v) => v.id);
      await publishVolumes(this.store.db, this.bus, ids);
    }
    const vm = await this.get(id);
    let operation = await this.ops.create({
      kind: 'vm.delete',
      target: { type: 'vm', id },
      createdBy: actor,
      params: { force, delete_volumes: deleteVolumes },
    });
    if (row.host_id === null) {
      await this.remove(id);
      operation = (await this.ops.succeed(operation.id, 'deleted')) ?? operation;
      return { vm: { ...vm, state: 'deleting' }, operation };
    }
    await this.store.db
      .updateTable('vms')
      .set({ state: 'deleting', generation: row.generation + 1, commanded_at: null, updated_at: nowIso() })
      .where('id', '=', id)
      .execute();
    return { vm: await this.publishUpdated(id), operation };
  }

  /**
   * Removes the row for good (after the host has cleaned up, or when it never had one), and
   * frees its volumes: detached, or left `deleting` for the volume sweep.
   */
  async remove(id: string): Promise<void> {
    const row = await this.findRow(id);
    if (!row) return;
    const vm = await this.get(id);
    const { freed, snapshots } = await this.store.db.transaction().execute(async (trx) => {
      const ids = await releaseVolumes(trx, id);
      // Its snapshots stay usable: their spec holds what a clone needs.
      const kept = await trx
        .updateTable('snapshots')
        .set({ vm_id: null, updated_at: nowIso() })
        .where('vm_id', '=', id)
        .returning('id')
        .execute();
      await trx.deleteFrom('port_forwards').where('vm_id', '=', id).execute();
      await trx.deleteFrom('vm_nics').where('vm_id', '=', id).execute();
      await trx.deleteFrom('vms').where('id', '=', id).execute();
      return { freed: ids, snapshots: kept.map((s) => s.id) };
    });
    await this.bus.publish({ type: 'vm.deleted', resourceType: 'vm', resourceId: id, data: vm });
    await publishVolumes(this.store.db, this.bus, freed);
    await publishSnapshots(this.store.db, this.bus, snapshots);
    for (const hook of this.removeHooks) await hook(vm);
  }

  /** Writes reconciler or agent-reported fields and publishes the change. */
  async write(
    id: string,
    set: Partial<
      Pick<
        VmRow,
        | 'state'
        | 'desired_state'
        | 'host_id'
        | 'generation'
        | 'last_error'
        | 'guest_ready_at'
        | 'guest_ready_signal'
      >
    >,
  ): Promise<Vm> {
    return (await this.writeIf(id, null, set))!;
  }

  /**
   * As `write`, but only while the VM is still in the state and generation `expected` (what the
   * caller read): a report computed from an older row must not undo an action that came
   * meanwhile (a delete turned back into `running`). Answers null when the row had moved on.
   */
  async writeIf(
    id: string,
    expected: Pick<VmRow, 'state' | 'generation'> | null,
    set: Partial<
      Pick<
        VmRow,
        | 'state'
        | 'desired_state'
        | 'host_id'
        | 'generation'
        | 'last_error'
        | 'guest_ready_at'
        | 'guest_ready_signal'
      >
    >,
  ): Promise<Vm | null> {
    // A new generation goes out at once, not after the resend window of the previous command.
    const fresh = set.generation !== undefined ? { commanded_at: null } : {};
    // Running is what a clone's first restore ends in: its later boots are its own.
    const ran = set.state === 'running' ? { boot_snapshot_id: null } : {};
    let q = this.store.db
      .updateTable('vms')
      .set({ ...set, ...fresh, ...ran, updated_at: nowIso() })
      .where('id', '=', id);
    if (expected) q = q.where('state', '=', expected.state).where('generation', '=', expected.generation);
    const res = await q.executeTakeFirst();
    if (expected && Number(res.numUpdatedRows) === 0) return null;
    return this.publishUpdated(id);
  }

  async publishUpdated(id: string): Promise<Vm> {
    const vm = await this.get(id);
    await this.bus.publish({ type: 'vm.updated', resourceType: 'vm', resourceId: id, data: vm });
    for (const hook of this.changeHooks) await hook(vm);
    return vm;
  }

  /**
   * A new action replaces whatever the VM was still waiting for (except its own operation).
   * Operations on the container of the same id are the container's to settle.
   */
  private async supersede(id: string, by: string, own?: string): Promise<void> {
    for (const op of await this.ops.active(id)) {
      if (op.id === own || op.target_type !== 'vm') continue;
      await this.ops.update(op.id, { status: 'cancelled', message: `superseded by ${by}` });
    }
  }

  /** The snapshot a clone's first boot restores, as long as it can: ready, its host there. */
  private async bootSnapshot(vm: VmRow, snapshotId: string): Promise<string> {
    const snap = await this.store.db
      .selectFrom('snapshots')
      .select(['id', 'name', 'status', 'host_id'])
      .where('id', '=', snapshotId)
      .executeTakeFirst();
    const why = !snap
      ? `snapshot ${snapshotId} is gone`
      : snap.host_id === null
        ? `the host that kept snapshot ${snap.name}'s files is gone`
        : snap.status !== 'ready'
          ? `snapshot ${snap.name} is ${snap.status}`
          : null;
    if (why)
      throw new NqvmError(
        'SNAPSHOT_NOT_READY',
        `VM ${vm.name} is a clone that has not run yet, and its first boot restores its snapshot: ${why}; a clone never boots from its image, so delete it`,
        { snapshot_id: snapshotId },
      );
    return snapshotId;
  }

  /** VMs created without `networks` get one NIC on the default network, when there is one. */
  private async defaultNetworks(): Promise<Array<{ network_id: string; ip?: string }>> {
    const network = await this.store.db
      .selectFrom('networks')
      .select('id')
      .where('is_default', '=', 1)
      .executeTakeFirst();
    return network ? [{ network_id: network.id }] : [];
  }

  /** Volumes to attach at create: each known (400 otherwise) and free to attach (409 otherwise). */
  private async checkVolumes(ids: string[]): Promise<void> {
    if (!ids.length) return;
    const rows = await this.store.db.selectFrom('volumes').selectAll().where('id', 'in', ids).execute();
    const found = new Set(rows.map((r) => r.id));
    const missing = ids.findIndex((v) => !found.has(v));
    if (missing >= 0)
      throw new NqvmError('VALIDATION_FAILED', `volumes.${missing}.volume_id: no volume ${ids[missing]}`, {
        fields: [{ path: `body.volumes.${missing}.volume_id`, message: 'unknown volume' }],
      });
    await checkAttachable(this.store.db, null, rows);
  }

  private async checkImages(input: VmCreate): Promise<void> {
    const ids = [input.kernel_image_id, input.rootfs_image_id, input.initrd_image_id].filter(
      (x): x is string => !!x,
    );
    if (!ids.length) return;
    const found = await this.store.db
      .selectFrom('images')
      .select(['id', 'kind', 'name', 'status'])
      .where('id', 'in', ids)
      .execute();
    const byId = new Map(found.map((r) => [r.id, r]));
    const expect: Array<[string | undefined, string, string]> = [
      [input.kernel_image_id, 'kernel', 'kernel_image_id'],
      [input.rootfs_image_id, 'rootfs', 'rootfs_image_id'],
      [input.initrd_image_id, 'initrd', 'initrd_image_id'],
    ];
    for (const [imageId, kind, field] of expect) {
      if (!imageId) continue;
      const image = byId.get(imageId);
      if (!image)
        throw new NqvmError('VALIDATION_FAILED', `${field}: no image ${imageId}`, {
          fields: [{ path: field, message: 'unknown image' }],
        });
      if (image.kind !== kind)
        throw new NqvmError(
          'VALIDATION_FAILED',
          `${field}: image ${imageId} is a ${image.kind}, not a ${kind}`,
          {
            fields: [{ path: field, message: `not a ${kind}` }],
          },
        );
      if (image.status !== 'ready')
        throw new NqvmError(
          'IMAGE_NOT_READY',
          `${field}: image ${image.name} is ${image.status}, not ready`,
          { field, status: image.status },
        );
    }
  }
}
