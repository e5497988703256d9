/**
 * The VMs this agent holds, by id: commands and deletes from the manager, adoption of the VMs
 * found in the state directory, and the reports heartbeats carry. A deleted VM is reported as
 * `deleted` until a heartbeat carrying that report succeeds, then forgotten.
 */
import {
  type AgentExec,
  type AgentExecResult,
  type AgentSnapshot,
  type AgentVmCommand,
  type AgentVmReport,
  NqvmError,
  SIGNATURE_MAX_SKEW_MS,
  type SnapshotType,
  type VmMetrics,
} from '@nqvm/api';
import type { ConsoleRoom } from '../console/console-room';
import { type AgentLogger, errorMessage } from './logger';
import { listVmIds } from './state-files';
import { publicSnapshot, type RunningVmm, truncateError, VmRuntime, type VmRuntimeDeps } from './vm-runtime';

/**
 * A deleted VM, remembered so that a command signed before the delete (delayed in transit, or
 * retried) cannot bring it back. Commands older than the signature window are refused anyway,
 * so a tombstone is kept only that long (plus a margin).
 */
interface Tombstone {
  generation: number;
  /** Signature timestamp of the DELETE (the manager's clock, like the commands'). */
  deleteSignedAt: number;
  expiresAt: number;
}

const TOMBSTONE_TTL_MS = 2 * SIGNATURE_MAX_SKEW_MS;

export class VmRegistry {
  private readonly vms = new Map<string, VmRuntime>();
  private readonly deleting = new Map<string, Promise<void>>();
  private readonly deleteErrors = new Map<string, string>();
  private readonly tombstones = new Map<string, Tombstone>();
  /** `deleted` reports not yet acknowledged by a successful heartbeat. */
  private readonly deletedReports = new Map<string, AgentVmReport>();
  /** Snapshots being taken, by id. */
  private readonly snapshotting = new Map<string, Promise<AgentSnapshot>>();

  constructor(
    private readonly deps: VmRuntimeDeps,
    private readonly log: AgentLogger,
  ) {}

  get size(): number {
    return this.vms.size;
  }

  has(id: string): boolean {
    return this.vms.has(id);
  }

  /** Every VM's report, plus `deleted` reports not yet acknowledged. */
  reports(): AgentVmReport[] {
    const live = [...this.vms.values()].map((vm) => this.reportOf(vm));
    return [...live, ...this.deletedReports.values()];
  }

  /** Looks up the addresses of the VMs' bridged NICs, for the next reports. */
  async refreshAddresses(): Promise<void> {
    for (const vm of this.vms.values()) await vm.refreshAddresses();
  }

  report(id: string): AgentVmReport | null {
    const vm = this.vms.get(id);
    if (vm) return this.reportOf(vm);
    return this.deletedReports.get(id) ?? null;
  }

  /** The id of a VM of this host whose VMM runs (or starts) with the volume attached; null when none. */
  volumeUser(volumeId: string): string | null {
    for (const vm of this.vms.values()) if (vm.usesVolume(volumeId)) return vm.id;
    return null;
  }

  /**
   * Takes a snapshot of a VM of this host (a retry of one in progress waits for that one).
   * Unknown VM: 404.
   */
  snapshot(vmId: string, snapshotId: string, type: SnapshotType): Promise<AgentSnapshot> {
    const inflight = this.snapshotting.get(snapshotId);
    if (inflight) return inflight;
    const vm = this.vms.get(vmId);
    if (!vm) return Promise.reject(new NqvmError('VM_NOT_FOUND', { id: vmId }));
    const work = vm.snapshot(snapshotId, type).finally(() => this.snapshotting.delete(snapshotId));
    this.snapshotting.set(snapshotId, work);
    return work;
  }

  /** The VM's runtime, for a container's logs; null for an unknown VM. */
  runtime(id: string): VmRuntime | null {
    return this.vms.get(id) ?? null;
  }

  /** Runs a command in a VM's guest; unknown VM: 404. */
  exec(vmId: string, req: AgentExec): Promise<AgentExecResult> {
    const vm = this.vms.get(vmId);
    if (!vm) return Promise.reject(new NqvmError('VM_NOT_FOUND', { id: vmId }));
    return vm.exec(req);
  }

  async snapshots(): Promise<AgentSnapshot[]> {
    return (await this.deps.snapshots.list()).map(publicSnapshot);
  }

  /** Removes a snapshot's files; 409 while a Diff builds on it or a VM is being restored from it. */
  async deleteSnapshot(id: string): Promise<void> {
    if (this.snapshotting.has(id))
      throw new NqvmError('SNAPSHOT_IN_USE', `snapshot ${id} is still being taken`, { snapshot_id: id });
    const children = await this.deps.snapshots.childrenOf(id);
    if (children.length)
      throw new NqvmError('SNAPSHOT_IN_USE', `Diff snapshot ${children[0]} builds on snapshot ${id}`, {
        snapshot_id: children[0],
      });
    for (const vm of this.vms.values()) {
      if (vm.restoresFrom(id))
        throw new NqvmError('SNAPSHOT_IN_USE', `VM ${vm.id} is being restored from snapshot ${id}`, {
          vm_id: vm.id,
        });
    }
    await this.deps.snapshots.remove(id);
    this.log.info({ snapshotId: id }, 'snapshot deleted');
  }

