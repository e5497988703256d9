/**
 * One VM on this host: converges its VMM to the manager's last command, one piece of work at a
 * time, watches the VMM for exits it did not ask for, restarts per the restart policy (with
 * backoff), and re-attaches to its VMM after an agent restart.
 */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AgentVmCommand, type AgentVmReport, type AgentVmState, type VmMetrics } from '@nqvm/api';
import { readFirecrackerMetrics } from '../drivers/firecracker/metrics';
import type { RunRecord, ShutdownOptions, VmExit, VmHandle, VmmDriver, VmmKind } from '../drivers/types';
import { isSameProcessRunning } from '../host/proc';
import type { DriverSet } from './driver-set';
import { type AgentLogger, errorMessage } from './logger';
import { DESIRED_FILE, RUN_FILE, readJsonFile, vmDirOf, writeJsonAtomic } from './state-files';
import { bootVm } from './vm-boot';
import type { ConsoleOpener, VmConsole } from './vm-console';

export interface RestartBackoff {
  /** First delay before a restart. */
  minMs: number;
  /** The delay doubles up to this. */
  maxMs: number;
  /** A VM that ran this long before exiting starts again from `minMs`. */
  stableMs: number;
}

export const DEFAULT_RESTART_BACKOFF: RestartBackoff = { minMs: 1_000, maxMs: 30_000, stableMs: 60_000 };

export interface VmRuntimeDeps {
  stateDir: string;
  drivers: DriverSet;
  log: AgentLogger;
  openConsole: ConsoleOpener;
  backoff: RestartBackoff;
  /** Called whenever the VM's report changes. */
  onChange: () => void;
}

/** The protocol's bound on a report's error (AgentVmReport.error). */
const MAX_ERROR_CHARS = 2_000;

export function truncateError(message: string): string {
  return message.length <= MAX_ERROR_CHARS ? message : `${message.slice(0, MAX_ERROR_CHARS - 3)}...`;
}

/** Forced stops (reboot, delete) wait this long for the VMM to go. */
const FORCED_STOP_TIMEOUT_MS = 10_000;

export class VmRuntime {
  readonly vmDir: string;
  private command: AgentVmCommand | null = null;
  /** The highest generation whose command was acted on. */
  private applied = 0;
  private state: AgentVmState = 'stopped';
  private error: string | null = null;
  private vmm: VmmKind | null = null;
  private handle: VmHandle | null = null;
  /** Whether the VMM is paused (the reported state may show a transition meanwhile). */
  private vmmPaused = false;
  /** A VMM found running at agent start that its driver could not adopt. */
  private orphan: RunRecord | null = null;
  private console: VmConsole | null = null;
  /** Per-VM work runs here, one piece at a time. */
  private work: Promise<void> = Promise.resolve();
  private persisting: Promise<void> = Promise.resolve();
  private bootAbort: AbortController | null = null;
  private readonly stopRequested = new WeakSet<VmHandle>();
  private restartTimer: NodeJS.Timeout | null = null;
  private restartDelayMs: number;
  private startedAt = 0;
  private deleting = false;
  private closing = false;

  constructor(
    readonly id: string,
    private readonly deps: VmRuntimeDeps,
  ) {
    this.vmDir = vmDirOf(deps.stateDir, id);
    this.restartDelayMs = deps.backoff.minMs;
  }

  get generation(): number {
    return this.command?.generation ?? 0;
  }

  report(): AgentVmReport {
    return {
      id: this.id,
      generation: this.generation,
      state: this.state,
      error: this.error,
      vmm: this.vmm,
      pid: this.handle?.record.pid ?? null,
    };
  }

  /** The VMM's own metrics while it runs (Firecracker's metrics file); null otherwise. */
  async metrics(): Promise<VmMetrics> {
    const handle = this.handle;
    if (!handle || handle.record.kind !== 'firecracker') return { vmm: this.vmm, metrics: null };
    // Firecracker writes a metrics line every 60 s; a flush makes the answer current.
    const driver = this.deps.drivers.get('firecracker') as
      | { flushMetrics?: (h: VmHandle) => Promise<void> }
      | undefined;
    await driver?.flushMetrics?.(handle).catch(() => {});
    return { vmm: 'firecracker', metrics: await readFirecrackerMetrics(handle.record) };
  }

  /** Recent console output (of the last run when the VM is down); empty when there is none. */
  async consoleTail(bytes: number): Promise<Buffer> {
    return (await this.console?.tail(bytes)) ?? Buffer.alloc(0);
  }

