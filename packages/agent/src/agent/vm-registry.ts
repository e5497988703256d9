/**
 * The VMs this agent holds, by id: commands and deletes from the manager, adoption of the VMs
 * found in the state directory, and the reports heartbeats carry. A deleted VM is reported as
 * `deleted` until a heartbeat carrying that report succeeds, then forgotten.
 */
import { type AgentVmCommand, type AgentVmReport, SIGNATURE_MAX_SKEW_MS, type VmMetrics } from '@nqvm/api';
import { type AgentLogger, errorMessage } from './logger';
import { listVmIds } from './state-files';
import { truncateError, VmRuntime, type VmRuntimeDeps } from './vm-runtime';

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

  report(id: string): AgentVmReport | null {
    const vm = this.vms.get(id);
    if (vm) return this.reportOf(vm);
    return this.deletedReports.get(id) ?? null;
  }

  /** Recent console output of a VM; null for an unknown VM. */
  async consoleTail(id: string, bytes: number): Promise<Buffer | null> {
    const vm = this.vms.get(id);
    return vm ? vm.consoleTail(bytes) : null;
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
