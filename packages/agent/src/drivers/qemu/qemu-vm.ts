import type { ChildProcess } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ConsoleHub } from '../../console/console-hub';
import { isSameProcessRunning } from '../../host/proc';
import type { RunRecord, VmExit, VmHandle } from '../types';
import { qemuVmPaths } from './qemu-args';
import type { QmpClient, QmpEvent } from './qmp';

/** How often an adopted VMM's pid is checked; QMP closing triggers an immediate check. */
const PID_POLL_MS = 500;

/**
 * A running QEMU VM as the driver holds it: the run record, the QMP connection, the console
 * hub, and the watch that resolves `exited` once the process is gone.
 */
export class QemuVm implements VmHandle {
  readonly exited: Promise<VmExit>;
  /** The reason of QEMU's SHUTDOWN event (e.g. "guest-shutdown", "host-qmp-quit"), once seen. */
  private shutdownReason: string | null = null;
  private killedByUs = false;
  private released = false;
  private gone = false;
  private pollTimer: NodeJS.Timeout | null = null;
  private resolveExit!: (exit: VmExit) => void;
  private finishing = false;

  constructor(
    readonly record: RunRecord,
    readonly qmp: QmpClient,
    readonly console: ConsoleHub,
    /** Present when this agent spawned the VMM (not adopted): gives its exit code and signal. */
    private readonly child?: ChildProcess,
  ) {
    this.exited = new Promise((resolve) => {
      this.resolveExit = resolve;
    });
    qmp.onEvent((event: QmpEvent) => {
      if (event.event === 'SHUTDOWN') this.shutdownReason = String(event.data?.reason ?? 'unknown');
    });
    if (child) {
      if (child.exitCode !== null || child.signalCode !== null) {
        void this.finish(child.exitCode, child.signalCode);
      } else {
        child.once('exit', (code, signal) => void this.finish(code, signal));
      }
    } else {
      // Not our child: no exit status. QMP closes the moment QEMU dies; the poll is the backstop.
      void qmp.closed.then(() => this.checkPid());
      this.schedulePoll();
    }
  }

  /** True once the VMM process is known to be gone. */
  get isGone(): boolean {
    return this.gone;
  }

  /** Waits up to `ms` for the process to end; true when it did. */
  async waitExit(ms: number): Promise<boolean> {
    if (this.gone) return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), ms);
    });
    const done = await Promise.race([this.exited.then(() => true as const), timeout]);
    clearTimeout(timer);
    return done;
  }

  /** SIGKILLs the VMM, unless its pid now names another process. */
  async kill(): Promise<void> {
    if (this.gone) return;
    if (!(await isSameProcessRunning(this.record.pid, this.record.pidStartTime))) return;
    this.killedByUs = true;
    try {
      process.kill(this.record.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
    if (!this.child) void this.checkPid();
  }

  /** Stops watching and disconnects, leaving the VMM running (the agent is going away). */
  async release(): Promise<void> {
    this.released = true;
    if (this.pollTimer) clearTimeout(this.pollTimer);
    this.child?.removeAllListeners('exit');
    this.qmp.close();
    await this.console.close();
  }

  private schedulePoll(): void {
    if (this.gone || this.released) return;
    this.pollTimer = setTimeout(() => {
      void this.checkPid().then(() => this.schedulePoll());
    }, PID_POLL_MS);
    this.pollTimer.unref();
  }

  private async checkPid(): Promise<void> {
    if (this.gone || this.released) return;
    // A process that just closed its sockets may take a moment to be reaped by its parent.
    for (let i = 0; i < 40; i++) {
      if (!(await isSameProcessRunning(this.record.pid, this.record.pidStartTime))) {
        await this.finish(null, null);
        return;
      }
      if (this.qmp.isOpen) return;
      await sleep(50);
    }
  }

  private async finish(code: number | null, signal: NodeJS.Signals | null): Promise<void> {
    if (this.finishing || this.released) return;
    this.finishing = true;
    // Let QMP deliver what QEMU said before dying (its SHUTDOWN event), then decide.
    await Promise.race([this.qmp.closed, sleep(500)]);
    this.gone = true;
    if (this.pollTimer) clearTimeout(this.pollTimer);
    this.qmp.close();
    await this.console.close();
    const paths = qemuVmPaths(this.record.vmDir);
    await Promise.all(
      [paths.qmpSocket, paths.consoleSocket, paths.pidFile, paths.agentSocket].map((p) =>
        rm(p, { force: true }),
      ),
    );
    this.resolveExit(this.describeExit(code, signal));
  }

  private describeExit(code: number | null, signal: NodeJS.Signals | null): VmExit {
    if (this.shutdownReason !== null || (code === 0 && signal === null)) {
      return { reason: 'shutdown', code, signal, message: this.shutdownReason ?? 'exited with code 0' };
    }
    if (this.killedByUs)
      return { reason: 'killed', code, signal, message: 'killed by the agent after a stop' };
    const how = signal ? `signal ${signal}` : code !== null ? `code ${code}` : 'an unknown status';
    return { reason: 'crashed', code, signal, message: `QEMU ended without a shutdown, with ${how}` };
  }
}