  /**
   * Accepts `cmd` when its generation is newer than the last accepted one (answers false
   * otherwise: a retried command never acts twice). The work runs in the background.
   */
  async apply(cmd: AgentVmCommand): Promise<boolean> {
    if (this.deleting || this.closing || cmd.generation <= this.generation) return false;
    this.command = cmd;
    this.cancelRestart();
    if (cmd.desired === 'stopped')
      this.bootAbort?.abort(new Error(`superseded by generation ${cmd.generation}`));
    this.showIntent(cmd);
    try {
      await this.persistDesired();
    } catch (err) {
      this.deps.log.error(
        { vmId: this.id, err },
        `cannot write ${DESIRED_FILE}; the command is applied anyway`,
      );
    }
    void this.enqueue(() => this.converge());
    return true;
  }

  /**
   * Re-attaches after an agent start from the VM folder: its last command and, when a VMM was
   * running, that VMM (never booted twice). A VMM that is gone is booted again only when the
   * VM should run and its restart policy restarts it.
   */
  async restore(): Promise<void> {
    const file = path.join(this.vmDir, DESIRED_FILE);
    const parsed = AgentVmCommand.safeParse(await readJsonFile(file));
    if (!parsed.success) throw new Error(`${file} is missing or invalid`);
    const cmd = parsed.data;
    this.command = cmd;
    this.applied = cmd.generation;
    const record = (await readJsonFile(path.join(this.vmDir, RUN_FILE))) as RunRecord | null;
    let handle: VmHandle | null = null;
    if (record) {
      this.vmm = record.kind;
      let problem: string | null = null;
      const driver = this.deps.drivers.get(record.kind);
      try {
        if (!driver) throw new Error(`this agent has no ${record.kind} driver`);
        handle = await driver.adopt(record);
      } catch (err) {
        problem = errorMessage(err);
      }
      if (problem !== null && (await isSameProcessRunning(record.pid, record.pidStartTime))) {
        // It runs but cannot be controlled: booting another VMM on the same disk would run the VM twice.
        this.orphan = record;
        this.deps.log.error({ vmId: this.id, pid: record.pid, err: problem }, 'cannot adopt a running VMM');
        this.setState('failed', `VMM pid ${record.pid} runs but cannot be adopted: ${problem}`);
        return;
      }
    }
    if (handle) {
      this.deps.log.info({ vmId: this.id, pid: handle.record.pid }, 'adopted VM');
      await this.attach(handle, cmd.desired === 'paused' ? 'paused' : 'running');
      if (cmd.desired === 'stopped') void this.enqueue(() => this.enact(cmd, false));
      return;
    }
    if (record) await this.forgetRun();
    if (cmd.desired === 'running' && cmd.spec.restart_policy !== 'never') {
      this.deps.log.info({ vmId: this.id }, 'VMM gone while the agent was down; booting it again');
      this.setState('starting', null);
      void this.enqueue(() => this.boot(cmd));
    } else {
      this.setState('stopped', null);
    }
  }

  /** Stops the VMM (forced) and removes everything of the VM from the host. */
  async destroy(): Promise<void> {
    this.deleting = true;
    this.cancelRestart();
    this.bootAbort?.abort(new Error('VM deleted'));
    await this.enqueue(async () => {
      if (this.handle && !(await this.stopVmm({ graceful: false, timeoutMs: FORCED_STOP_TIMEOUT_MS }))) {
        throw new Error(this.error ?? 'cannot stop the VMM');
      }
      if (!(await this.killOrphan())) throw new Error(this.error ?? 'cannot stop the VMM');
      await this.console?.close();
      await this.persisting;
      await rm(this.vmDir, { recursive: true, force: true });
    });
  }

  /** Lets go of the VM without stopping it (the agent is exiting). Waits up to `waitMs` for work in flight. */
  async release(waitMs: number): Promise<void> {
    this.closing = true;
    this.cancelRestart();
    const timeout = new AbortController();
    await Promise.race([this.work, sleep(waitMs, undefined, { signal: timeout.signal }).catch(() => {})]);
    timeout.abort();
    const h = this.handle;
    this.handle = null;
    if (h) await this.releaseHandle(h);
    await this.console?.close();
  }

  private enqueue(fn: () => Promise<void>): Promise<void> {
    const next = this.work.then(fn);
    this.work = next.catch((err: unknown) => {
      this.deps.log.error({ vmId: this.id, err }, 'VM work failed');
    });
    return next;
  }

