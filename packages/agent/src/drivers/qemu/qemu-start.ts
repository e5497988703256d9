import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import { access, mkdir, readFile, rm, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { NqvmError } from '@nqvm/api/errors';
import type { ConsoleHub } from '../../console/console-hub';
import { receivedLogPath } from '../../console/console-log';
import { readProcStartTime } from '../../host/proc';
import { inNetns } from '../../network/host-runner';
import { type PipelineStep, runPipeline } from '../pipeline';
import type { RunRecord, VmSpec } from '../types';
import { buildQemuArgs, checkSpec, type QemuAccel, type QemuVmPaths, qemuVmPaths } from './qemu-args';
import { QemuVm } from './qemu-vm';
import { QmpClient } from './qmp';

export interface QemuStartOptions {
  spec: VmSpec;
  /** Restore: the state file to load (`-incoming`); the VM is resumed once the console is held. */
  incomingStatePath?: string;
  /** Runs inside validate-spec: the binary and accelerator to use (may probe KVM). */
  resolveAccel: () => Promise<{ binary: string; accel: QemuAccel }>;
  tscKhz?: number;
  tcgTbSizeMib?: number;
  startTimeoutMs: number;
  qmpCommandTimeoutMs: number;
  newConsoleHub: (socketPath: string, logPath: string) => ConsoleHub;
  /** Network namespace to start QEMU in (nsenter execs it: the pid stays QEMU's). */
  netns?: string;
  /** Puts the spawned QEMU in the VM's cgroup (its limits), before the guest runs for long. */
  limit?: (pid: number) => Promise<void>;
  logger?: { debug(obj: object, msg?: string): void };
}

/**
 * Starts one QEMU VM as a named pipeline: validate-spec, prepare-dir, spawn-vmm, connect-qmp,
 * [load-state], attach-console, [resume-vm]. A failing step undoes the ones before it, so no
 * process, socket or file of this start is left behind.
 *
 * @example
 * const vm = await startQemuVm({ spec, resolveAccel, startTimeoutMs: 10_000, ... });
 */
export async function startQemuVm(opts: QemuStartOptions, signal?: AbortSignal): Promise<QemuVm> {
  const start = new QemuStart(opts);
  const steps = await runPipeline(start.steps(), signal);
  const vm = start.handle();
  vm.bootSteps = steps;
  return vm;
}

class QemuStart {
  private readonly paths: QemuVmPaths;
  private binary = '';
  private accel: QemuAccel = 'tcg';
  private createdDir = false;
  private createdLog = false;
  private child: ChildProcess | null = null;
  private childExit: Promise<void> = Promise.resolve();
  private pidStartTime = 0;
  private qmp: QmpClient | null = null;
  private hub: ConsoleHub | null = null;

  constructor(private readonly o: QemuStartOptions) {
    this.paths = qemuVmPaths(o.spec.vmDir);
  }

  steps(): PipelineStep[] {
    const restoring = this.o.incomingStatePath !== undefined;
    return [
      { name: 'validate-spec', run: () => this.validateSpec() },
      { name: 'prepare-dir', run: () => this.prepareDir(), undo: () => this.removeDirContents() },
      { name: 'spawn-vmm', run: () => this.spawnVmm(), undo: () => this.killVmm() },
      { name: 'connect-qmp', run: () => this.connectQmp(), undo: () => this.qmp?.close() },
      ...(restoring ? [{ name: 'load-state', run: () => this.loadState() }] : []),
      { name: 'attach-console', run: () => this.attachConsole(), undo: () => this.hub?.close() },
      ...(restoring ? [{ name: 'resume-vm', run: () => this.resumeVm() }] : []),
    ];
  }

  handle(): QemuVm {
    const { spec } = this.o;
    const pid = this.child?.pid;
    if (!this.child || pid === undefined || !this.qmp || !this.hub)
      throw new Error('QEMU start did not finish');
    const record: RunRecord = {
      vmId: spec.id,
      generation: spec.generation,
      kind: 'qemu',
      pid,
      pidStartTime: this.pidStartTime,
      vmDir: spec.vmDir,
      controlSocket: this.paths.qmpSocket,
      consoleSocket: this.paths.consoleSocket,
      extra: {
        accel: this.accel,
        consoleLog: this.paths.consoleLog,
        pidFile: this.paths.pidFile,
        // What a snapshot copies while the guest is paused (its disks are not in the saved state).
        disks: spec.disks
          .filter((d) => !d.readOnly)
          .map((d) => ({ id: d.id, path: d.path, format: d.format })),
      },
    };
    return new QemuVm(record, this.qmp, this.hub, this.child);
  }

  private async validateSpec(): Promise<void> {
    const { spec, incomingStatePath } = this.o;
    const problems = checkSpec(spec);
    if (problems.length > 0)
      throw new NqvmError('VALIDATION_FAILED', `invalid VM spec: ${problems.join('; ')}`, { problems });
    const files = [
      spec.kernelPath,
      ...(spec.initrdPath ? [spec.initrdPath] : []),
      ...spec.disks.map((d) => d.path),
    ];
    if (incomingStatePath) files.push(incomingStatePath);
    for (const f of files) await access(f, constants.R_OK);
    ({ binary: this.binary, accel: this.accel } = await this.o.resolveAccel());
  }

  private async prepareDir(): Promise<void> {
    const { vmDir } = this.o.spec;
    this.createdDir = !(await exists(vmDir));
    await mkdir(vmDir, { recursive: true, mode: 0o700 });
    this.createdLog = !(await exists(this.paths.consoleLog));
    // Leftovers of a VMM that died without cleaning up would make QEMU fail to bind.
    await Promise.all(this.runtimeFiles().map((p) => rm(p, { force: true })));
  }

  private async removeDirContents(): Promise<void> {
    if (this.createdDir) {
      await rm(this.o.spec.vmDir, { recursive: true, force: true });
      return;
    }
    const ours = [
      ...this.runtimeFiles(),
      this.paths.vmmLog,
      ...(this.createdLog ? [this.paths.consoleLog, receivedLogPath(this.paths.consoleLog)] : []),
    ];
    await Promise.all(ours.map((p) => rm(p, { force: true })));
  }

  private runtimeFiles(): string[] {
    const p = this.paths;
    return [p.qmpSocket, p.consoleSocket, p.pidFile, p.agentSocket];
  }

  private async spawnVmm(): Promise<void> {
    const { spec, incomingStatePath, startTimeoutMs } = this.o;
    const args = buildQemuArgs({
      spec,
      accel: this.accel,
      tscKhz: this.o.tscKhz,
      tcgTbSizeMib: this.o.tcgTbSizeMib,
      incomingStatePath,
    });
    this.o.logger?.debug({ vmId: spec.id, binary: this.binary, args }, 'starting QEMU');
    const [cmd, ...argv] = inNetns(this.o.netns, this.binary, args) as [string, ...string[]];
    const logFd = openSync(this.paths.vmmLog, 'w', 0o600);
    let proc: ChildProcess;
    try {
      // Own session, no pipes to the agent: the VMM outlives the agent, even a kill -9 of its group.
      proc = spawn(cmd, argv, { detached: true, stdio: ['ignore', logFd, logFd] });
    } finally {
      closeSync(logFd);
    }
    this.child = proc;
    proc.unref();
    let spawnError: Error | null = null;
    this.childExit = new Promise((resolve) => {
      proc.once('exit', () => resolve());
      proc.once('error', (err) => {
        spawnError = err;
        resolve();
      });
    });
    if (this.o.limit && proc.pid !== undefined) {
      try {
        await this.o.limit(proc.pid);
      } catch (err) {
        throw new Error(`cannot put QEMU in the VM's cgroup: ${(err as Error).message}`);
      }
    }
    const deadline = Date.now() + startTimeoutMs;
    while (!((await exists(this.paths.pidFile)) && (await exists(this.paths.qmpSocket)))) {
      if (spawnError) throw new Error(`cannot run ${this.binary}: ${(spawnError as Error).message}`);
      if (this.exited()) throw await this.vmmFailure('QEMU exited at start');
      if (Date.now() > deadline) throw await this.vmmFailure(`QEMU not up within ${startTimeoutMs} ms`);
      await sleep(2);
    }
    const started = proc.pid !== undefined ? await readProcStartTime(proc.pid) : null;
    if (started === null) throw await this.vmmFailure('QEMU exited at start');
    this.pidStartTime = started;
  }

  private async killVmm(): Promise<void> {
    if (!this.child || this.exited()) return;
    this.child.kill('SIGKILL');
    await Promise.race([this.childExit, sleep(5_000)]);
  }

  private async connectQmp(): Promise<void> {
    const deadline = Date.now() + this.o.startTimeoutMs;
    try {
      for (;;) {
        try {
          this.qmp = await QmpClient.connect(this.paths.qmpSocket, {
            timeoutMs: this.o.startTimeoutMs,
            commandTimeoutMs: this.o.qmpCommandTimeoutMs,
          });
          break;
        } catch (err) {
          // The socket file exists from bind(); QEMU may not listen on it yet, on a busy host.
          if (!/ECONNREFUSED|ENOENT/.test((err as Error).message) || Date.now() > deadline || this.exited())
            throw err;
          await sleep(2);
        }
      }
      await this.qmp.execute('query-status');
    } catch (err) {
      // QEMU creates the socket before it loads the kernel; a kernel it rejects ends it here.
      await Promise.race([this.childExit, sleep(1_000)]);
      if (this.exited()) throw await this.vmmFailure('QEMU exited at start');
      throw err;
    }
  }

  private async loadState(): Promise<void> {
    if (!this.qmp) throw new Error('no QMP connection');
    await waitForMigration(this.qmp, 10 * 60_000);
  }

  private async attachConsole(): Promise<void> {
    this.hub = this.o.newConsoleHub(this.paths.consoleSocket, this.paths.consoleLog);
    await this.hub.attach({ timeoutMs: this.o.startTimeoutMs, freshVmm: true });
  }

  private async resumeVm(): Promise<void> {
    await this.qmp?.execute('cont');
  }

  private exited(): boolean {
    return this.child !== null && (this.child.exitCode !== null || this.child.signalCode !== null);
  }

  /** QEMU's own last words (its stderr), for the error. */
  private async vmmFailure(what: string): Promise<Error> {
    const log = await readFile(this.paths.vmmLog, 'utf8').catch(() => '');
    const c = this.child;
    const status = c?.signalCode
      ? `signal ${c.signalCode}`
      : c?.exitCode != null
        ? `code ${c.exitCode}`
        : 'running';
    const words = log.trim().split('\n').slice(-3).join(' | ') || 'no output';
    return new Error(`${what} (${status}): ${words}`);
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Polls `query-migrate` until the (outgoing or incoming) migration completes. */
export async function waitForMigration(qmp: QmpClient, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
    if (info.status === 'completed') return;
    if (info.status === 'failed' || info.status === 'cancelled') {
      throw new Error(`migration ${info.status}: ${info['error-desc'] ?? 'no detail'}`);
    }
    if (Date.now() > deadline) throw new Error(`migration not done within ${timeoutMs} ms`);
    await sleep(20);
  }
}
