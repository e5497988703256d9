/**
 * One VM on this host: converges its VMM to the manager's last command, one piece of work at a
 * time, watches the VMM for exits it did not ask for, restarts per the restart policy (with
 * backoff), and re-attaches to its VMM after an agent restart.
 */
import { mkdir, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  type AgentExec,
  type AgentExecResult,
  type AgentSnapshot,
  AgentVmCommand,
  type AgentVmReport,
  type AgentVmState,
  type AgentVmStats,
  type GuestReadySignal,
  NqvmError,
  type SnapshotType,
  type TerminalSize,
  type VmMetrics,
} from '@nqvm/api';
import type { ExecSession, SpawnOptions } from '@nqvm/guest-agent';
import { ConsoleRoom } from '../console/console-room';
import { ContainerRun, type LogLine } from '../containers/container-run';
import { readFirecrackerMetrics } from '../drivers/firecracker/metrics';
import type {
  RunRecord,
  ShutdownOptions,
  StepTiming,
  VmExit,
  VmHandle,
  VmmDriver,
  VmmKind,
  VmmPauseEvent,
} from '../drivers/types';
import { isSameProcessRunning, processUsage } from '../host/proc';
import type { ImageCache } from '../images/image-cache';
import type { HostNetwork } from '../network';
import {
  allocatedBytes,
  SNAPSHOT_RECORD,
  type SnapshotRecord,
  type SnapshotStore,
} from '../snapshots/snapshot-store';
import type { VolumeStore } from '../volumes/volume-store';
import type { DriverSet } from './driver-set';
import { guestAgentToken, hasGuestAgentToken } from './guest-channel';
import { GuestLink } from './guest-link';
import { watchConsoleReady } from './guest-ready';
import { type AgentLogger, errorMessage } from './logger';
import { DESIRED_FILE, RUN_FILE, readJsonFile, vmDirOf, writeJsonAtomic } from './state-files';
import { bootVm, type RestoreSource } from './vm-boot';
import type { ConsoleOpener, VmConsole } from './vm-console';
import { readRootDisk } from './vm-disk';
import { foundAddresses, removeVmNetwork, syncPortForwards } from './vm-network';

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
  images: ImageCache;
  volumes: VolumeStore;
  snapshots: SnapshotStore;
  /** The host's networking (bridges, TAPs, port forwards). */
  network?: HostNetwork;
  log: AgentLogger;
  openConsole: ConsoleOpener;
  backoff: RestartBackoff;
  /** Called whenever the VM's report changes. */
  onChange: () => void;
}

/** A VM whose VMM runs, as metrics see it. */
export interface RunningVmm {
  vmId: string;
  vmm: VmmKind;
  state: AgentVmState;
  handle: VmHandle;
  driver: VmmDriver | undefined;
  vcpu: number;
  memMib: number;
}

/** The protocol's bound on a report's error (AgentVmReport.error). */
const MAX_ERROR_CHARS = 2_000;

export function truncateError(message: string): string {
  return message.length <= MAX_ERROR_CHARS ? message : `${message.slice(0, MAX_ERROR_CHARS - 3)}...`;
}

/** Forced stops (reboot, delete) wait this long for the VMM to go. */
const FORCED_STOP_TIMEOUT_MS = 10_000;
/** How long a snapshot waits for the guest agent to answer (it tells whether a clone can be re-addressed). */
const GUEST_PROBE_TIMEOUT_MS = 2_000;
/** A restored guest's agent (running in the restored memory) answers within this time. */
const RESTORED_GUEST_TIMEOUT_MS = 15_000;
/** After a VMM starts, its guest agent is looked for this long, ... */
const GUEST_SEARCH_MS = 180_000;
/** ...one attempt this long at a time. */
const GUEST_SEARCH_ATTEMPT_MS = 10_000;
/** A console size is applied once the writer's window has not changed for this long. */
const CONSOLE_RESIZE_SETTLE_MS = 200;
/** Console bytes searched for a kernel panic when a VM ends by itself. */
const PANIC_SCAN_BYTES = 256 * 1024;
/** Console lines a panicked VM's error carries. */
const PANIC_CONSOLE_LINES = 12;
/** A VMM started less than this ago whose guest has not said it is up runs a guest still booting. */
const BOOTING_MS = 30_000;
/** How long a graceful stop waits for a guest still booting to take the power button. */
const BOOTING_STOP_GRACE_MS = 5_000;
/** How long an exec waits for the guest agent to answer. */
const GUEST_CONNECT_TIMEOUT_MS = 5_000;
/** A container's VM gets this long past the stop timeout to end once its process was signalled. */
const CONTAINER_STOP_GRACE_MS = 5_000;
/** Console bytes searched for the container init's exit line. */
const EXIT_MARKER_SCAN_BYTES = 64 * 1024;
/** `restored.json`: the generation whose restore is done; a later boot of it is a cold one. */
const RESTORED_FILE = 'restored.json';
/** `ended.json`: how the VM last ended by itself (an EndRecord), kept across agent restarts. */
const ENDED_FILE = 'ended.json';

/** A VM that ended without being asked to, under the command of `generation`. */
interface EndRecord {
  generation: number;
  state: 'failed' | 'stopped';
  error: string | null;
  /** Whether its restart policy was to boot it again. */
  restart: boolean;
}

