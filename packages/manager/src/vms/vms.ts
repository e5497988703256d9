/**
 * The VM resource: desired state recorded in the datastore, transitions checked against the
 * state machine, long work handed to operations. Execution (placement, agent commands) is the
 * reconciler's; this module only records intent.
 */
import { randomUUID } from 'node:crypto';
import {
  ConflictError,
  InputError,
  NotFoundError,
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
import type { Operations } from '../operations/operations';
import { hashGuestPassword } from './guest-secrets';
import { canTransition, LIVE_STATES, TRANSITIONS, type VmAction } from './state-machine';

/** What is kept in `vms.spec`: the create request minus secrets, plus derived values. */
export interface StoredSpec {
  kernel_image_id: string | null;
  rootfs_image_id: string | null;
  initrd_image_id: string | null;
  disk_size_mib: number | null;
  boot_args: string | null;
  networks: Array<{ network_id: string; ip: string | null; mac: string | null }>;
  guest_config: {
    mode: 'auto' | 'cloud-init' | 'inject' | 'none';
    username: string | null;
    password_hash: string | null;
    ssh_authorized_keys: string[];
    hostname: string | null;
    user_data: string | null;
  };
}

export function toVm(r: VmRow): Vm {
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
    networks: spec.networks,
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
  constructor(
    private readonly store: Datastore,
    private readonly bus: EventBus,
    private readonly ops: Operations,
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
    return { items: page.items.map(toVm), next: page.next };
  }

  async findRow(id: string): Promise<VmRow | undefined> {
    return this.store.db.selectFrom('vms').selectAll().where('id', '=', id).executeTakeFirst();
  }

  async getRow(id: string): Promise<VmRow> {
    const row = await this.findRow(id);
    if (!row) throw new NotFoundError('VM_NOT_FOUND', 'VM', id);
    return row;
  }

  async get(id: string): Promise<Vm> {
    return toVm(await this.getRow(id));
  }

  async create(input: VmCreate, actor: string | null): Promise<{ vm: Vm; operation: Operation }> {
    await this.checkImages(input);
    const at = nowIso();
    const id = randomUUID();
    const gc = input.guest_config;
    const spec: StoredSpec = {
      kernel_image_id: input.kernel_image_id ?? null,
      rootfs_image_id: input.rootfs_image_id ?? null,
      initrd_image_id: input.initrd_image_id ?? null,
      disk_size_mib: input.disk_size_mib ?? null,
      boot_args: input.boot_args ?? null,
      networks: input.networks.map((n) => ({ network_id: n.network_id, ip: n.ip ?? null, mac: null })),
      guest_config: {
        mode: gc?.mode ?? 'auto',
        username: gc?.username ?? null,
        password_hash: gc?.password !== undefined ? hashGuestPassword(gc.password) : null,
        ssh_authorized_keys: gc?.ssh_authorized_keys ?? [],
        hostname: gc?.hostname ?? null,
        user_data: gc?.user_data ?? null,
      },
    };
    const row: VmRow = {
      id,
      name: input.name,
      state: input.start ? 'creating' : 'stopped',
      desired_state: input.start ? 'running' : 'stopped',
      host_id: null,
      generation: 1,
      vcpu: input.vcpu,
      mem_mib: input.mem_mib,
      disk_mib: input.disk_size_mib ?? 0,
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
    };
    try {
      await this.store.db.transaction().execute(async (trx) => {
        await trx.insertInto('vms').values(row).execute();
        const labels = Object.entries(input.labels).map(([key, value]) => ({ vm_id: id, key, value }));
        if (labels.length) await trx.insertInto('vm_labels').values(labels).execute();
      });
    } catch (err) {
      if (isUniqueViolation(err))
        throw new ConflictError('NAME_TAKEN', `a VM named "${input.name}" exists`, { field: 'name' });
      throw err;
    }
    const vm = toVm(row);
    await this.bus.publish({ type: 'vm.created', resourceType: 'vm', resourceId: id, data: vm });
    const operation = await this.ops.create({
      kind: input.start ? 'vm.create' : 'vm.define',
      target: { type: 'vm', id },
      createdBy: actor,
      params: { generation: 1 },
      message: input.start ? 'waiting for a host' : 'defined',
    });
    if (!input.start)
      return { vm, operation: (await this.ops.succeed(operation.id, 'defined, not started')) ?? operation };
    return { vm, operation };
  }

  async patch(id: string, p: VmPatch): Promise<Vm> {
    const row = await this.getRow(id);
    const resizing = p.vcpu !== undefined || p.mem_mib !== undefined;
    if (resizing && row.state !== 'stopped') {
      throw new ConflictError(
        'VM_INVALID_STATE',
        `vCPU and memory change only while the VM is stopped (it is ${row.state})`,
        {
          state: row.state,
        },
      );
    }
    try {
      await this.store.db.transaction().execute(async (trx) => {
        await trx
          .updateTable('vms')
          .set({
            ...(p.name !== undefined ? { name: p.name } : {}),
            ...(p.labels !== undefined ? { labels: JSON.stringify(p.labels) } : {}),
            ...(p.restart_policy !== undefined ? { restart_policy: p.restart_policy } : {}),
            ...(p.vcpu !== undefined ? { vcpu: p.vcpu } : {}),
            ...(p.mem_mib !== undefined ? { mem_mib: p.mem_mib } : {}),
            ...(resizing ? { generation: row.generation + 1 } : {}),
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
        throw new ConflictError('NAME_TAKEN', `a VM named "${p.name}" exists`, { field: 'name' });
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
      throw new ConflictError('VM_INVALID_STATE', `cannot ${action} a VM that is ${state}`, {
        state,
        action,
        allowed_from: TRANSITIONS[action].from,
      });
    }
    const t = TRANSITIONS[action];
    // Without a host there is no process to act on: the change is complete at once.
    const immediate = row.host_id === null && (action === 'stop' || state === 'creating');
    const next: VmState = immediate && action === 'stop' ? 'stopped' : t.to;
    const updated = await this.store.db
      .updateTable('vms')
      .set({
        state: next,
        desired_state: t.desired,
        generation: row.generation + 1,
        last_error: null,
        updated_at: nowIso(),
      })
      .where('id', '=', id)
      .where('state', '=', state)
      .executeTakeFirst();
    if (Number(updated.numUpdatedRows) === 0) {
      throw new ConflictError('VM_INVALID_STATE', 'the VM changed state meanwhile; retry', { state });
    }
    await this.supersede(id, action);
    const vm = await this.publishUpdated(id);
    let operation = await this.ops.create({
      kind: `vm.${action}`,
      target: { type: 'vm', id },
      createdBy: actor,
      params: { ...params, generation: row.generation + 1 },
      message: immediate ? 'done' : 'waiting for the host',
    });
    if (immediate)
      operation =
        (await this.ops.succeed(operation.id, 'done: the VM was not placed on a host')) ?? operation;
    return { vm, operation };
  }

  async delete(id: string, force: boolean, actor: string | null): Promise<{ vm: Vm; operation: Operation }> {
    const row = await this.getRow(id);
    const state = row.state as VmState;
    if (state === 'deleting')
      throw new ConflictError('VM_INVALID_STATE', 'the VM is already being deleted', { state });
    if (LIVE_STATES.has(state) && !force) {
      throw new ConflictError(
        'VM_INVALID_STATE',
        `the VM is ${state}: stop it first or delete with ?force=true`,
        { state },
      );
    }
    await this.supersede(id, 'delete');
    const vm = toVm(row);
    let operation = await this.ops.create({
      kind: 'vm.delete',
      target: { type: 'vm', id },
      createdBy: actor,
      params: { force },
    });
    if (row.host_id === null) {
      await this.remove(id);
      operation = (await this.ops.succeed(operation.id, 'deleted')) ?? operation;
      return { vm: { ...vm, state: 'deleting' }, operation };
    }
    await this.store.db
      .updateTable('vms')
      .set({ state: 'deleting', generation: row.generation + 1, updated_at: nowIso() })
      .where('id', '=', id)
      .execute();
    return { vm: await this.publishUpdated(id), operation };
  }

  /** Removes the row for good (after the host has cleaned up, or when it never had one). */
  async remove(id: string): Promise<void> {
    const row = await this.findRow(id);
    if (!row) return;
    await this.store.db.deleteFrom('vms').where('id', '=', id).execute();
    await this.bus.publish({ type: 'vm.deleted', resourceType: 'vm', resourceId: id, data: toVm(row) });
  }

  /** Writes reconciler or agent-reported fields and publishes the change. */
  async write(
    id: string,
    set: Partial<Pick<VmRow, 'state' | 'desired_state' | 'host_id' | 'generation' | 'last_error'>>,
  ): Promise<Vm> {
    await this.store.db
      .updateTable('vms')
      .set({ ...set, updated_at: nowIso() })
      .where('id', '=', id)
      .execute();
    return this.publishUpdated(id);
  }

  private async publishUpdated(id: string): Promise<Vm> {
    const vm = await this.get(id);
    await this.bus.publish({ type: 'vm.updated', resourceType: 'vm', resourceId: id, data: vm });
    return vm;
  }

  /** A new action replaces whatever the VM was still waiting for. */
  private async supersede(id: string, by: string): Promise<void> {
    for (const op of await this.ops.active(id)) {
      await this.ops.update(op.id, { status: 'cancelled', message: `superseded by ${by}` });
    }
  }

  private async checkImages(input: VmCreate): Promise<void> {
    const ids = [input.kernel_image_id, input.rootfs_image_id, input.initrd_image_id].filter(
      (x): x is string => !!x,
    );
    if (!ids.length) return;
    const found = await this.store.db
      .selectFrom('images')
      .select(['id', 'kind'])
      .where('id', 'in', ids)
      .execute();
    const byId = new Map(found.map((r) => [r.id, r.kind]));
    const expect: Array<[string | undefined, string, string]> = [
      [input.kernel_image_id, 'kernel', 'kernel_image_id'],
      [input.rootfs_image_id, 'rootfs', 'rootfs_image_id'],
      [input.initrd_image_id, 'initrd', 'initrd_image_id'],
    ];
    for (const [imageId, kind, field] of expect) {
      if (!imageId) continue;
      const k = byId.get(imageId);
      if (!k)
        throw new InputError(`${field}: no image ${imageId}`, {
          fields: [{ path: field, message: 'unknown image' }],
        });
      if (k !== kind)
        throw new InputError(`${field}: image ${imageId} is a ${k}, not a ${kind}`, {
          fields: [{ path: field, message: `not a ${kind}` }],
        });
    }
  }
}
