/**
 * The reconciler drives each VM's actual state toward its desired state: it places unplaced
 * VMs, sends the host agent an idempotent command per (VM, generation), turns agent reports
 * into VM states, and finishes the operations those reports satisfy. It is level-triggered:
 * a lost command or report is repaired by the next pass.
 */
import type {
  AgentGuestConfig,
  AgentHeartbeat,
  AgentVmCommand,
  AgentVmReport,
  OperationStep,
  VmState,
} from '@nqvm/api';
import { NqvmError } from '@nqvm/api';
import type { z } from 'zod';
import { isoAfter, nowIso } from '../clock';
import type { Datastore } from '../db/datastore';
import type { HostRow, OperationRow, VmRow } from '../db/schema';
import type { AgentClient } from '../hosts/agent-client';
import { resolveInitrd } from '../images/boot-images';
import { resolveImage } from '../images/images';
import { type VmNetworking, vmNetworking } from '../networks/agent-networking';
import { recordFoundAddresses } from '../networks/vm-nics';
import type { Operations } from '../operations/operations';
import type { Scheduler } from '../scheduler/scheduler';
import type { StoredSpec, Vms } from '../vms/vms';

/** A command not acknowledged within this time is sent again (same generation: idempotent). */
const RESEND_AFTER_MS = 10_000;
/** VMs reconciled at once in a pass, so a backlog never floods the datastore or the API. */
const PASS_CONCURRENCY = 16;

/** The state each operation kind waits for. */
const OP_TARGET: Record<string, VmState> = {
  'vm.create': 'running',
  'vm.start': 'running',
  'vm.resume': 'running',
  'vm.reboot': 'running',
  'vm.stop': 'stopped',
  'vm.pause': 'paused',
  'vm.restore': 'running',
  'snapshot.instantiate': 'running',
};

const SETTLED: ReadonlySet<string> = new Set(['running', 'paused', 'stopped', 'failed']);

/** Operations whose work is a boot: they finish with the boot's steps as the host timed them. */
const BOOTS: ReadonlySet<string> = new Set([
  'vm.create',
  'vm.start',
  'vm.reboot',
  'vm.restore',
  'snapshot.instantiate',
]);

/** Told about each report of a VM the manager keeps (a container reads its process's state); must not throw. */
export type ReportHook = (vm: VmRow, report: AgentVmReport) => Promise<void>;

export class Reconciler {
  private readonly inflight = new Set<string>();
  private readonly reportHooks: ReportHook[] = [];

  constructor(
    private readonly store: Datastore,
    private readonly vms: Vms,
    private readonly ops: Operations,
    private readonly scheduler: Scheduler,
    private readonly agents: AgentClient,
    private readonly log: { warn: (o: object, m: string) => void; error: (o: object, m: string) => void },
  ) {}

  onReport(hook: ReportHook): void {
    this.reportHooks.push(hook);
  }

  /**
   * One pass over every VM that needs work, a few at a time. Unplaced VMs are only looked at
   * when some host could take them: thousands of VMs waiting for a host cost one query.
   */
  async pass(): Promise<void> {
    const placeable = await this.anyUsableHost();
    // VMs on a host that is not ready wait for it (the health sweep shows them unknown).
    const readyHosts = this.store.db.selectFrom('hosts').select('id').where('status', '=', 'ready');
    const rows = await this.store.db
      .selectFrom('vms')
      .select('id')
      .where((eb) =>
        eb.or([
          ...(placeable ? [eb('host_id', 'is', null).and('desired_state', '!=', 'stopped')] : []),
          eb('state', '=', 'deleting').and('host_id', 'is', null),
          eb.and([
            eb('host_id', 'in', readyHosts),
            eb.or([eb('state', '=', 'deleting'), eb('observed_generation', '<', eb.ref('generation'))]),
          ]),
        ]),
      )
      .execute();
    for (let i = 0; i < rows.length; i += PASS_CONCURRENCY) {
      await Promise.all(rows.slice(i, i + PASS_CONCURRENCY).map((vm) => this.reconcile(vm.id)));
    }
  }

  private async anyUsableHost(): Promise<boolean> {
    const host = await this.store.db
      .selectFrom('hosts')
      .select('id')
      .where('status', '=', 'ready')
      .where('schedulable', '=', 1)
      .where('credential_hash', 'is not', null)
      .executeTakeFirst();
    return host !== undefined;
  }

  /** Reconciles one VM now (called right after an API action, and by each pass). */
  async reconcile(vmId: string): Promise<void> {
    if (this.inflight.has(vmId)) return;
    this.inflight.add(vmId);
    try {
      await this.reconcileOne(vmId);
    } catch (err) {
      this.log.error({ err, vmId }, 'reconcile failed; will retry');
    } finally {
      this.inflight.delete(vmId);
    }
  }

