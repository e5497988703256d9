import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { access, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { delimiter, dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { NqvmError } from '@nqvm/api/errors';
import { ConsoleHub } from '../../console/console-hub';
import { type CgroupLimits, detectCgroups, VmCgroups } from '../../host/cgroups';
import { cloneFile } from '../../host/disk-tools';
import { readProcStartTime } from '../../host/proc';
import type {
  DiskUsage,
  DriverInfo,
  RunRecord,
  ShutdownOptions,
  SnapshotFiles,
  VmHandle,
  VmmDriver,
  VmSpec,
} from '../types';
import { parseBlockStats } from './block-stats';
import { probeKvm } from './kvm-probe';
import { migrateToFileUri, type QemuAccel, qemuVmPaths } from './qemu-args';
import { startQemuVm, waitForMigration } from './qemu-start';
import { QemuVm, type RecordedDisk } from './qemu-vm';
import { QmpClient, QmpError } from './qmp';

/** pino-compatible subset, so the agent's logger (or Fastify's) plugs in as is. */
export interface DriverLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

export interface QemuDriverOptions {
  /** The QEMU binary: a path, or a name looked up in PATH. Default `qemu-system-x86_64`. */
  qemuBinary?: string;
  /** `auto` uses KVM when the probe shows it runs an ordinary guest, TCG otherwise. Default `auto`. */
  accel?: 'auto' | QemuAccel;
  /** Host TSC frequency for `tsc_early_khz` under TCG. Default: `cpu MHz` of /proc/cpuinfo. */
  tscKhz?: number;
  /** TCG translation cache size in MiB (QEMU's default is 1 GiB, which costs RSS as it fills). */
  tcgTbSizeMib?: number;
  /** Deadline of the KVM probe. Default 2 s. */
  kvmProbeTimeoutMs?: number;
  /** Deadline for QEMU to come up (pid file, QMP greeting, console). Default 10 s. */
  startTimeoutMs?: number;
  /** Options of each VM's console hub. */
  console?: { bufferBytes?: number; maxLogBytes?: number };
  /**
   * Network namespace (a name under /run/netns) QEMU runs in, so it opens the TAPs made there:
   * tests. Default: the agent's own.
   */
  netns?: string;
  /**
   * Each VM's QEMU runs in its own cgroup with the VM's limits (CPU: its vCPUs; memory: its
   * memory plus `memoryOverheadMib`, plus the TCG translation cache under TCG). `detect`: in
   * this host's cgroups (v1 or v2) when it has them; null: none (the default).
   */
  cgroups?: VmCgroups | 'detect' | null;
  /** The VMM's own memory beside the guest's, in the cgroup limit. Default 160 MiB. */
  memoryOverheadMib?: number;
  logger?: DriverLogger;
}

/** QEMU's threads (vCPUs, I/O workers, the main loop) stay far below this. */
const QEMU_PIDS_MAX = 512;
const CPU_PERIOD_US = 100_000;

const QMP_COMMAND_TIMEOUT_MS = 10_000;
const SNAPSHOT_STATE_FILE = 'vmstate';
const SNAPSHOT_MANIFEST = 'qemu-snapshot.json';

type DiskFormat = RecordedDisk['format'];

/** What `snapshot()` writes beside the state file: copies of the writable disks, taken while paused. */
interface QemuSnapshotManifest {
  format: 'nqvm-qemu-snapshot/1';
  vmId: string;
  createdAt: string;
  disks: { id: string; file: string; format: DiskFormat }[];
}

/** How often a graceful stop presses the power button again while the guest has not taken it. */
const POWER_BUTTON_REPEAT_MS = 1_000;

export class QemuDriver implements VmmDriver {
  readonly kind = 'qemu' as const;
  private probed: Promise<DriverInfo> | null = null;
  private groups: Promise<VmCgroups | null> | null = null;
  private kvmReason = '';

  constructor(private readonly opts: QemuDriverOptions = {}) {}

  /**
   * Version, binary, and whether KVM runs an ordinary guest (probed once, then cached).
   *
   * @example
   * const info = await new QemuDriver().probe(); // { available: true, kvm: false, version: '7.2.22', ... }
   */
  probe(): Promise<DriverInfo> {
    this.probed ??= this.runProbe();
    return this.probed;
  }

  /** Why KVM is (not) used, from the probe: for the host report and logs. */
  get kvmProbeReason(): string {
    return this.kvmReason;
  }

  async boot(spec: VmSpec, signal?: AbortSignal): Promise<QemuVm> {
    return this.start(spec, undefined, signal);
  }

  async restore(spec: VmSpec, snap: SnapshotFiles): Promise<QemuVm> {
    if (snap.type !== 'Full') {
      throw new NqvmError('SNAPSHOT_TYPE_UNSUPPORTED', 'QEMU restores only Full snapshots', {
        type: snap.type,
      });
    }
    await restoreDisks(spec, dirname(snap.statePath));
    return this.start(spec, snap.statePath);
  }

  async pause(h: VmHandle): Promise<void> {
    await asQemuVm(h).qmp.execute('stop');
  }

  async resume(h: VmHandle): Promise<void> {
    await asQemuVm(h).qmp.execute('cont');
  }

  /** Bytes and requests each drive read and wrote since QEMU started (QMP `query-blockstats`). */
  async diskUsage(h: VmHandle): Promise<DiskUsage[]> {
    return parseBlockStats(
      await asQemuVm(h).qmp.execute('query-blockstats', undefined, { timeoutMs: 2_000 }),
    );
  }

  /**
   * Graceful: ACPI power button (`system_powerdown`), then a forced stop after `timeoutMs` (a
   * paused guest cannot react, so it ends forced). Forced: QMP `quit`, then SIGKILL when QEMU
   * does not answer or does not exit. Resolves once the process is gone.
   */
  async shutdown(h: VmHandle, opts: ShutdownOptions): Promise<{ graceful: boolean }> {
    const vm = asQemuVm(h);
    if (vm.isGone) return { graceful: (await vm.exited).reason === 'shutdown' };
    if (opts.graceful) {
      try {
        // A press the guest is not listening for yet (still booting: no ACPI button driver, no
        // acpid) is lost, so the button is pressed again until the guest takes it or time is up.
        const deadline = Date.now() + opts.timeoutMs;
        let exited = false;
        while (!exited && Date.now() < deadline) {
          // Refused once QEMU is on its way out (the guest took an earlier press): wait for that.
          const pressed = await vm.qmp.execute('system_powerdown').then(
            () => true,
            () => false,
          );
          const wait = pressed ? Math.min(POWER_BUTTON_REPEAT_MS, deadline - Date.now()) : 2_000;
          exited = await vm.waitExit(Math.max(0, wait));
          if (!pressed && !exited) throw new Error('QEMU refused the power button');
        }
        if (exited) {
          const exit = await vm.exited;
          return { graceful: exit.reason === 'shutdown' && exit.message === 'guest-shutdown' };
        }
        this.opts.logger?.info({ vmId: vm.record.vmId }, 'guest ignored the power button, stopping it');
      } catch (err) {
        this.opts.logger?.warn({ vmId: vm.record.vmId, err }, 'graceful shutdown failed, stopping the VM');
      }
    }
    await this.forceStop(vm);
    return { graceful: false };
  }

  /**
   * Saves the whole VM state (devices and memory) to `<dir>/vmstate` with QMP `migrate` and
   * copies the writable disks beside it at the same paused instant (QEMU has flushed them when
   * the migration completes): the disks are not part of the state. A running VM is paused for
   * the save and resumed after it.
   */
  async snapshot(h: VmHandle, dir: string, type: 'Full' | 'Diff'): Promise<SnapshotFiles> {
    if (type !== 'Full') {
      throw new NqvmError('SNAPSHOT_TYPE_UNSUPPORTED', 'QEMU takes only Full snapshots', { type });
    }
    const vm = asQemuVm(h);
    const disks = vm.record.extra?.disks as RecordedDisk[] | undefined;
    if (!disks) throw new Error('this VM was started by an older agent: stop and start it before a snapshot');
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const statePath = join(dir, SNAPSHOT_STATE_FILE);
    const { status } = await vm.qmp.execute<{ status: string }>('query-status');
    const wasRunning = status === 'running';
    if (wasRunning) await vm.qmp.execute('stop');
    const manifest: QemuSnapshotManifest = {
      format: 'nqvm-qemu-snapshot/1',
      vmId: vm.record.vmId,
      createdAt: new Date().toISOString(),
      disks: disks.map((d) => ({ id: d.id, file: `disk-${d.id}.${d.format}`, format: d.format })),
    };
    try {
      // Bytes per second; QEMU's default throttle (128 MiB/s) would only slow a local save down.
      await vm.qmp.execute('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 ** 3 });
      await vm.qmp.execute('migrate', { uri: migrateToFileUri(statePath) });
      await waitForMigration(vm.qmp, 10 * 60_000);
      for (const [i, d] of disks.entries()) await cloneFile(d.path, join(dir, manifest.disks[i]!.file));
      await writeFile(join(dir, SNAPSHOT_MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`, {
        mode: 0o600,
      });
    } catch (err) {
      await Promise.all(
        [statePath, SNAPSHOT_MANIFEST, ...manifest.disks.map((d) => d.file)].map((f) =>
          rm(join(dir, f), { force: true }),
        ),
      );
      throw err;
    } finally {
      if (wasRunning) await vm.qmp.execute('cont');
    }
    return { statePath, type: 'Full' };
  }

  async adopt(record: RunRecord): Promise<QemuVm | null> {
    if (record.kind !== 'qemu') return null;
    if ((await readProcStartTime(record.pid)) !== record.pidStartTime) return null;
    const qmp = await QmpClient.connect(record.controlSocket, {
      timeoutMs: 3_000,
      commandTimeoutMs: QMP_COMMAND_TIMEOUT_MS,
    }).catch(async (err: unknown) => {
      // The process may have died between the check and the connect.
      if ((await readProcStartTime(record.pid)) !== record.pidStartTime) return null;
      throw err;
    });
    if (!qmp) return null;
    const hub = this.consoleHub(record.consoleSocket, qemuVmPaths(record.vmDir).consoleLog);
    try {
      await hub.attach({ timeoutMs: 3_000 });
    } catch (err) {
      qmp.close();
      await hub.close();
      throw err;
    }
    this.opts.logger?.info({ vmId: record.vmId, pid: record.pid }, 'adopted running QEMU');
    const vm = new QemuVm(record, qmp, hub);
    this.forgetCgroupOnExit(vm);
    return vm;
  }

  /** The cgroup limits of a VM's QEMU: its vCPUs' worth of CPU, its memory plus the VMM's own. */
  cgroupLimits(spec: Pick<VmSpec, 'vcpu' | 'memMib'>, accel: QemuAccel): CgroupLimits {
    const tcgCache = accel === 'tcg' ? (this.opts.tcgTbSizeMib ?? 1024) : 0;
    const overhead = (this.opts.memoryOverheadMib ?? 160) + tcgCache;
    return {
      cpuQuotaUs: spec.vcpu * CPU_PERIOD_US,
      cpuPeriodUs: CPU_PERIOD_US,
      memoryBytes: (spec.memMib + overhead) * 1024 * 1024,
      pidsMax: QEMU_PIDS_MAX,
    };
  }

  /** The VM cgroups of this driver, detected once (null: VMMs run without limits). */
  cgroups(): Promise<VmCgroups | null> {
    const o = this.opts.cgroups;
    this.groups ??=
      o === 'detect'
        ? detectCgroups().then((layout) => {
            if (!layout)
              this.opts.logger?.warn({}, 'no usable cgroups: QEMU VMs run without CPU and memory limits');
            return layout ? new VmCgroups(layout) : null;
          })
        : Promise.resolve(o ?? null);
    return this.groups;
  }

  private async limit(spec: VmSpec, pid: number): Promise<void> {
    const groups = (await this.cgroups())!;
    await groups.create(spec.id, this.cgroupLimits(spec, (await this.resolveAccel()).accel));
    await groups.enter(spec.id, pid);
  }

  /** A VM's cgroup goes with its QEMU (it is made anew at the next start). */
  private forgetCgroupOnExit(vm: QemuVm): void {
    void vm.exited.then(async () => {
      const groups = await this.cgroups();
      await groups?.remove(vm.record.vmId).catch((err: unknown) => {
        this.opts.logger?.warn({ vmId: vm.record.vmId, err }, 'cannot remove the VM cgroup');
      });
    });
  }

  /**
   * Lets go of a VM without stopping it (agent shutdown or hand-over): closes QMP and the console
   * connection. The handle's `exited` never resolves afterwards; adopt the VM again to watch it.
   */
  async release(h: VmHandle): Promise<void> {
    await asQemuVm(h).release();
  }

  private async start(spec: VmSpec, incomingStatePath?: string, signal?: AbortSignal): Promise<QemuVm> {
    const vm = await startQemuVm(
      {
        spec,
        incomingStatePath,
        resolveAccel: () => this.resolveAccel(),
        tscKhz: this.opts.tscKhz ?? (await hostTscKhz()),
        tcgTbSizeMib: this.opts.tcgTbSizeMib,
        startTimeoutMs: this.opts.startTimeoutMs ?? 10_000,
        qmpCommandTimeoutMs: QMP_COMMAND_TIMEOUT_MS,
        newConsoleHub: (socketPath, logPath) => this.consoleHub(socketPath, logPath),
        netns: this.opts.netns,
        logger: this.opts.logger,
        ...((await this.cgroups()) ? { limit: (pid: number) => this.limit(spec, pid) } : {}),
      },
      signal,
    ).catch(async (err: unknown) => {
      await (await this.cgroups())?.remove(spec.id).catch(() => {});
      throw err;
    });
    this.forgetCgroupOnExit(vm);
    this.opts.logger?.info(
      { vmId: spec.id, pid: vm.record.pid, accel: vm.record.extra?.accel },
      incomingStatePath ? 'restored VM' : 'booted VM',
    );
    return vm;
  }

  private async forceStop(vm: QemuVm): Promise<void> {
    let quitting = true;
    try {
      await vm.qmp.execute('quit', undefined, { timeoutMs: 2_000 });
    } catch (err) {
      // QEMU may close the socket before answering `quit`; no answer at all means it is stuck.
      quitting = err instanceof QmpError && err.code === 'QMP_CLOSED';
    }
    if (quitting && (await vm.waitExit(2_000))) return;
    await vm.kill();
    if (!(await vm.waitExit(5_000))) {
      throw new Error(`QEMU pid ${vm.record.pid} of VM ${vm.record.vmId} survived SIGKILL`);
    }
  }

  private async runProbe(): Promise<DriverInfo> {
    const base: DriverInfo = {
      kind: 'qemu',
      available: false,
      version: null,
      binary: null,
      kvm: false,
      features: [],
    };
    const binary = await resolveBinary(this.opts.qemuBinary ?? 'qemu-system-x86_64');
    if (!binary) return { ...base, reason: `${this.opts.qemuBinary ?? 'qemu-system-x86_64'} not found` };
    let version: string | null = null;
    try {
      const { stdout } = await promisify(execFile)(binary, ['-version'], { timeout: 5_000 });
      version = /version (\d+\.\d+\.\d+)/.exec(stdout)?.[1] ?? null;
    } catch (err) {
      return { ...base, binary, reason: `${binary} -version failed: ${(err as Error).message}` };
    }
    let kvm = false;
    if (this.opts.accel === 'tcg') {
      this.kvmReason = 'not probed: accel is tcg';
    } else {
      const result = await probeKvm(binary, this.opts.kvmProbeTimeoutMs);
      kvm = result.ok;
      this.kvmReason = result.reason;
      this.opts.logger?.info({ kvm, reason: result.reason, ms: result.elapsedMs }, 'KVM probe');
    }
    return {
      kind: 'qemu',
      available: true,
      version,
      binary,
      kvm,
      features: ['snapshot', 'pause', 'graceful-shutdown', 'qcow2', 'virtio-serial', 'console-log'],
    };
  }

  private async resolveAccel(): Promise<{ binary: string; accel: QemuAccel }> {
    const info = await this.probe();
    if (!info.available || !info.binary) {
      throw new Error(`QEMU is not available: ${info.reason ?? 'unknown'}`);
    }
    const wanted = this.opts.accel ?? 'auto';
    if (wanted === 'kvm' && !info.kvm) throw new Error(`KVM cannot run a guest here: ${this.kvmReason}`);
    return { binary: info.binary, accel: wanted === 'tcg' ? 'tcg' : info.kvm ? 'kvm' : 'tcg' };
  }

  private consoleHub(socketPath: string, logPath: string): ConsoleHub {
    return new ConsoleHub({ socketPath, logPath, ...this.opts.console, logger: this.opts.logger });
  }
}

/**
 * Guest memory and disks must be of the same instant: the snapshot's disk copies replace the
 * spec's writable disks (of this VM, or of a clone: its own new files) before the state loads.
 */
async function restoreDisks(spec: VmSpec, snapDir: string): Promise<void> {
  const text = await readFile(join(snapDir, SNAPSHOT_MANIFEST), 'utf8').catch(() => null);
  if (text === null) throw new Error(`${snapDir} holds no QEMU snapshot (${SNAPSHOT_MANIFEST} is missing)`);
  const manifest = JSON.parse(text) as QemuSnapshotManifest;
  const writable = spec.disks.filter((d) => !d.readOnly);
  for (const d of writable) {
    const copy = manifest.disks.find((x) => x.id === d.id);
    if (!copy) throw new Error(`disk ${d.id} was not attached when the snapshot was taken`);
    if (copy.format !== d.format)
      throw new Error(`disk ${d.id} is ${d.format} but the snapshot holds a ${copy.format} copy`);
  }
  const missing = manifest.disks.filter((x) => !writable.some((d) => d.id === x.id));
  if (missing.length)
    throw new Error(`the snapshot has disks this VM lacks: ${missing.map((d) => d.id).join(', ')}`);
  for (const d of writable) {
    await rm(d.path, { force: true });
    await cloneFile(join(snapDir, manifest.disks.find((x) => x.id === d.id)!.file), d.path);
  }
}

function asQemuVm(h: VmHandle): QemuVm {
  if (!(h instanceof QemuVm)) throw new Error('not a QEMU VM handle');
  return h;
}

async function resolveBinary(name: string): Promise<string | null> {
  const candidates = name.includes('/')
    ? [name]
    : (process.env.PATH ?? '')
        .split(delimiter)
        .filter(Boolean)
        .map((dir) => join(dir, name));
  for (const c of candidates) {
    try {
      await access(c, constants.X_OK);
      return c;
    } catch {
      // Next PATH entry.
    }
  }
  return null;
}

/**
 * The host TSC frequency in kHz, from `cpu MHz` in /proc/cpuinfo (on x86 VMs and modern CPUs
 * that is the TSC rate); undefined when unknown.
 */
export async function hostTscKhz(): Promise<number | undefined> {
  const text = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const mhz = /^cpu MHz\s*:\s*([\d.]+)/m.exec(text)?.[1];
  return mhz ? Math.round(Number(mhz) * 1000) : undefined;
}