export class VmRuntime {
  readonly vmDir: string;
  /** The console WebSocket sessions of this VM. */
  readonly consoleRoom = new ConsoleRoom();
  private command: AgentVmCommand | null = null;
  /** The highest generation whose command was acted on. */
  private applied = 0;
  /** The command last acted on (restored at agent start): what the host was made to hold. */
  private enacted: AgentVmCommand | null = null;
  private state: AgentVmState = 'stopped';
  private error: string | null = null;
  private vmm: VmmKind | null = null;
  private handle: VmHandle | null = null;
  /** Whether the VMM is paused (the reported state may show a transition meanwhile). */
  private vmmPaused = false;
  /** Counts the pauses the VMM made by itself (a disk it cannot write): a resume they overtook is undone. */
  private vmmPauses = 0;
  /** A VMM found running at agent start that its driver could not adopt. */
  private orphan: RunRecord | null = null;
  private console: VmConsole | null = null;
  /** Per-VM work runs here, one piece at a time. */
  private work: Promise<void> = Promise.resolve();
  private persisting: Promise<void> = Promise.resolve();
  private bootAbort: AbortController | null = null;
  private readonly stopRequested = new WeakSet<VmHandle>();
  private restartTimer: NodeJS.Timeout | null = null;
  /** A restart by the restart policy is scheduled or under way: the VM still wants to run. */
  private restartPending = false;
  private restartDelayMs: number;
  private startedAt = 0;
  private deleting = false;
  private closing = false;
  /** The addresses found for NICs the manager gave none (bridged), as last looked up. */
  private found: Array<{ nic_index: number; ip: string | null }> = [];
  /** The connection to the guest agent of the running VMM. */
  private readonly guest = new GuestLink(
    () => this.handle?.record ?? null,
    () => guestAgentToken(this.vmDir),
    (client) => {
      this.guestAnswered = true;
      this.markGuestReady('guest-agent');
      this.container?.watch(client);
    },
  );
  /** When the guest of the running VMM came up, and what said so; null while it boots. */
  private guestReady: { at: string; signal: GuestReadySignal } | null = null;
  /** How long each step of the running VMM's boot took (null: adopted, not booted by this agent). */
  private bootSteps: StepTiming[] | null = null;
  private stopReadyWatch: (() => void) | null = null;
  /** The console writer's terminal size, set on the guest's console tty. */
  private consoleSize: TerminalSize | null = null;
  private resizeTimer: NodeJS.Timeout | null = null;
  /**
   * Whether the guest agent of the running VMM has answered: a snapshot of a paused VM, whose
   * guest cannot answer then, still records its token, so clones of it can be re-identified.
   */
  private guestAnswered = false;
  /** Whether the search for the guest agent after the VMM started gave up (a guest without one). */
  private guestSilent = false;
  /** Container VMs: the process the init runs, its output and exit. */
  private container: ContainerRun | null = null;
  /** Log followers told when the VMM is down. */
  private readonly followers = new Set<() => void>();

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
      ...(this.found.length ? { nics: this.found } : {}),
      ...(this.container ? { container: this.container.report() } : {}),
      guest_ready: this.handle ? this.guestReady : null,
      ...(this.restartPending ? { restarting: true } : {}),
      ...(this.handle && this.bootSteps ? { boot_steps: this.bootSteps } : {}),
    };
  }

  /** The guest is up (its agent said hello, or its console shows boot finished): reported once per run. */
  private markGuestReady(signal: GuestReadySignal): void {
    if (signal === 'guest-agent' && this.consoleSize) this.tellConsoleSize();
    if (this.guestReady || !this.handle) return;
    this.stopReadyWatch?.();
    this.stopReadyWatch = null;
    this.guestReady = { at: new Date().toISOString(), signal };
    this.deps.onChange();
  }

  /**
   * A serial console has no size of its own: the writer's terminal size is set on the guest's
   * console tty through its guest agent (`stty`), so programs there (a shell, an editor) fit
   * the window and get SIGWINCH. Guests without the agent keep the UART's 80x24.
   */
  private withGuestResize(console: VmConsole): VmConsole {
    return {
      ...console,
      tail: (bytes) => console.tail(bytes),
      close: () => console.close(),
      ...(console.subscribe ? { subscribe: (v, o) => console.subscribe!(v, o) } : {}),
      ...(console.write ? { write: (d) => console.write!(d) } : {}),
      resize: (size) => {
        console.resize?.(size);
        this.consoleSize = size;
        if (this.resizeTimer) clearTimeout(this.resizeTimer);
        // A window being dragged sends many sizes: the last one is applied.
        this.resizeTimer = setTimeout(() => this.tellConsoleSize(), CONSOLE_RESIZE_SETTLE_MS);
        this.resizeTimer.unref();
      },
    };
  }

  private tellConsoleSize(): void {
    const size = this.consoleSize;
    if (!size || !this.handle || this.state !== 'running' || !this.guest.connected) return;
    const script = `t=$(cat /sys/class/tty/console/active 2>/dev/null); t=\${t##* }; exec stty -F "/dev/\${t:-ttyS0}" rows ${size.rows} cols ${size.cols}`;
    void this.guest
      .get(GUEST_CONNECT_TIMEOUT_MS)
      .then((g) => g.exec(['/bin/sh', '-c', script], { timeoutMs: 5_000 }))
      .catch((err: unknown) =>
        this.deps.log.debug?.({ vmId: this.id, err: errorMessage(err) }, 'console size not set'),
      );
  }

  /** A container's output: the last `tail` lines, and with `follow` each new one until it stops. */
  async containerLines(tail: number | undefined): Promise<LogLine[] | null> {
    return this.container ? this.container.lines(tail) : null;
  }

  /** Calls `onLine` for each new line of the container's output; `onEnd` once its VMM is down. */
  followContainer(onLine: (l: LogLine) => void, onEnd: () => void): () => void {
    const run = this.container;
    if (!run || (!this.handle && this.bootAbort === null)) {
      onEnd();
      return () => {};
    }
    run.on('line', onLine);
    this.followers.add(onEnd);
    return () => {
      run.off('line', onLine);
      this.followers.delete(onEnd);
    };
  }

  /** Looks up the addresses of the VM's bridged NICs on the host; answers whether they changed. */
  async refreshAddresses(): Promise<boolean> {
    const spec = this.command?.spec;
    if (!this.deps.network || !spec?.nics.some((n) => n.ip === null)) return false;
    const found = this.handle ? await foundAddresses(this.deps.network, this.id, spec) : [];
    const changed = JSON.stringify(found) !== JSON.stringify(this.found);
    this.found = found;
    return changed;
  }

  /** The running VMM for metrics: its handle, driver and the VM's size; null while it is down. */
  runningVmm(): RunningVmm | null {
    const handle = this.handle;
    if (!handle || !this.vmm) return null;
    return {
      vmId: this.id,
      vmm: this.vmm,
      state: this.state,
      handle,
      driver: this.deps.drivers.get(this.vmm),
      vcpu: this.command?.spec.vcpu ?? 0,
      memMib: this.command?.spec.mem_mib ?? 0,
    };
  }

  /** The VMM's own metrics while it runs (Firecracker's metrics file); null otherwise. */
  async metrics(): Promise<VmMetrics> {
    const handle = this.handle;
    if (handle?.record.kind !== 'firecracker') return { vmm: this.vmm, metrics: null };
    // Firecracker writes a metrics line every 60 s; a flush makes the answer current.
    const driver = this.deps.drivers.get('firecracker') as
      | { flushMetrics?: (h: VmHandle) => Promise<void> }
      | undefined;
    await driver?.flushMetrics?.(handle).catch(() => {});
    return { vmm: 'firecracker', metrics: await readFirecrackerMetrics(handle.record) };
  }

  /**
   * Whether volume `volumeId` is attached to a VMM of this VM that runs or is being started or
   * stopped (the volumes of the latest command: they are fixed at the VM's creation).
   */
  usesVolume(volumeId: string): boolean {
    const down = this.handle === null && this.orphan === null && this.bootAbort === null;
    if (down && (this.state === 'stopped' || this.state === 'failed')) return false;
    return this.command?.spec.volumes.some((v) => v.id === volumeId) ?? false;
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
    await this.ensureContainerRun(cmd);
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
    this.enacted = cmd;
    await this.ensureContainerRun(cmd);
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
      await this.attach(handle, cmd.desired === 'paused' ? 'paused' : 'running', undefined, true);
      if (cmd.desired === 'stopped') void this.enqueue(() => this.enact(cmd, false));
      return;
    }
    if (record) await this.forgetRun();
    // A VM that had ended by itself under this command keeps its reason; it boots again only
    // when its restart policy was to restart it.
    const ended = await this.endOf(cmd.generation);
    const restarts = ended ? ended.restart : cmd.spec.restart_policy !== 'never';
    if (cmd.desired === 'running' && restarts) {
      this.deps.log.info({ vmId: this.id }, 'VMM gone while the agent was down; booting it again');
      this.setState('starting', null);
      void this.enqueue(() => this.boot(cmd));
    } else if (ended) {
      this.setState(ended.state, ended.error);
    } else {
      this.setState('stopped', record ? 'the VMM ended while the host agent was down' : null);
    }
  }

  /** Stops the VMM (forced) and removes everything of the VM from the host. */
  async destroy(): Promise<void> {
    this.deleting = true;
    this.cancelRestart();
    this.consoleRoom.end('vm-deleted', 'the VM is being deleted');
    this.bootAbort?.abort(new Error('VM deleted'));
    this.guest.reset();
    await this.enqueue(async () => {
      if (this.handle && !(await this.stopVmm({ graceful: false, timeoutMs: FORCED_STOP_TIMEOUT_MS }))) {
        throw new Error(this.error ?? 'cannot stop the VMM');
      }
      if (!(await this.killOrphan())) throw new Error(this.error ?? 'cannot stop the VMM');
      await this.console?.close();
      await this.persisting;
      if (this.deps.network && this.command)
        await removeVmNetwork(this.deps.network, this.id, this.command.spec);
      await rm(this.vmDir, { recursive: true, force: true });
    });
  }

  /** Lets go of the VM without stopping it (the agent is exiting). Waits up to `waitMs` for work in flight. */
  async release(waitMs: number): Promise<void> {
    this.closing = true;
    this.cancelRestart();
    this.consoleRoom.end('agent-restart', 'the host agent is restarting; reconnect');
    const timeout = new AbortController();
    await Promise.race([this.work, sleep(waitMs, undefined, { signal: timeout.signal }).catch(() => {})]);
    timeout.abort();
    this.guest.reset();
    const h = this.handle;
    this.handle = null;
    if (h) await this.releaseHandle(h);
    await this.console?.close();
  }

  private enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.work.then(fn);
    this.work = next.then(
      () => {},
      (err: unknown) => {
        // A refused request (a snapshot of a stopped VM) is the caller's answer, not a failure here.
        if (!(err instanceof NqvmError)) this.deps.log.error({ vmId: this.id, err }, 'VM work failed');
      },
    );
    return next;
  }

  private setState(state: AgentVmState, error: string | null): void {
    const message = error === null ? null : truncateError(error);
    if (this.state === state && this.error === message) return;
    this.state = state;
    this.error = message;
    if (state === 'stopped' || state === 'failed') for (const ended of this.followers) ended();
    this.deps.onChange();
  }

  /** The state a newly accepted command leads to, shown at once (the work follows). */
  private showIntent(cmd: AgentVmCommand): void {
    const live = this.handle !== null || this.bootAbort !== null;
    let next = this.state;
    if (cmd.desired === 'stopped') next = live ? 'stopping' : 'stopped';
    // A restore replaces the VMM: the old one's state is not the answer to it.
    else if (!live || cmd.reboot || cmd.restore) next = 'starting';
    else if (cmd.desired === 'paused' && this.state === 'running') next = 'pausing';
    // A resume shows a transition too, so an acknowledgement never reads as the old state.
    else if (cmd.desired === 'running' && this.state === 'paused') next = 'starting';
    this.setState(next, null);
    // Console clients that come meanwhile wait for the boot instead of being told the VM is down.
    if (!live && cmd.desired !== 'stopped') this.consoleRoom.starting();
  }

  /**
   * Takes snapshot `snapshotId` of the running or paused VMM (between the VM's other work),
   * into the host's snapshot store. A snapshot already taken is answered as it is. A failed
   * one leaves nothing behind and is answered with status failed.
   */
  snapshot(snapshotId: string, type: SnapshotType): Promise<AgentSnapshot> {
    return this.enqueue(async () => {
      const store = this.deps.snapshots;
      const existing = await store.get(snapshotId);
      if (existing) return publicSnapshot(existing);
      const handle = this.handle;
      const spec = (this.enacted ?? this.command)?.spec;
      if (!handle || !spec || (this.state !== 'running' && this.state !== 'paused')) {
        throw new NqvmError(
          'VM_INVALID_STATE',
          `the VM is ${this.state} on this host: only a running or paused VM can be snapshotted`,
          { state: this.state },
        );
      }
      const driver = this.driverOf(handle);
      if (type === 'Diff' && !(await driver.probe()).features.includes('diff-snapshot')) {
        throw new NqvmError(
          'SNAPSHOT_TYPE_UNSUPPORTED',
          `the ${driver.kind} driver of this host takes no Diff snapshots`,
          { snapshot_type: type },
        );
      }
      let parent: string | null = null;
      const token = await guestAgentToken(this.vmDir);
      // A paused guest cannot answer: what it answered before it was paused counts.
      const guestAgent = this.guestAnswered || (!this.vmmPaused && (await this.guestAgentAnswers()));
      const dir = store.dirOf(snapshotId);
      const createdAt = new Date().toISOString();
      await rm(dir, { recursive: true, force: true });
      await mkdir(dir, { recursive: true, mode: 0o700 });
      try {
        const files = await driver.snapshot(handle, dir, type);
        // A Diff builds on what the driver says: the run's previous snapshot, or the one it was restored from.
        parent = files.base ? store.idOf(files.base.statePath) : null;
        if (files.base && !parent)
          throw new Error(`the Diff builds on ${files.base.statePath}, outside the snapshot store`);
        const memory = files.memPath ?? files.statePath;
        const sizes = {
          state_bytes: files.memPath ? await allocatedBytes(files.statePath) : 0,
          memory_bytes: await allocatedBytes(memory),
          disk_bytes: 0,
        };
        for (const name of await readdir(dir)) {
          const file = path.join(dir, name);
          if (file !== files.statePath && file !== files.memPath && name !== SNAPSHOT_RECORD)
            sizes.disk_bytes += await allocatedBytes(file);
        }
        const record: SnapshotRecord = {
          id: snapshotId,
          vm_id: this.id,
          status: 'ready',
          type,
          parent_id: parent,
          vmm: driver.kind,
          vcpu: spec.vcpu,
          mem_mib: spec.mem_mib,
          size_bytes: sizes.state_bytes + sizes.memory_bytes + sizes.disk_bytes,
          sizes,
          guest_agent: guestAgent,
          error: null,
          created_at: createdAt,
          files: {
            state: path.relative(dir, files.statePath),
            memory: files.memPath ? path.relative(dir, files.memPath) : null,
          },
          nics: spec.nics.map((n) => ({
            nic_index: n.nic_index,
            mac: n.mac,
            ip: n.ip,
            prefix_len: n.prefix_len,
            gateway: n.gateway,
          })),
          hostname: spec.guest_config?.hostname ?? null,
          root_disk_format: (await readRootDisk(this.vmDir))?.format ?? null,
          guest_agent_token: guestAgent ? token : null,
          image_digests: imageDigests(spec),
        };
        await store.save(record);
        this.deps.log.info({ vmId: this.id, snapshotId, type, bytes: record.size_bytes }, 'snapshot taken');
        return publicSnapshot(record);
      } catch (err) {
        await store.remove(snapshotId);
        this.deps.log.warn({ vmId: this.id, snapshotId, err: errorMessage(err) }, 'snapshot failed');
        return {
          id: snapshotId,
          vm_id: this.id,
          status: 'failed',
          type,
          parent_id: parent,
          vmm: driver.kind,
          vcpu: spec.vcpu,
          mem_mib: spec.mem_mib,
          size_bytes: 0,
          sizes: { state_bytes: 0, memory_bytes: 0, disk_bytes: 0 },
          guest_agent: guestAgent,
          error: truncateError(errorMessage(err)),
          created_at: createdAt,
        };
      }
    });
  }

  /** Whether a restore from snapshot `id` is under way or waiting here. */
  restoresFrom(id: string): boolean {
    return (
      this.command?.restore?.snapshot_id === id && (this.bootAbort !== null || this.applied < this.generation)
    );
  }

  /**
   * Runs a command in the guest through its guest agent. 409 when the VM does not run or its
   * guest has no agent that answers; 400 EXEC_FAILED when the command cannot start.
   */
  async exec(req: AgentExec): Promise<AgentExecResult> {
    if (!this.handle || this.state !== 'running') {
      throw new NqvmError('VM_INVALID_STATE', `the VM is ${this.state}: commands run in running VMs only`, {
        state: this.state,
      });
    }
    let guest: Awaited<ReturnType<GuestLink['get']>>;
    try {
      guest = await this.guest.get(GUEST_CONNECT_TIMEOUT_MS);
    } catch (err) {
      throw new NqvmError(
        'GUEST_AGENT_UNAVAILABLE',
        `the VM's guest agent does not answer (${errorMessage(err)}); it runs in nqvm's built-in guest, in containers and in cloud-init guests (installed from the config drive; nqvm guest-agent files DIR for other images)`,
      );
    }
    const started = performance.now();
    try {
      const r = await guest.exec(req.argv, {
        env: req.env,
        ...(req.cwd ? { cwd: req.cwd } : {}),
        ...(req.user ? { user: req.user } : {}),
        ...(req.stdin_b64 !== null ? { stdin: Buffer.from(req.stdin_b64, 'base64') } : {}),
        timeoutMs: req.timeout_s * 1000,
      });
      return {
        exit_code: r.exitCode,
        signal: r.signal,
        stdout_b64: r.stdout.toString('base64'),
        stderr_b64: r.stderr.toString('base64'),
        truncated: r.truncated,
        timed_out: false,
        duration_ms: r.durationMs,
      };
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'TIMEOUT')
        return {
          exit_code: null,
          signal: 9,
          stdout_b64: '',
          stderr_b64: '',
          truncated: false,
          timed_out: true,
          duration_ms: performance.now() - started,
        };
      if (code === 'EXEC_FAILED' || code === 'BAD_REQUEST')
        throw new NqvmError('EXEC_FAILED', `the command cannot start in the guest: ${errorMessage(err)}`, {});
      throw new NqvmError('GUEST_AGENT_UNAVAILABLE', `the guest agent failed: ${errorMessage(err)}`);
    }
  }

  /** An interactive command in the guest (the exec WebSocket); 409 as for `exec`. */
  async spawn(argv: string[], opts: SpawnOptions): Promise<ExecSession> {
    if (!this.handle || this.state !== 'running') {
      throw new NqvmError('VM_INVALID_STATE', `the VM is ${this.state}: commands run in running VMs only`, {
        state: this.state,
      });
    }
    try {
      return (await this.guest.get(GUEST_CONNECT_TIMEOUT_MS)).spawn(argv, opts);
    } catch (err) {
      throw new NqvmError(
        'GUEST_AGENT_UNAVAILABLE',
        `the VM's guest agent does not answer (${errorMessage(err)})`,
      );
    }
  }

  /** The VMM process's CPU and memory on the host, and the guest's own view when its agent answers. */
  async stats(): Promise<AgentVmStats> {
    const handle = this.handle;
    if (!handle) return { host: null, guest: null };
    const usage = await processUsage(handle.record.pid);
    const host = usage
      ? { pid: handle.record.pid, rss_bytes: usage.rssBytes, cpu_seconds: usage.cpuSeconds }
      : null;
    // A container image may hold no shell: the init put busybox at /.nqvm.
    const shell = this.container ? ['/.nqvm/busybox', 'sh'] : ['/bin/sh'];
    const script = 'cat /proc/meminfo /proc/loadavg /proc/uptime; ls -d /proc/[0-9]* | wc -l';
    try {
      const guest = await this.guest.get(2_000);
      const r = await guest.exec([...shell, '-c', script], { timeoutMs: 5_000 });
      return { host, guest: parseGuestProc(r.stdout.toString('utf8')) };
    } catch {
      return { host, guest: null };
    }
  }

  private async guestAgentAnswers(): Promise<boolean> {
    try {
      await this.guest.get(GUEST_PROBE_TIMEOUT_MS);
      return true;
    } catch {
      return false;
    }
  }

  /** What a command that restores boots from; null when it boots cold. */
  private async restoreSource(cmd: AgentVmCommand): Promise<RestoreSource | null> {
    if (!cmd.restore || (await this.restoredAlready(cmd.generation))) return null;
    const record = await this.deps.snapshots.get(cmd.restore.snapshot_id);
    if (record?.status !== 'ready')
      throw new Error(`snapshot ${cmd.restore.snapshot_id} is not on this host`);
    return { record, files: await this.deps.snapshots.filesOf(record) };
  }

  private async restoredAlready(generation: number): Promise<boolean> {
    const done = (await readJsonFile(path.join(this.vmDir, RESTORED_FILE)).catch(() => null)) as {
      generation?: number;
    } | null;
    return done?.generation === generation;
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
      const before = this.enacted;
      const cmd = this.command;
      this.applied = cmd.generation;
      this.enacted = cmd;
      await this.enact(cmd, cmd.reboot);
      if (before && this.handle) await this.syncForwards(before, cmd);
    }
  }

  /** Port forwards added or removed while the VM runs; a refused one shows as the VM's error. */
  private async syncForwards(before: AgentVmCommand, cmd: AgentVmCommand): Promise<void> {
    if (!this.deps.network) return;
    try {
      await syncPortForwards(this.deps.network, before.spec.port_forwards, cmd.spec.port_forwards);
    } catch (err) {
      this.deps.log.warn({ vmId: this.id, err: errorMessage(err) }, 'port forward not applied');
      this.setState(this.state, `port forward not applied: ${errorMessage(err)}`);
    }
  }

  private async enact(cmd: AgentVmCommand, reboot: boolean): Promise<void> {
    if (!(await this.killOrphan())) return;
    const restoring = cmd.restore !== null && !(await this.restoredAlready(cmd.generation));
    if (
      (reboot || restoring) &&
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

  private async boot(cmd: AgentVmCommand, byRestartPolicy = false): Promise<void> {
    if (this.deleting || this.closing) return;
    await this.container?.booting(byRestartPolicy);
    const abort = new AbortController();
    this.bootAbort = abort;
    this.setState('starting', null);
    this.consoleRoom.starting();
    try {
      const restore = await this.restoreSource(cmd);
      const { handle, notes, guest, steps } = await bootVm({
        id: this.id,
        vmDir: this.vmDir,
        command: cmd,
        drivers: this.deps.drivers,
        images: this.deps.images,
        volumes: this.deps.volumes,
        network: this.deps.network,
        persistDesired: () => this.persistDesired(),
        signal: abort.signal,
        ...(restore ? { restore } : {}),
      });
      this.bootSteps = steps.map((s) => ({ name: s.name, ms: Math.round(s.ms * 10) / 10 }));
      if (restore)
        await writeJsonAtomic(path.join(this.vmDir, RESTORED_FILE), { generation: cmd.generation });
      // A restored guest had its agent running: the VM runs once it answers (a clone's, with its own token).
      const reidentified = Boolean(
        restore?.record.guest_agent_token && (guest || restore.record.vm_id === this.id),
      );
      await this.attach(handle, 'running', async () => {
        if (guest) this.guest.adopt(guest);
        if (!reidentified) return;
        await this.guest.get(RESTORED_GUEST_TIMEOUT_MS).catch((err: unknown) => {
          notes.push(`the restored guest's agent does not answer: ${errorMessage(err)}`);
        });
      });
      if (notes.length) this.setState(this.state, notes.join('; '));
    } catch (err) {
      if (abort.signal.aborted) {
        if (!this.deleting) this.setState('stopped', null);
        this.consoleRoom.end('vm-stopped', 'the start was cancelled');
        return;
      }
      this.deps.log.warn({ vmId: this.id, err: errorMessage(err) }, 'boot failed');
      this.setState('failed', errorMessage(err));
      this.recordEnd('failed', false);
      this.consoleRoom.end('vm-stopped', `the VM failed to start: ${errorMessage(err)}`);
    } finally {
      this.bootAbort = null;
    }
  }

  /** Takes on a started or adopted VMM; `ready` runs before its state is shown (the guest answers). */
  private async attach(
    handle: VmHandle,
    state: 'running' | 'paused',
    ready?: () => Promise<void>,
    adopted = false,
  ): Promise<void> {
    this.guest.reset();
    if (adopted) this.bootSteps = null;
    this.guestAnswered = false;
    this.guestSilent = false;
    this.guestReady = null;
    this.stopReadyWatch?.();
    this.stopReadyWatch = null;
    this.handle = handle;
    this.vmmPaused = state === 'paused';
    this.vmm = handle.record.kind;
    this.startedAt = Date.now();
    void handle.exited.then((exit) => this.onExit(handle, exit));
    this.consoleRoom.starting();
    await ready?.();
    if (this.handle !== handle) return;
    this.setState(state, null);
    handle.onVmmPause?.((event) => this.onVmmPause(handle, event));
    await this.console?.close();
    this.console = await this.deps.openConsole(handle).catch((err: unknown) => {
      this.deps.log.warn({ vmId: this.id, err }, 'cannot open the console');
      return null;
    });
    if (this.handle === handle) {
      if (this.console) this.consoleRoom.attach(this.withGuestResize(this.console));
      else this.consoleRoom.end('internal-error', 'the console of this VM cannot be opened');
      // A fresh boot is watched from now on; an adopted VM's scrollback may hold its prompt already.
      if (this.console && !this.guestReady)
        this.stopReadyWatch = watchConsoleReady(this.console, adopted, () => this.markGuestReady('console'));
    }
    if (this.closing && this.handle === handle) {
      this.handle = null;
      await this.releaseHandle(handle);
    }
    if (this.container && this.handle === handle) void this.keepLinked(handle);
    else if (this.handle === handle) void this.findGuestAgent(handle);
  }

  /**
   * Connects to the guest agent once it is up (a fresh guest starts it a few seconds into its
   * boot), so that a later snapshot of the VM paused knows whether its clones can be re-identified.
   */
  private async findGuestAgent(handle: VmHandle): Promise<void> {
    // Without a token no guest agent could be told apart from a stranger: there is none to find.
    if (!(await hasGuestAgentToken(this.vmDir))) return;
    const deadline = Date.now() + GUEST_SEARCH_MS;
    while (this.handle === handle && !this.guestAnswered && !this.closing && !this.deleting) {
      if (Date.now() > deadline) {
        this.guestSilent = true;
        return;
      }
      await this.guest.get(GUEST_SEARCH_ATTEMPT_MS).catch(() => sleep(1_000, undefined, { ref: false }));
    }
  }

  /** A container's VM stays connected to its guest agent: its output and exit come that way. */
  private async keepLinked(handle: VmHandle): Promise<void> {
    while (this.handle === handle && !this.closing && !this.deleting) {
      if (!this.guest.connected) await this.guest.get(10_000).catch(() => sleep(500));
      else await sleep(250);
    }
  }

  private async ensureContainerRun(cmd: AgentVmCommand): Promise<void> {
    if (!cmd.spec.container || this.container) return;
    this.container = new ContainerRun(this.vmDir);
    await this.container.load();
  }

  /** An exit the manager did not ask for: report it at once, then apply the restart policy. */
  private onExit(handle: VmHandle, exit: VmExit): void {
    if (this.handle !== handle || this.stopRequested.has(handle)) {
      if (this.container) void this.containerEnded();
      return;
    }
    this.handle = null;
    this.guest.reset();
    if (this.container) {
      void this.onContainerVmExit(exit);
      return;
    }
    void this.guestEnded(exit);
  }

  /**
   * Why a VM ended by itself, from its exit and the console of its last boot: a kernel panic (at
   * boot: no root disk, no init, a missing driver) fails the VM with the panic and the console's
   * last lines; a reset the guest asked for (`reboot` inside; QEMU runs with -no-reboot) boots it
   * again; a power-off stops it. Then the restart policy applies.
   */
  private async guestEnded(exit: VmExit): Promise<void> {
    const boot = lastBoot((await this.consoleTail(PANIC_SCAN_BYTES)).toString('utf8'));
    const panic = /Kernel panic - not syncing:[^\r\n]*/.exec(boot)?.[0] ?? null;
    const crashed = exit.reason !== 'shutdown' || panic !== null;
    const rebooted = !crashed && exit.message === 'guest-reset';
    const detail = panic
      ? `the guest kernel panicked (${panic}); its console's last lines:\n${lastLines(boot, PANIC_CONSOLE_LINES)}`
      : (exit.message ??
        `VMM exited with ${exit.signal ? `signal ${exit.signal}` : `code ${exit.code ?? 'unknown'}`}`);
    this.deps.log.info(
      { vmId: this.id, exit, panic },
      crashed ? 'VM crashed' : rebooted ? 'guest rebooted' : 'VM powered off',
    );
    if (rebooted && this.command && this.command.desired !== 'stopped' && !this.deleting && !this.closing) {
      this.consoleRoom.starting();
      void this.enqueue(async () => {
        await this.forgetRun();
        await this.restart();
      });
      return;
    }
    void this.enqueue(() => this.forgetRun());
    this.endedByItself(crashed ? 'failed' : 'stopped', crashed ? detail : null, crashed);
    this.consoleRoom.end('vm-stopped', crashed ? `the VM crashed: ${detail}` : 'the VM powered off');
  }

  /**
   * A container's VM ended by itself: its process exited (the init powers the VM off) or the VMM
   * died. A non-zero exit, a process that could not start and a dead VMM are failures for
   * `on-failure`; the VM itself just stopped unless its VMM crashed.
   */
  private async onContainerVmExit(exit: VmExit): Promise<void> {
    const ended = await this.containerEnded();
    const vmmCrashed = exit.reason !== 'shutdown';
    const failed = vmmCrashed || ended?.kind !== 'exited' || ended.value !== 0;
    const detail = vmmCrashed
      ? (exit.message ??
        `VMM exited with ${exit.signal ? `signal ${exit.signal}` : `code ${exit.code ?? 'unknown'}`}`)
      : null;
    this.deps.log.info({ vmId: this.id, exit, process: ended }, 'container VM ended');
    void this.enqueue(() => this.forgetRun());
    this.endedByItself(vmmCrashed ? 'failed' : 'stopped', detail, failed);
    this.consoleRoom.end(
      'vm-stopped',
      ended ? `the container's process ended (${ended.kind} ${ended.value})` : 'the VM ended',
    );
  }

  /**
   * The VM ended without being asked to (`failure`: an end `on-failure` restarts after): its
   * restart policy applies, and its state and reason are shown and kept for an agent restart.
   */
  private endedByItself(state: EndRecord['state'], error: string | null, failure: boolean): void {
    const cmd = this.command;
    const policy = cmd?.spec.restart_policy ?? 'never';
    const restart =
      cmd !== null &&
      cmd.desired !== 'stopped' &&
      (policy === 'always' || (policy === 'on-failure' && failure)) &&
      !this.deleting &&
      !this.closing;
    // Scheduled first, so that every report of the end already says the VM will be back.
    if (restart) this.scheduleRestart();
    this.setState(state, error);
    this.recordEnd(state, restart);
  }

  private recordEnd(state: EndRecord['state'], restart: boolean): void {
    const end: EndRecord = { generation: this.generation, state, error: this.error, restart };
    void this.enqueue(() => writeJsonAtomic(path.join(this.vmDir, ENDED_FILE), end));
  }

  /** How the VM ended by itself under the command of `generation`; null when it did not. */
  private async endOf(generation: number): Promise<EndRecord | null> {
    const end = (await readJsonFile(path.join(this.vmDir, ENDED_FILE)).catch(() => null)) as EndRecord | null;
    return end?.generation === generation && (end.state === 'failed' || end.state === 'stopped') ? end : null;
  }

  private async containerEnded() {
    const tail = (await this.console?.tail(EXIT_MARKER_SCAN_BYTES).catch(() => null)) ?? Buffer.alloc(0);
    const ended = (await this.container?.vmmEnded(tail.toString('latin1'))) ?? null;
    this.deps.onChange();
    return ended;
  }

  private scheduleRestart(): void {
    const { minMs, maxMs, stableMs } = this.deps.backoff;
    if (Date.now() - this.startedAt >= stableMs) this.restartDelayMs = minMs;
    const delay = this.restartDelayMs;
    this.restartDelayMs = Math.min(delay * 2, maxMs);
    this.deps.log.info({ vmId: this.id, delayMs: delay }, 'restarting VM per its restart policy');
    this.restartPending = true;
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      void this.enqueue(() => this.restart());
    }, delay);
    this.restartTimer.unref();
  }

  private cancelRestart(): void {
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = null;
    this.restartPending = false;
  }

  private async restart(): Promise<void> {
    try {
      const cmd = this.command;
      if (!cmd || cmd.desired === 'stopped' || this.handle || this.deleting || this.closing) return;
      await this.boot(cmd, true);
      if (cmd.desired === 'paused' && this.handle) await this.pause();
    } finally {
      this.restartPending = false;
    }
  }

  /**
   * Stops the VMM; false (and state failed) when the driver could not. A graceful stop of a
   * guest still booting (it has a guest agent token but has not said it is up, and the VMM
   * started moments ago) gives it a few seconds to take the power button, not the whole
   * timeout: a guest that does not listen for it yet would only make the user wait. A graceful
   * stop that ended forced says so.
   */
  private async stopVmm(opts: ShutdownOptions): Promise<boolean> {
    const handle = this.handle;
    if (!handle) return true;
    this.stopRequested.add(handle);
    this.setState('stopping', null);
    // Only a guest that will say it is up (it has a guest agent token) can be told to be booting.
    const booting =
      opts.graceful &&
      !this.guestReady &&
      Date.now() - this.startedAt < BOOTING_MS &&
      (await hasGuestAgentToken(this.vmDir));
    const shutdown = booting ? { ...opts, timeoutMs: Math.min(opts.timeoutMs, BOOTING_STOP_GRACE_MS) } : opts;
    let note: string | null = null;
    try {
      const { graceful } =
        this.container && opts.graceful && (await this.stopContainerProcess(handle, opts.timeoutMs))
          ? { graceful: true }
          : await this.driverOf(handle).shutdown(handle, shutdown);
      this.deps.log.info({ vmId: this.id, graceful, booting }, 'VM stopped');
      if (opts.graceful && !graceful)
        note = booting
          ? `stopped by force: the guest was still booting and did not take the power button within ${shutdown.timeoutMs / 1000} s`
          : `stopped by force: the guest did not shut down within ${shutdown.timeoutMs / 1000} s`;
    } catch (err) {
      this.stopRequested.delete(handle);
      this.setState('failed', `stop failed: ${errorMessage(err)}`);
      return false;
    }
    if (this.handle === handle) this.handle = null;
    if (!this.deleting) this.consoleRoom.end('vm-stopped', 'the VM was stopped');
    await this.forgetRun();
    this.setState('stopped', note);
    return true;
  }

  /**
   * Asks the container's process to stop (SIGTERM, SIGKILL after the timeout) through the guest
   * agent; the init powers the VM off once it has exited. False when the guest agent cannot be
   * reached or the VM does not end in time (then the driver stops it).
   */
  private async stopContainerProcess(handle: VmHandle, timeoutMs: number): Promise<boolean> {
    try {
      const guest = await this.guest.get(2_000);
      guest.stopWorkload(15, Math.max(1, Math.ceil(timeoutMs / 1000)));
    } catch {
      return false;
    }
    const timeout = new AbortController();
    const ended = await Promise.race([
      handle.exited.then(() => true),
      sleep(timeoutMs + CONTAINER_STOP_GRACE_MS, false, { signal: timeout.signal }).catch(() => false),
    ]);
    timeout.abort();
    return ended;
  }

  private async pause(): Promise<void> {
    const handle = this.handle;
    if (!handle) return;
    this.setState('pausing', null);
    // A paused guest cannot answer: whether it runs a guest agent (its clones can be re-identified) is asked now.
    if (!this.guestAnswered && !this.guestSilent && (await hasGuestAgentToken(this.vmDir)))
      await this.guestAgentAnswers();
    try {
      await this.driverOf(handle).pause(handle);
      this.vmmPaused = true;
      if (this.handle === handle) this.setState('paused', null);
    } catch (err) {
      if (this.handle === handle) this.setState('running', `pause failed: ${errorMessage(err)}`);
    }
  }

  /**
   * The VMM paused the guest by itself (QEMU: a write its host cannot complete, e.g. the disk is
   * full) or runs it again (space came back): shown as paused with the reason, or running with
   * what resumed it. A stop under way keeps showing stopping.
   */
  private onVmmPause(handle: VmHandle, event: VmmPauseEvent): void {
    if (this.handle !== handle || this.stopRequested.has(handle)) return;
    this.vmmPaused = event.kind === 'paused';
    if (event.kind === 'paused') this.vmmPauses++;
    this.deps.log.warn({ vmId: this.id, event }, 'the VMM paused or resumed the guest by itself');
    if (event.kind === 'paused') this.setState('paused', event.reason);
    else this.setState('running', event.note);
  }

  private async resume(): Promise<void> {
    const handle = this.handle;
    if (!handle) return;
    const pauses = this.vmmPauses;
    try {
      await this.driverOf(handle).resume(handle);
      // Paused again at once (its disk is still full): the pause said why.
      if (this.vmmPauses !== pauses) return;
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

/** The protocol's view of a snapshot record (without the agent's own fields). */
export function publicSnapshot(r: SnapshotRecord): AgentSnapshot {
  return {
    id: r.id,
    vm_id: r.vm_id,
    status: r.status,
    type: r.type,
    parent_id: r.parent_id,
    vmm: r.vmm,
    vcpu: r.vcpu,
    mem_mib: r.mem_mib,
    size_bytes: r.size_bytes,
    sizes: r.sizes,
    guest_agent: r.guest_agent,
    error: r.error,
    created_at: r.created_at,
  };
}

function imageDigests(spec: AgentVmCommand['spec']): string[] {
  const digests = new Set<string>();
  for (const ref of [spec.kernel, spec.initrd, spec.rootfs]) {
    if (ref?.sha256) digests.add(ref.sha256);
    if (ref?.vmlinux) digests.add(ref.vmlinux.sha256);
  }
  return [...digests];
}

/** The guest's /proc/meminfo, /proc/loadavg, /proc/uptime and process count, as `stats()` prints them. */
export function parseGuestProc(text: string): AgentVmStats['guest'] {
  const kib = (key: string) =>
    Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? Number.NaN) * 1024;
  const lines = text.trim().split('\n');
  const load = lines.find((l) => /^\d+\.\d+ \d+\.\d+ \d+\.\d+ \d+\/\d+/.test(l));
  const uptime = lines.find((l) => /^\d+\.\d+ \d+\.\d+$/.test(l));
  const processes = Number(lines.at(-1)?.trim());
  const stats = {
    mem_total_bytes: kib('MemTotal'),
    mem_available_bytes: kib('MemAvailable'),
    load_1m: Number(load?.split(' ')[0]),
    uptime_s: Number(uptime?.split(' ')[0]),
    processes,
  };
  return Object.values(stats).every(Number.isFinite) ? stats : null;
}

/** The console output of the last boot: from the last kernel banner on (all of it when none). */
export function lastBoot(text: string): string {
  const at = text.lastIndexOf('Linux version ');
  return at < 0 ? text : text.slice(at);
}

/** The last `n` non-empty lines of `text`, without terminal control sequences. */
export function lastLines(text: string, n: number): string {
  return (
    text
      // biome-ignore lint/suspicious/noControlCharactersInRegex: stripping escape sequences is the point
      .replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '')
      .split(/\r?\n/)
      .map((l) => l.replace(/\r/g, '').trimEnd())
      .filter((l) => l.length > 0)
      .slice(-n)
      .join('\n')
  );
}