  private async reconcileOne(vmId: string): Promise<void> {
    let vm = await this.vms.findRow(vmId);
    if (!vm) return;
    if (!vm.host_id) {
      if (vm.state === 'deleting') return this.finishDelete(vm);
      if (vm.desired_state === 'stopped') return;
      const placed = await this.place(vm);
      if (!placed) return;
      vm = (await this.vms.findRow(vmId))!;
    }
    const host = await this.store.db
      .selectFrom('hosts')
      .selectAll()
      .where('id', '=', vm.host_id!)
      .executeTakeFirst();
    if (!host) return;
    if (host.status !== 'ready') {
      await this.note(vm, `waiting for host ${host.name} (${host.status})`);
      return;
    }
    if (vm.state === 'deleting') {
      if (vm.commanded_at && vm.commanded_at > isoAfter(-RESEND_AFTER_MS)) return;
      await this.markCommanded(vm);
      await this.agents.deleteVm(host.address, vm.id);
      return;
    }
    if (vm.observed_generation >= vm.generation) return;
    if (vm.commanded_at && vm.commanded_at > isoAfter(-RESEND_AFTER_MS)) return;
    let cmd: AgentVmCommand;
    try {
      cmd = await this.command(vm);
    } catch (err) {
      if (err instanceof NqvmError) return this.failVm(vm, err.code, err.message);
      throw err;
    }
    await this.markCommanded(vm);
    try {
      const report = await this.agents.putVm(host.address, vm.id, cmd);
      await this.applyReport(host, report);
    } catch (err) {
      await this.note(
        vm,
        `host ${host.name} did not take the command yet: ${(err as Error).message}; retrying`,
      );
    }
  }

  /** Places the VM; answers false when it must wait or has failed. */
  private async place(vm: VmRow): Promise<boolean> {
    try {
      const host = await this.scheduler.place(vm.id);
      await this.note(vm, `placed on host ${host.name}`, 10);
      return true;
    } catch (err) {
      if (!(err instanceof NqvmError) || err.code !== 'NO_CAPACITY') throw err;
      if (!(await this.anyUsableHost())) {
        await this.note(vm, `waiting for a host: ${err.message}`);
        return false;
      }
      await this.failVm(vm, 'NO_CAPACITY', err.message);
      return false;
    }
  }

  private async command(vm: VmRow): Promise<AgentVmCommand> {
    const spec = JSON.parse(vm.spec) as StoredSpec;
    const [kernel, initrd, rootfs] = await Promise.all([
      resolveImage(this.store, 'kernel', spec.kernel_image_id),
      resolveInitrd(this.store, spec),
      resolveImage(this.store, 'rootfs', spec.rootfs_image_id, { optional: true }),
    ]);
    const volumes = await this.store.db
      .selectFrom('volumes')
      .select(['id', 'name', 'size_mib', 'filesystem'])
      .where('vm_id', '=', vm.id)
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    const net = await vmNetworking(this.store.db, vm.id);
    const ops = await this.ops.active(vm.id);
    const current = ops.find(
      (o) => (JSON.parse(o.params) as { generation?: number }).generation === vm.generation,
    );
    const params = current
      ? (JSON.parse(current.params) as { force?: boolean; timeout_s?: number; restore_snapshot_id?: string })
      : {};
    return {
      generation: vm.generation,
      desired: vm.desired_state as AgentVmCommand['desired'],
      reboot: current?.kind === 'vm.reboot',
      stop: { force: params.force ?? false, timeout_s: params.timeout_s ?? 30 },
      // Restores in place and a clone's first boot: the host boots the VM from the snapshot.
      restore: params.restore_snapshot_id ? { snapshot_id: params.restore_snapshot_id } : null,
      spec: {
        name: vm.name,
        vcpu: vm.vcpu,
        mem_mib: Number(vm.mem_mib),
        vmm: (vm.vmm as AgentVmCommand['spec']['vmm']) ?? null,
        kernel: kernel!,
        initrd,
        rootfs,
        disk_size_mib: spec.disk_size_mib,
        boot_args: spec.boot_args,
        restart_policy: vm.restart_policy as AgentVmCommand['spec']['restart_policy'],
        guest_config: agentGuestConfig(vm, spec, net),
        volumes: volumes.map((v) => ({
          id: v.id,
          name: v.name,
          size_mib: Number(v.size_mib),
          filesystem: v.filesystem,
          read_only: false,
        })),
        nics: net.nics,
        port_forwards: net.port_forwards,
        container: spec.container ?? null,
      },
    };
  }