  private setState(state: AgentVmState, error: string | null): void {
    const message = error === null ? null : truncateError(error);
    if (this.state === state && this.error === message) return;
    this.state = state;
    this.error = message;
    this.deps.onChange();
  }

  /** The state a newly accepted command leads to, shown at once (the work follows). */
  private showIntent(cmd: AgentVmCommand): void {
    const live = this.handle !== null || this.bootAbort !== null;
    let next = this.state;
    if (cmd.desired === 'stopped') next = live ? 'stopping' : 'stopped';
    else if (!live || cmd.reboot) next = 'starting';
    else if (cmd.desired === 'paused' && this.state === 'running') next = 'pausing';
    // A resume shows a transition too, so an acknowledgement never reads as the old state.
    else if (cmd.desired === 'running' && this.state === 'paused') next = 'starting';
    this.setState(next, null);
  }

  persistDesired(): Promise<void> {
    const next = this.persisting.then(async () => {
      if (this.deleting || !this.command) return;
      await writeJsonAtomic(path.join(this.vmDir, DESIRED_FILE), this.command);
    });
    this.persisting = next.catch(() => {});
    return next;
  }

  private async converge(): Promise<void> {
    while (!this.deleting && !this.closing && this.command && this.command.generation > this.applied) {
      const cmd = this.command;
      this.applied = cmd.generation;
      await this.enact(cmd, cmd.reboot);
    }
  }

  private async enact(cmd: AgentVmCommand, reboot: boolean): Promise<void> {
    if (!(await this.killOrphan())) return;
    if (
      reboot &&
      this.handle &&
      !(await this.stopVmm({ graceful: false, timeoutMs: FORCED_STOP_TIMEOUT_MS }))
    ) {
      return;
    }
    switch (cmd.desired) {
      case 'running':
        if (!this.handle) await this.boot(cmd);
        else if (this.vmmPaused) await this.resume();
        return;
      case 'paused':
        if (!this.handle) await this.boot(cmd);
        if (this.handle && !this.vmmPaused) await this.pause();
        return;
      case 'stopped':
        if (this.handle) {
          await this.stopVmm({ graceful: !cmd.stop.force, timeoutMs: cmd.stop.timeout_s * 1000 });
        } else {
          this.setState('stopped', null);
        }
        return;
    }
  }

  private async boot(cmd: AgentVmCommand): Promise<void> {
    if (this.deleting || this.closing) return;
    const abort = new AbortController();
    this.bootAbort = abort;
    this.setState('starting', null);
    try {
      const { handle } = await bootVm({
        id: this.id,
        vmDir: this.vmDir,
        command: cmd,
        drivers: this.deps.drivers,
        persistDesired: () => this.persistDesired(),
        signal: abort.signal,
      });
      await this.attach(handle, 'running');
    } catch (err) {
      if (abort.signal.aborted) {
        if (!this.deleting) this.setState('stopped', null);
        return;
      }
      this.deps.log.warn({ vmId: this.id, err: errorMessage(err) }, 'boot failed');
      this.setState('failed', errorMessage(err));
    } finally {
      this.bootAbort = null;
    }
  }

  private async attach(handle: VmHandle, state: 'running' | 'paused'): Promise<void> {
    this.handle = handle;
    this.vmmPaused = state === 'paused';
    this.vmm = handle.record.kind;
    this.startedAt = Date.now();
    void handle.exited.then((exit) => this.onExit(handle, exit));
    this.setState(state, null);
    await this.console?.close();
    this.console = await this.deps.openConsole(handle).catch((err: unknown) => {
      this.deps.log.warn({ vmId: this.id, err }, 'cannot open the console');
      return null;
    });
    if (this.closing && this.handle === handle) {
      this.handle = null;
      await this.releaseHandle(handle);
    }
  }

  /** An exit the manager did not ask for: report it at once, then apply the restart policy. */
  private onExit(handle: VmHandle, exit: VmExit): void {
    if (this.handle !== handle || this.stopRequested.has(handle)) return;
    this.handle = null;
    const crashed = exit.reason !== 'shutdown';
    const detail =
      exit.message ??
      `VMM exited with ${exit.signal ? `signal ${exit.signal}` : `code ${exit.code ?? 'unknown'}`}`;
    this.deps.log.info({ vmId: this.id, exit }, crashed ? 'VM crashed' : 'VM powered off');
    this.setState(crashed ? 'failed' : 'stopped', crashed ? detail : null);
    void this.enqueue(() => this.forgetRun());
    const cmd = this.command;
    const policy = cmd?.spec.restart_policy ?? 'never';
    const restart = policy === 'always' || (policy === 'on-failure' && crashed);
    if (cmd && cmd.desired !== 'stopped' && restart && !this.deleting && !this.closing)
      this.scheduleRestart();
  }

