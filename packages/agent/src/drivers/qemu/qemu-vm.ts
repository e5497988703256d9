import type { ChildProcess } from 'node:child_process';
import { rm, statfs } from 'node:fs/promises';
import { dirname } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ConsoleHub } from '../../console/console-hub';
import { isSameProcessRunning } from '../../host/proc';
import type { RunRecord, StepTiming, VmExit, VmHandle, VmmPauseEvent } from '../types';
import { driveId, qemuVmPaths } from './qemu-args';
import type { QmpClient, QmpEvent } from './qmp';

/** How often an adopted VMM's pid is checked; QMP closing triggers an immediate check. */
const PID_POLL_MS = 500;
/** While the guest is paused for a full disk, the free space under its disks is checked this often. */
const SPACE_POLL_MS = 2_000;
/**
 * A guest paused for a full disk is resumed once the file system of each of its disks has this
 * much free: with less, its next writes would fill it and pause it again at once.
 */
export const RESUME_FREE_BYTES = 64 * 1024 * 1024;

/** A writable disk of a running QEMU VM, as its run record keeps it (`extra.disks`). */
export interface RecordedDisk {
  id: string;
  path: string;
  format: 'raw' | 'qcow2';
}

/** Why QEMU paused the guest by itself: a disk write failed (werror=stop). */
interface SelfPause {
  reason: string;
  /** The host's file system is full: the guest resumes once it has room again. */
  nospace: boolean;
  /** The folders of the disks whose writes failed: their file systems are watched for room. */
  dirs: string[];
}

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
  private selfPause: SelfPause | null = null;
  /** The `reason` of the last BLOCK_IO_ERROR that paused the guest ("No space left on device"). */
  private ioErrorReason: string | null = null;
  /** Counts RESUME events: a pause found by a query that a resume overtook is stale. */
  private resumes = 0;
  private resumingForSpace = false;
  private spaceTimer: NodeJS.Timeout | null = null;
  private readonly pauseListeners = new Set<(event: VmmPauseEvent) => void>();
  /** Set by the start that spawned this QEMU: its steps' durations. */
  bootSteps: readonly StepTiming[] = [];

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
      else if (event.event === 'BLOCK_IO_ERROR' && event.data?.action === 'stop')
        this.ioErrorReason = typeof event.data.reason === 'string' ? event.data.reason : null;
      // STOP follows a BLOCK_IO_ERROR that stops, and our own `stop`: the run state tells them apart.
      else if (event.event === 'STOP') void this.checkSelfPause();
      else if (event.event === 'RESUME') this.onResume();
    });
    // An adopted VM may have been paused by a disk error while no agent listened.
    void this.checkSelfPause();
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

  onVmmPause(listener: (event: VmmPauseEvent) => void): () => void {
    this.pauseListeners.add(listener);
    if (this.selfPause) listener({ kind: 'paused', reason: this.selfPause.reason });
    return () => this.pauseListeners.delete(listener);
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
    this.stopSpaceWatch();
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
    this.stopSpaceWatch();
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

  /** Whether QEMU paused the guest for a failed disk write (run state io-error), and which disks. */
  private async checkSelfPause(): Promise<void> {
    if (this.selfPause || this.gone || this.released || !this.qmp.isOpen) return;
    const resumes = this.resumes;
    try {
      const { status } = await this.qmp.execute<{ status: string }>('query-status');
      if (status !== 'io-error') return;
      const blocks = await this.qmp.execute<Array<{ device: string; 'io-status'?: string }>>('query-block');
      if (this.resumes !== resumes || this.selfPause) return;
      const disks = (this.record.extra?.disks ?? []) as RecordedDisk[];
      const failed = blocks.filter((b) => b['io-status'] === 'nospace' || b['io-status'] === 'failed');
      const nospace = failed.some((b) => b['io-status'] === 'nospace');
      const named = disks.filter((d) => failed.some((b) => b.device === driveId(d.id)));
      const which = named.length ? named.map((d) => d.id).join(', ') : 'a disk';
      const reason = nospace
        ? `the host's disk is full: the guest is paused until space is freed (${which} could not be written)`
        : `${which} could not be written (${this.ioErrorReason ?? 'I/O error'}): the guest is paused; resume it to retry the write`;
      const files = (named.length ? named : disks).map((d) => d.path);
      this.selfPause = {
        reason,
        nospace,
        dirs: files.length ? files.map((f) => dirname(f)) : [this.record.vmDir],
      };
      this.tell({ kind: 'paused', reason });
      if (nospace) this.watchSpace();
    } catch {
      // QMP went away: the exit watch reports what happened.
    }
  }

  private onResume(): void {
    this.resumes++;
    if (!this.selfPause) return;
    this.selfPause = null;
    this.stopSpaceWatch();
    const note = this.resumingForSpace
      ? "resumed by itself: the host's disk has space again (the guest was paused while it was full)"
      : null;
    this.resumingForSpace = false;
    this.tell({ kind: 'resumed', note });
  }

  /** Resumes the guest once the file systems of its full disks have room again (QEMU retries the writes). */
  private watchSpace(): void {
    this.stopSpaceWatch();
    this.spaceTimer = setTimeout(async () => {
      this.spaceTimer = null;
      const pause = this.selfPause;
      if (!pause?.nospace || this.gone || this.released) return;
      if ((await freeBytes(pause.dirs)) >= RESUME_FREE_BYTES && this.selfPause === pause) {
        this.resumingForSpace = true;
        const resumed = await this.qmp.execute('cont').then(
          () => true,
          () => false,
        );
        if (resumed) return;
        this.resumingForSpace = false;
      }
      if (this.selfPause === pause) this.watchSpace();
    }, SPACE_POLL_MS);
    this.spaceTimer.unref();
  }

  private stopSpaceWatch(): void {
    if (this.spaceTimer) clearTimeout(this.spaceTimer);
    this.spaceTimer = null;
  }

  private tell(event: VmmPauseEvent): void {
    for (const listener of [...this.pauseListeners]) {
      try {
        listener(event);
      } catch {
        // One listener's bug must not hide the pause from the others.
      }
    }
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

/**
 * The least free space among the file systems of `dirs` (0 when one cannot be read). QEMU runs
 * as the agent's user: as root it may fill the blocks reserved for root too.
 */
async function freeBytes(dirs: string[]): Promise<number> {
  const root = process.getuid?.() === 0;
  let least = Number.POSITIVE_INFINITY;
  for (const dir of dirs) {
    const fs = await statfs(dir).catch(() => null);
    least = Math.min(least, fs ? Number(root ? fs.bfree : fs.bavail) * Number(fs.bsize) : 0);
  }
  return least;
}