  /** Applies a heartbeat's VM reports, and repairs what the host lost or should not have. */
  async onHeartbeat(hostId: string, hb: z.infer<typeof AgentHeartbeat>): Promise<void> {
    const host = await this.store.db
      .selectFrom('hosts')
      .selectAll()
      .where('id', '=', hostId)
      .executeTakeFirst();
    if (!host) return;
    const reported = new Set<string>();
    for (const r of hb.vms) {
      reported.add(r.id);
      await this.applyReport(host, r);
    }
    const assigned = await this.store.db
      .selectFrom('vms')
      .selectAll()
      .where('host_id', '=', hostId)
      .execute();
    for (const vm of assigned) {
      if (reported.has(vm.id)) continue;
      if (vm.state === 'unknown')
        await this.vms.write(vm.id, {
          state: 'stopped',
          last_error: `host ${host.name} no longer has this VM`,
        });
      // The host forgot the VM (state lost): command it again.
      if (vm.observed_generation > 0 && (!vm.commanded_at || vm.commanded_at < isoAfter(-RESEND_AFTER_MS))) {
        await this.store.db
          .updateTable('vms')
          .set({ observed_generation: 0, commanded_at: null })
          .where('id', '=', vm.id)
          .execute();
        void this.reconcile(vm.id);
      }
    }
  }

  async applyReport(host: HostRow, r: AgentVmReport): Promise<void> {
    const vm = await this.vms.findRow(r.id);
    if (!vm || vm.host_id !== host.id) {
      if (r.state !== 'deleted') {
        // A VM this host should not run (deleted meanwhile, or placed elsewhere): remove it there.
        this.agents
          .deleteVm(host.address, r.id)
          .catch((err) => this.log.warn({ err, vmId: r.id }, 'orphan cleanup failed'));
      }
      return;
    }
    if (r.state === 'deleted') {
      if (vm.state === 'deleting') return this.finishDelete(vm);
      await this.store.db
        .updateTable('vms')
        .set({ observed_generation: 0, commanded_at: null })
        .where('id', '=', vm.id)
        .execute();
      return;
    }
    if (vm.state === 'deleting') return;
    // Whatever its generation: the process's state does not depend on the command.
    for (const hook of this.reportHooks) await hook(vm, r);
    if (r.nics?.length && (await recordFoundAddresses(this.store.db, vm.id, r.nics))) {
      // Forwards to a bridged NIC wait for its address: with it found, the host gets them.
      const forwarded = await this.store.db
        .selectFrom('port_forwards')
        .select('id')
        .where('vm_id', '=', vm.id)
        .executeTakeFirst();
      if (forwarded) await this.vms.write(vm.id, { generation: vm.generation + 1 });
      else await this.vms.publishUpdated(vm.id);
    }
    const current = r.generation >= vm.generation;
    if (!current && vm.state !== 'unknown') return;
    let state = r.state as VmState;
    let error = r.error;
    let desired = vm.desired_state;
    // Desired state is the user's; reports under the current command only say whether the VM
    // still wants to run after it ended by itself (user actions always make a new generation).
    if (current && (state === 'stopped' || state === 'failed') && desired === 'running' && !r.restarting) {
      // The guest ended on its own and the host's restart policy will not bring it back.
      desired = 'stopped';
    } else if (current && (state === 'starting' || state === 'running') && desired === 'stopped') {
      // The host's restart policy brought it back (a report that did not say it would).
      desired = 'running';
    }
    if (current && vm.state === 'failed' && state === 'stopped') {
      // A failure and its reason stay until the user changes the VM's state: a host agent that
      // restarted without its record of it reports the VM merely stopped.
      state = 'failed';
      error = r.error ?? vm.last_error;
    }
    if (vm.state === 'creating' && (state === 'stopping' || state === 'stopped') && !current)
      state = 'creating';
    const ready = r.guest_ready ?? null;
    const changed =
      vm.state !== state ||
      vm.last_error !== error ||
      vm.desired_state !== desired ||
      vm.pid !== r.pid ||
      vm.guest_ready_at !== (ready?.at ?? null);
    await this.store.db
      .updateTable('vms')
      .set({
        observed_generation: current
          ? Math.max(vm.observed_generation, r.generation)
          : vm.observed_generation,
        ...(current ? { commanded_at: null } : {}),
        pid: r.pid,
        ...(r.vmm && !vm.vmm ? { vmm: r.vmm } : {}),
      })
      .where('id', '=', vm.id)
      .execute();
    if (changed)
      await this.vms.writeIf(
        vm.id,
        { state: vm.state, generation: vm.generation },
        {
          state,
          last_error: error,
          desired_state: desired,
          guest_ready_at: ready?.at ?? null,
          guest_ready_signal: ready?.signal ?? null,
        },
      );
    if (current) await this.settleOperations(vm.id, state, error, r.generation, r.boot_steps);
  }