  /** Recent console output of a VM; null for an unknown VM. */
  async consoleTail(id: string, bytes: number): Promise<Buffer | null> {
    const vm = this.vms.get(id);
    return vm ? vm.consoleTail(bytes) : null;
  }

  /** The console WebSocket sessions of a VM; null for an unknown VM. */
  consoleRoom(id: string): ConsoleRoom | null {
    return this.vms.get(id)?.consoleRoom ?? null;
  }

  /** The VMs whose VMM runs (or is paused), for metrics. */
  runningVmms(): RunningVmm[] {
    const out: RunningVmm[] = [];
    for (const vm of this.vms.values()) {
      const r = vm.runningVmm();
      if (r) out.push(r);
    }
    return out;
  }

  /** How many VMs are in each reported state. */
  stateCounts(): Map<string, number> {
    const out = new Map<string, number>();
    for (const vm of this.vms.values()) {
      const state = vm.report().state;
      out.set(state, (out.get(state) ?? 0) + 1);
    }
    return out;
  }

  /** The VMM's metrics; null for an unknown VM. */
  async metrics(id: string): Promise<VmMetrics | null> {
    const vm = this.vms.get(id);
    return vm ? vm.metrics() : null;
  }

  /**
   * Accepts a command (idempotent per generation) and answers the VM's report. `signedAt` is
   * the command's signature time: one signed before a delete of the VM is stale and ignored.
   */
  async apply(id: string, cmd: AgentVmCommand, signedAt: number): Promise<AgentVmReport> {
    const tomb = this.tombstone(id);
    if (tomb && cmd.generation <= tomb.generation && signedAt <= tomb.deleteSignedAt) {
      return deletedReport(id, tomb.generation);
    }
    let vm = this.vms.get(id);
    if (!vm) {
      vm = new VmRuntime(id, this.deps);
      this.vms.set(id, vm);
      this.tombstones.delete(id);
      this.deletedReports.delete(id);
    }
    if (await vm.apply(cmd)) {
      this.log.info({ vmId: id, generation: cmd.generation, desired: cmd.desired }, 'command accepted');
    }
    return this.reportOf(vm);
  }

  /**
   * Starts deleting a VM in the background and answers its report now. An unknown id is
   * reported `deleted` at once, so a retried delete is harmless.
   */
  delete(id: string, signedAt: number): AgentVmReport {
    const vm = this.vms.get(id);
    if (!vm) {
      const report = this.deletedReports.get(id) ?? deletedReport(id, this.tombstone(id)?.generation ?? 0);
      this.markDeleted(report, signedAt);
      return report;
    }
    if (!this.deleting.has(id)) {
      this.deleteErrors.delete(id);
      const work = vm
        .destroy()
        .then(() => {
          this.vms.delete(id);
          this.markDeleted(deletedReport(id, vm.generation), signedAt);
          this.log.info({ vmId: id }, 'VM deleted');
        })
        .catch((err: unknown) => {
          this.deleteErrors.set(id, truncateError(`delete failed: ${errorMessage(err)}`));
          this.log.error({ vmId: id, err }, 'VM delete failed');
          this.deps.onChange();
        })
        .finally(() => this.deleting.delete(id));
      this.deleting.set(id, work);
    }
    return this.reportOf(vm);
  }

  /** Waits for deletes in flight (tests, shutdown). */
  async settled(): Promise<void> {
    await Promise.all(this.deleting.values());
  }

  /** A heartbeat carrying these reports succeeded: `deleted` ones are now known to the manager. */
  acknowledge(sent: readonly AgentVmReport[]): void {
    for (const r of sent) {
      if (r.state === 'deleted' && this.deletedReports.get(r.id) === r) this.deletedReports.delete(r.id);
    }
  }

  /** Adopts every VM folder of the state directory (at agent start). */
  async restoreAll(): Promise<void> {
    const ids = await listVmIds(this.deps.stateDir);
    await Promise.all(
      ids.map(async (id) => {
        const vm = new VmRuntime(id, this.deps);
        try {
          await vm.restore();
          this.vms.set(id, vm);
        } catch (err) {
          this.log.error({ vmId: id, err: errorMessage(err) }, 'ignoring a VM folder the agent cannot read');
        }
      }),
    );
  }

  /** Lets go of every VM without stopping any. */
  async release(waitMs: number): Promise<void> {
    await Promise.all([...this.vms.values()].map((vm) => vm.release(waitMs)));
  }

  private reportOf(vm: VmRuntime): AgentVmReport {
    const report = vm.report();
    const error = this.deleteErrors.get(vm.id);
    return error ? { ...report, error } : report;
  }

  private tombstone(id: string): Tombstone | null {
    const now = Date.now();
    for (const [key, t] of this.tombstones) {
      if (t.expiresAt > now) break;
      this.tombstones.delete(key);
    }
    return this.tombstones.get(id) ?? null;
  }

  private markDeleted(report: AgentVmReport, deleteSignedAt: number): void {
    // Re-inserted, so the map stays ordered by expiry.
    this.tombstones.delete(report.id);
    this.tombstones.set(report.id, {
      generation: report.generation,
      deleteSignedAt,
      expiresAt: Date.now() + TOMBSTONE_TTL_MS,
    });
    this.deletedReports.set(report.id, report);
    this.deps.onChange();
  }
}

function deletedReport(id: string, generation: number): AgentVmReport {
  return { id, generation, state: 'deleted', error: null, vmm: null, pid: null };
}