  private scheduleRestart(): void {
    const { minMs, maxMs, stableMs } = this.deps.backoff;
    if (Date.now() - this.startedAt >= stableMs) this.restartDelayMs = minMs;
    const delay = this.restartDelayMs;
    this.restartDelayMs = Math.min(delay * 2, maxMs);
    this.deps.log.info({ vmId: this.id, delayMs: delay }, 'restarting VM per its restart policy');
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      void this.enqueue(() => this.restart());
    }, delay);
    this.restartTimer.unref();
  }

  private cancelRestart(): void {
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = null;
  }

  private async restart(): Promise<void> {
    const cmd = this.command;
    if (!cmd || cmd.desired === 'stopped' || this.handle || this.deleting || this.closing) return;
    await this.boot(cmd);
    if (cmd.desired === 'paused' && this.handle) await this.pause();
  }

  /** Stops the VMM; false (and state failed) when the driver could not. */
  private async stopVmm(opts: ShutdownOptions): Promise<boolean> {
    const handle = this.handle;
    if (!handle) return true;
    this.stopRequested.add(handle);
    this.setState('stopping', null);
    try {
      const { graceful } = await this.driverOf(handle).shutdown(handle, opts);
      this.deps.log.info({ vmId: this.id, graceful }, 'VM stopped');
    } catch (err) {
      this.stopRequested.delete(handle);
      this.setState('failed', `stop failed: ${errorMessage(err)}`);
      return false;
    }
    if (this.handle === handle) this.handle = null;
    await this.forgetRun();
    this.setState('stopped', null);
    return true;
  }

  private async pause(): Promise<void> {
    const handle = this.handle;
    if (!handle) return;
    this.setState('pausing', null);
    try {
      await this.driverOf(handle).pause(handle);
      this.vmmPaused = true;
      if (this.handle === handle) this.setState('paused', null);
    } catch (err) {
      if (this.handle === handle) this.setState('running', `pause failed: ${errorMessage(err)}`);
    }
  }

  private async resume(): Promise<void> {
    const handle = this.handle;
    if (!handle) return;
    try {
      await this.driverOf(handle).resume(handle);
      this.vmmPaused = false;
      if (this.handle === handle) this.setState('running', null);
    } catch (err) {
      if (this.handle === handle) this.setState('paused', `resume failed: ${errorMessage(err)}`);
    }
  }

  /**
   * A new command for a VM whose VMM could not be adopted ends that VMM first (SIGKILL, as a
   * forced stop would); false (state failed) when it will not go.
   */
  private async killOrphan(): Promise<boolean> {
    const orphan = this.orphan;
    if (!orphan) return true;
    if (await isSameProcessRunning(orphan.pid, orphan.pidStartTime)) {
      try {
        process.kill(orphan.pid, 'SIGKILL');
      } catch {
        // Gone meanwhile.
      }
      const deadline = Date.now() + FORCED_STOP_TIMEOUT_MS;
      while (await isSameProcessRunning(orphan.pid, orphan.pidStartTime)) {
        if (Date.now() > deadline) {
          this.setState('failed', `VMM pid ${orphan.pid} survived SIGKILL`);
          return false;
        }
        await sleep(50);
      }
    }
    this.orphan = null;
    await this.forgetRun();
    this.setState('stopped', null);
    return true;
  }

  private driverOf(handle: VmHandle): VmmDriver {
    const driver = this.deps.drivers.get(handle.record.kind);
    if (!driver) throw new Error(`no ${handle.record.kind} driver in this agent`);
    return driver;
  }

  private async releaseHandle(handle: VmHandle): Promise<void> {
    try {
      await this.deps.drivers.release(handle.record.kind, handle);
    } catch (err) {
      this.deps.log.warn({ vmId: this.id, err }, 'cannot release the VMM');
    }
  }

  private forgetRun(): Promise<void> {
    return rm(path.join(this.vmDir, RUN_FILE), { force: true });
  }
}