  private async settleOperations(
    vmId: string,
    state: VmState,
    error: string | null,
    generation: number,
    bootSteps?: OperationStep[],
  ): Promise<void> {
    for (const op of await this.ops.active(vmId)) {
      const opGen = (JSON.parse(op.params) as { generation?: number }).generation ?? 0;
      if (opGen > generation) continue;
      const target = OP_TARGET[op.kind];
      if (!target) continue;
      if (state === target) {
        const { release } = JSON.parse(op.params) as { release?: boolean };
        if (release) await this.release(vmId);
        await this.ops.succeed(
          op.id,
          release ? 'VM is stopped and released from its host' : `VM is ${state}`,
          BOOTS.has(op.kind) ? bootSteps : undefined,
        );
      } else if (state === 'failed') {
        await this.ops.fail(op.id, 'VM_FAILED', error ?? 'the VM failed');
      } else if (SETTLED.has(state) && op.kind !== 'vm.stop') {
        await this.ops.fail(op.id, 'VM_FAILED', error ?? `the VM is ${state}, not ${target}`);
      } else {
        await this.progress(op, state);
      }
    }
  }

  private async progress(op: OperationRow, state: VmState): Promise<void> {
    const percent = state === 'starting' ? 50 : state === 'stopping' || state === 'pausing' ? 60 : 30;
    if (op.status === 'queued' || op.progress_message !== `VM is ${state}`) {
      await this.ops.update(op.id, { status: 'running', percent, message: `VM is ${state}` });
    }
  }

  /**
   * Hands a stopped VM back to the scheduler: its reservation returns to the host, the host
   * deletes the VM's files (a failed request is repaired by the orphan cleanup on the next
   * heartbeat), and the next start places it anew with a fresh disk.
   */
  async release(vmId: string): Promise<void> {
    const vm = await this.vms.findRow(vmId);
    if (!vm?.host_id) return;
    const host = await this.store.db
      .selectFrom('hosts')
      .select('address')
      .where('id', '=', vm.host_id)
      .executeTakeFirst();
    await this.scheduler.release(vm);
    await this.store.db
      .updateTable('vms')
      .set({ observed_generation: 0, commanded_at: null, pid: null })
      .where('id', '=', vmId)
      .execute();
    await this.vms.write(vmId, { state: 'stopped' });
    if (host)
      this.agents
        .deleteVm(host.address, vmId)
        .catch((err) => this.log.warn({ err, vmId }, 'release cleanup failed'));
  }

  private async finishDelete(vm: VmRow): Promise<void> {
    await this.scheduler.release(vm);
    await this.vms.remove(vm.id);
    for (const op of await this.vmOps(vm.id)) {
      if (op.kind === 'vm.delete') await this.ops.succeed(op.id, 'deleted');
      else await this.ops.update(op.id, { status: 'cancelled', message: 'the VM was deleted' });
    }
  }

  private async failVm(vm: VmRow, code: string, message: string): Promise<void> {
    await this.vms.write(vm.id, { state: 'failed', desired_state: 'stopped', last_error: message });
    for (const op of await this.vmOps(vm.id)) await this.ops.fail(op.id, code, message);
  }

  private async note(vm: VmRow, message: string, percent?: number): Promise<void> {
    for (const op of await this.vmOps(vm.id)) {
      if (op.progress_message === message) continue;
      await this.ops.update(op.id, {
        message,
        ...(percent !== undefined ? { percent, status: 'running' } : {}),
      });
    }
  }

  /** The VM's own active operations (a container's, of the same id, follow the VM by themselves). */
  private async vmOps(vmId: string): Promise<OperationRow[]> {
    return (await this.ops.active(vmId)).filter((op) => op.target_type === 'vm');
  }

  private async markCommanded(vm: VmRow): Promise<void> {
    await this.store.db.updateTable('vms').set({ commanded_at: nowIso() }).where('id', '=', vm.id).execute();
  }
}

/** The guest settings an agent writes before boot; the password only as its crypt hash. */
function agentGuestConfig(vm: VmRow, spec: StoredSpec, net: VmNetworking): AgentGuestConfig | null {
  const gc = spec.guest_config;
  if (gc.mode === 'none') return null;
  return {
    mode: gc.mode,
    instance_id: vm.id,
    hostname: gc.hostname ?? hostLabel(vm.name),
    username: gc.username,
    password_hash: gc.password_hash,
    ssh_authorized_keys: gc.ssh_authorized_keys,
    user_data: gc.user_data,
    network_config: net.network_config,
  };
}

/** A VM name as a host name label: `web_1.a` -> `web-1-a`. */
export function hostLabel(name: string): string {
  const label = name
    .replace(/[^a-zA-Z0-9-]/g, '-')
    .slice(0, 63)
    .replace(/-+$/, '');
  return label || 'vm';
}
