import type { ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { constants } from 'node:fs';
import { access, mkdir, open, readFile, rmdir, stat, truncate, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { inspectKernel } from '@nqvm/api/kernel';
import { type CgroupLayout, detectCgroups } from '../../host/cgroups';
import { type PipelineStep, runPipeline } from '../pipeline';
import type {
  DriverInfo,
  RunRecord,
  ShutdownOptions,
  SnapshotFiles,
  VmExit,
  VmHandle,
  VmmDriver,
  VmSpec,
} from '../types';
import { FirecrackerApiClient, FirecrackerApiError, FirecrackerConnectionError } from './api-client';
import {
  capabilitiesFor,
  type FirecrackerCapabilities,
  FirecrackerFeatureUnavailableError,
  MIN_FIRECRACKER_VERSION,
  parseVersion,
  versionAtLeast,
} from './capabilities';
import { createConsoleFifo, openConsoleFds, rotateConsoleLog } from './console';
import { chownIfRoot, cloneFile, JailIdAllocator, moveFile, removeJail, stageIntoJail } from './jail';
import { copyWrittenExtents, mergeMemoryLayers } from './memory-merge';
import {
  exitWithin,
  isSameProcess,
  kill,
  MAX_SOCKET_PATH,
  type ProcessExit,
  readProcStat,
  runTool,
  spawnDetached,
  waitForSocket,
  watchProcess,
} from './process';
import { checkFirecrackerIds, firecrackerId, sameFirecrackerId } from './resource-id';
import {
  readSnapshotManifest,
  resolveSnapshotChain,
  SNAPSHOT_MANIFEST,
  SnapshotChainError,
  type SnapshotLayer,
  type SnapshotManifest,
} from './snapshot-chain';
import { type FirecrackerRecordExtra, pathsFromRecord, recordExtra, type VmPaths, vmPaths } from './vm-paths';

type LogFn = (obj: Record<string, unknown>, msg?: string) => void;
/** pino-compatible. */
export interface FirecrackerDriverLogger {
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  error: LogFn;
}

export interface FirecrackerDriverOptions {
  /** The firecracker binary. */
  firecrackerBin: string;
  /** The jailer binary: when set, every VM runs under the jailer (production mode). */
  jailerBin?: string;
  /** Jailer `--chroot-base-dir`; keep it on the VM disks' file system so disks hard-link. */
  chrootBaseDir?: string;
  /** uid = gid handed to each jailed VM, one per VM, from this range. */
  jailIds?: { first: number; count: number };
  /** cgroup v2 parent of the VM cgroups (jailer `--parent-cgroup`). */
  parentCgroup?: string;
  /** Where cgroup v2 is mounted, to remove a VM's cgroup after it ends (without `cgroupLayout`). */
  cgroupRoot?: string;
  /**
   * The host's cgroups, for the jailer's `--cgroup-version` and the limits' file names (v1:
   * `cpu.cfs_quota_us`, `memory.limit_in_bytes`; v2: `cpu.max`, `memory.max`). `detect` reads
   * the mount table; default: v2 at `cgroupRoot`.
   */
  cgroupLayout?: CgroupLayout | 'detect';
  /** memory.max = guest memory + this, in MiB (VMM overhead is ~5 MiB; page cache and I/O need more). */
  memoryOverheadMib?: number;
  /** Network namespace for a VM (jailer `--netns`). */
  netnsPath?: (spec: VmSpec) => string | undefined;
  logger?: FirecrackerDriverLogger;
  /** How long the API socket may take to appear after spawn. */
  socketTimeoutMs?: number;
  requestTimeoutMs?: number;
  /** Snapshot create/load write or map the whole guest memory. */
  snapshotTimeoutMs?: number;
  /** Boot with dirty page tracking (needed for Diff snapshots before 1.13; costs some speed). */
  trackDirtyPages?: boolean;
  /** Writeback honours guest flushes; Unsafe (Firecracker's default) ignores them. */
  diskCacheType?: 'Unsafe' | 'Writeback';
  /** The console log is rotated past this size. */
  consoleLogMaxBytes?: number;
  /** KVM usability as proved by the agent (a test boot); by default /dev/kvm must be read-writable. */
  probeKvm?: () => Promise<boolean>;
}

/** Figures of one boot or restore. */
export interface BootStats {
  /** API requests sent. */
  requests: number;
  /** From spawn to InstanceStart (or snapshot load) answered. */
  spawnToStartMs: number;
  totalMs: number;
  steps: { name: string; ms: number }[];
}

export interface FirecrackerVmHandle extends VmHandle {
  readonly stats: BootStats;
  readonly version: string;
}

/**
 * What the guest memory of a VMM run builds on, hence the base of its next Diff snapshot (the
 * dirty pages are counted from boot, load or the last snapshot). Unknown for a VM adopted
 * without a lineage record or restored from a snapshot without a manifest: no Diff then.
 */
type MemoryLineage =
  | { kind: 'booted' }
  /** `files`: that snapshot with its own chain, the `base` of the run's next Diff. */
  | { kind: 'snapshot'; id: string; files: SnapshotFiles }
  | { kind: 'unknown' };

/** The lineage file: a lineage belongs to one process. */
interface LineageRecord {
  pid: number;
  pidStartTime: number;
  lineage: MemoryLineage;
}

const MMDS_MAX_BYTES = 51_200;
const METRICS_MAX_BYTES = 1024 * 1024;
const noop = () => {};
const silent: FirecrackerDriverLogger = { debug: noop, info: noop, warn: noop, error: noop };

interface VmRuntime {
  record: RunRecord;
  paths: VmPaths;
  api: FirecrackerApiClient;
  caps: FirecrackerCapabilities;
  trackDirtyPages: boolean;
  lineage: MemoryLineage;
  stopping: 'graceful' | 'forced' | null;
  exited: Promise<VmExit>;
  stopWatch: () => void;
  rotation: NodeJS.Timeout;
}

/** State carried through the steps of one boot or restore. */
interface Launch {
  spec: VmSpec;
  paths: VmPaths;
  api: FirecrackerApiClient;
  caps: FirecrackerCapabilities | null;
  child: ChildProcess | null;
  pid: number;
  startTime: number;
  spawnedAt: number;
  startedAt: number;
  /** How the VMM ended when it died during the launch: its log and stderr then stay. */
  died: ProcessExit | null;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

async function truncateIfOver(path: string, max: number): Promise<void> {
  try {
    if ((await stat(path)).size > max) await truncate(path, 0);
  } catch {
    // Gone with its VM.
  }
}

/** The NIC a snapshot recorded for a spec NIC (ids as Firecracker held them, see resource-id). */
function recordedNic(
  manifest: SnapshotManifest | null,
  specId: string,
): { iface_id: string; host_dev_name: string } | undefined {
  const nics = (manifest?.vmConfig['network-interfaces'] ?? []) as {
    iface_id: string;
    host_dev_name: string;
  }[];
  return nics.find((x) => sameFirecrackerId(x.iface_id, specId));
}

function recordedVsock(manifest: SnapshotManifest | null): string | undefined {
  return (manifest?.vmConfig.vsock as { uds_path?: string } | undefined)?.uds_path;
}

/** Firecracker logs each API request and its answer: noise in a post-mortem. */
const ROUTINE_LOG_LINE = /The API server received a|The request was executed successfully/;
const LOG_TIMESTAMP = /^\d{4}-\d\d-\d\dT[\d:.]+Z?\s+/;

/**
 * The last lines of the VMM's stderr and log (its routine request lines left out), on one line,
 * short enough for a VM's last_error (which keeps 2000 characters).
 */
async function vmmOutput(paths: VmPaths): Promise<string> {
  const parts: string[] = [];
  for (const [name, path, chars] of [
    ['stderr', paths.stderrLog, 400],
    ['firecracker.log', paths.logPath, 900],
  ] as const) {
    const lines = (await tailText(path, 4096))
      .split('\n')
      .map((l) => l.trim().replace(LOG_TIMESTAMP, ''))
      .filter((l) => l !== '' && !ROUTINE_LOG_LINE.test(l));
    const text = lines.join(' | ');
    if (text) parts.push(`${name}: ${text.length > chars ? `...${text.slice(-chars)}` : text}`);
  }
  return parts.join('; ');
}

/** The end of a file, from the first whole line in its last `bytes`. */
async function tailText(path: string, bytes = 2048): Promise<string> {
  try {
    const fh = await open(path, 'r');
    try {
      const size = (await fh.stat()).size;
      const len = Math.min(size, bytes);
      const buf = Buffer.alloc(len);
      await fh.read(buf, 0, len, size - len);
      let text = buf.toString('utf8');
      const nl = text.indexOf('\n');
      if (len < size && nl >= 0 && nl < text.length - 1) text = text.slice(nl + 1);
      return text.trim();
    } finally {
      await fh.close();
    }
  } catch {
    return '';
  }
}

/**
 * VmmDriver for Firecracker 1.1+: the API over its Unix socket, version-aware, optionally under
 * the jailer; console on a FIFO and a log file so nothing but Firecracker itself has to outlive
 * the agent.
 *
 * @example
 * const fc = new FirecrackerDriver({ firecrackerBin: '/usr/bin/firecracker', jailerBin: '/usr/bin/jailer' });
 * const vm = await fc.boot(spec);
 * await fc.shutdown(vm, { graceful: true, timeoutMs: 10_000 });
 */
export class FirecrackerDriver implements VmmDriver {
  readonly kind = 'firecracker' as const;
  private readonly log: FirecrackerDriverLogger;
  private readonly ids: JailIdAllocator;
  private layout: Promise<CgroupLayout> | null = null;
  private readonly runtimes = new Map<string, VmRuntime>();
  /** Cleanup of a VM that just ended: a new boot of the same VM waits for it. */
  private readonly cleanups = new Map<string, Promise<unknown>>();
  private probed: Promise<DriverInfo> | null = null;

  constructor(private readonly opts: FirecrackerDriverOptions) {
    this.log = opts.logger ?? silent;
    const range = opts.jailIds ?? { first: 1_500_000, count: 65_536 };
    this.ids = new JailIdAllocator(range.first, range.count);
  }

  private get jailed(): boolean {
    return this.opts.jailerBin !== undefined;
  }

  private get chrootBaseDir(): string {
    return this.opts.chrootBaseDir ?? '/srv/jailer';
  }

  // ---- probe ---------------------------------------------------------------------------------

  /** Versions of firecracker (and jailer), refusing a mismatch; features of that version. */
  async probe(): Promise<DriverInfo> {
    this.probed = this.doProbe();
    return this.probed;
  }

  private async doProbe(): Promise<DriverInfo> {
    const base: DriverInfo = {
      kind: 'firecracker',
      available: false,
      version: null,
      binary: this.opts.firecrackerBin,
      kvm: false,
      features: [],
    };
    let version: string;
    try {
      const out = await runTool(this.opts.firecrackerBin, ['--version']);
      const m = /Firecracker v(\d+\.\d+\.\d+)/.exec(out);
      if (!m) return { ...base, reason: `unexpected --version output: ${out.trim().slice(0, 200)}` };
      version = m[1]!;
    } catch (err) {
      return { ...base, reason: (err as Error).message };
    }
    const info: DriverInfo = { ...base, version };
    if (!versionAtLeast(version, MIN_FIRECRACKER_VERSION)) {
      return { ...info, reason: `Firecracker ${version} is older than ${MIN_FIRECRACKER_VERSION}` };
    }
    if (this.opts.jailerBin) {
      try {
        const out = await runTool(this.opts.jailerBin, ['--version']);
        const jailer = /Jailer v(\d+\.\d+\.\d+)/.exec(out)?.[1];
        if (jailer !== version) {
          return {
            ...info,
            reason: `jailer v${jailer ?? '?'} and firecracker v${version} differ: use one release`,
          };
        }
      } catch (err) {
        return { ...info, reason: `jailer: ${(err as Error).message}` };
      }
    }
    const caps = capabilitiesFor(version);
    const features: string[] = ['snapshot', 'mmds', 'vsock', ...caps.features];
    if (this.opts.trackDirtyPages || caps.has('diff-snapshot-without-dirty-tracking'))
      features.push('diff-snapshot');
    if (this.jailed) features.push('jailer');
    const kvm = this.opts.probeKvm
      ? await this.opts.probeKvm().catch(() => false)
      : await access('/dev/kvm', constants.R_OK | constants.W_OK).then(
          () => true,
          () => false,
        );
    return { ...info, available: true, kvm, features };
  }

  private async version(): Promise<string> {
    const info = await (this.probed ?? this.probe());
    if (!info.available || !info.version) {
      throw new Error(`Firecracker is unavailable: ${info.reason ?? 'unknown reason'}`);
    }
    return info.version;
  }

  // ---- boot ------------------------------------------------------------------------------------

  async boot(spec: VmSpec, signal?: AbortSignal): Promise<FirecrackerVmHandle> {
    this.checkSpec(spec);
    const version = await this.version();
    const launch = await this.newLaunch(spec);
    const trackDirtyPages = this.opts.trackDirtyPages ?? false;
    const steps: PipelineStep[] = [
      ...this.launchSteps(launch, version, { kind: 'boot' }),
      // First: what Firecracker says about the rest of the configuration goes to its log.
      ...this.observabilitySteps(launch),
      {
        name: 'boot-source',
        run: () =>
          launch.api.put('/boot-source', {
            kernel_image_path: launch.paths.api(launch.paths.staged?.kernel ?? spec.kernelPath),
            boot_args: spec.bootArgs,
            ...(spec.initrdPath
              ? { initrd_path: launch.paths.api(launch.paths.staged?.initrd ?? spec.initrdPath) }
              : {}),
          }),
      },
      {
        name: 'machine-config',
        run: () =>
          launch.api.put('/machine-config', {
            vcpu_count: spec.vcpu,
            mem_size_mib: spec.memMib,
            smt: false,
            track_dirty_pages: trackDirtyPages,
          }),
      },
      {
        name: 'drives',
        run: async () => {
          const ordered = [...spec.disks].sort((a, b) => Number(b.isRoot) - Number(a.isRoot));
          for (const d of ordered) {
            await launch.api.put(`/drives/${firecrackerId(d.id)}`, {
              drive_id: firecrackerId(d.id),
              path_on_host: launch.paths.api(launch.paths.staged?.disk(d.id) ?? d.path),
              is_root_device: d.isRoot,
              is_read_only: d.readOnly,
              cache_type: d.readOnly ? 'Unsafe' : (this.opts.diskCacheType ?? 'Writeback'),
            });
          }
        },
      },
      {
        name: 'network-interfaces',
        run: async () => {
          for (const n of spec.nics) {
            await launch.api.put(`/network-interfaces/${firecrackerId(n.id)}`, {
              iface_id: firecrackerId(n.id),
              host_dev_name: n.tap,
              guest_mac: n.mac,
            });
          }
        },
      },
      ...(spec.vsockCid !== undefined
        ? [
            {
              name: 'vsock',
              run: () =>
                launch.api.put('/vsock', {
                  guest_cid: spec.vsockCid,
                  uds_path: launch.paths.api(launch.paths.vsockPath),
                }),
            },
          ]
        : []),
      {
        name: 'entropy',
        run: async () => {
          if (launch.caps?.has('entropy')) await launch.api.put('/entropy', {});
          else this.log.info({ vmId: spec.id, version }, 'entropy device unavailable before Firecracker 1.4');
        },
      },
      ...(this.servesMmds(spec)
        ? [
            {
              name: 'mmds',
              run: async () => {
                // Before start: the MMDS configuration is refused once the VM runs.
                await launch.api.put('/mmds/config', {
                  network_interfaces: spec.nics.map((n) => firecrackerId(n.id)),
                  version: 'V2',
                });
                await launch.api.put('/mmds', spec.mmds);
              },
            },
          ]
        : []),
      {
        name: 'instance-start',
        run: async () => {
          await launch.api.put('/actions', { action_type: 'InstanceStart' });
          launch.startedAt = performance.now();
        },
      },
    ];
    return this.runLaunch(launch, steps, version, { trackDirtyPages, lineage: { kind: 'booted' } }, signal);
  }

  private checkSpec(spec: VmSpec): void {
    // Firecracker's --id and the jail folder take [a-zA-Z0-9-]{1,64}.
    if (!/^[a-zA-Z0-9-]{1,64}$/.test(spec.id))
      throw new Error(`VM id ${spec.id} is not a valid Firecracker id`);
    if (spec.vcpu < 1 || spec.vcpu > 32) throw new Error(`Firecracker takes 1..32 vCPUs, not ${spec.vcpu}`);
    if (spec.memMib < 1) throw new Error(`memory size ${spec.memMib} MiB is invalid`);
    for (const d of spec.disks) {
      if (d.format !== 'raw')
        throw new Error(`disk ${d.id}: Firecracker reads raw disks only, not ${d.format}`);
    }
    if (spec.disks.filter((d) => d.isRoot).length > 1) throw new Error('more than one root disk');
    checkFirecrackerIds('disk', spec.disks);
    checkFirecrackerIds('NIC', spec.nics);
    if (spec.mmds) {
      const size = Buffer.byteLength(JSON.stringify(spec.mmds));
      if (size > MMDS_MAX_BYTES)
        throw new Error(`MMDS data is ${size} bytes, over Firecracker's ${MMDS_MAX_BYTES}`);
    }
  }

  /** MMDS answers only through a network interface: without one its data has no reader. */
  private servesMmds(spec: VmSpec): boolean {
    if (!spec.mmds) return false;
    if (spec.nics.length > 0) return true;
    this.log.info({ vmId: spec.id }, 'MMDS not configured: the VM has no network interface to serve it on');
    return false;
  }

  private async newLaunch(spec: VmSpec): Promise<Launch> {
    if (this.runtimes.has(spec.id)) throw new Error(`VM ${spec.id} is already running`);
    await this.cleanups.get(spec.id);
    const id = this.jailed ? this.ids.allocate(spec.id) : 0;
    const paths = vmPaths(
      spec.vmDir,
      this.jailed
        ? {
            chrootBaseDir: this.chrootBaseDir,
            firecrackerBin: this.opts.firecrackerBin,
            vmId: spec.id,
            uid: id,
            gid: id,
          }
        : null,
    );
    const api = new FirecrackerApiClient(paths.apiSocket, this.opts.requestTimeoutMs);
    return {
      spec,
      paths,
      api,
      caps: null,
      child: null,
      pid: 0,
      startTime: 0,
      spawnedAt: 0,
      startedAt: 0,
      died: null,
    };
  }

  /** prepare, spawn, wait-socket: shared by boot and restore. */
  private launchSteps(
    launch: Launch,
    version: string,
    mode: { kind: 'boot' } | { kind: 'restore'; snap: SnapshotFiles; layers: SnapshotLayer[] },
  ): PipelineStep[] {
    const { spec, paths } = launch;
    const created: string[] = [];
    const layers = mode.kind === 'restore' ? mode.layers : [];
    const manifest = layers.at(-1)?.manifest ?? null;
    const merging = layers.length > 1;
    return [
      {
        name: 'prepare',
        run: async () => {
          // Firecracker binds these names itself (inside the chroot when jailed).
          for (const sock of [paths.api(paths.apiSocket), paths.api(paths.vsockPath)]) {
            if (Buffer.byteLength(sock) > MAX_SOCKET_PATH) {
              throw new Error(`socket path ${sock} is longer than ${MAX_SOCKET_PATH} bytes`);
            }
          }
          if (mode.kind === 'restore') this.checkRestoreVsock(manifest, paths, version);
          if (mode.kind === 'boot') {
            const kernel = await inspectKernel(spec.kernelPath);
            if (kernel.format !== 'elf') {
              throw new Error(
                `${spec.kernelPath} is ${kernel.format === 'bzimage' ? `a bzImage (${kernel.compression ?? 'unknown'} payload): extract its vmlinux with extractVmlinux()` : 'not a kernel image'}; Firecracker loads an ELF vmlinux`,
              );
            }
          }
          await mkdir(spec.vmDir, { recursive: true });
          await this.clearStale(paths);
          // The memory a Diff restore merged was mapped by the VM's previous run only.
          await unlink(paths.restoredMemory).catch(() => {});
          if (mode.kind === 'restore') {
            await this.restoreDisks(spec, paths, manifest, dirname(mode.snap.statePath));
          }
          if (paths.jail && paths.staged) {
            const { root, uid, gid } = paths.jail;
            await mkdir(root, { recursive: true });
            await chownIfRoot(root, uid, gid);
            if (mode.kind === 'boot') {
              await stageIntoJail(spec.kernelPath, paths.staged.kernel, false);
              if (spec.initrdPath) await stageIntoJail(spec.initrdPath, paths.staged.initrd, false);
            } else {
              await mkdir(paths.staged.snapshotDir, { recursive: true });
              await stageIntoJail(mode.snap.statePath, join(paths.staged.snapshotDir, 'vmstate'), false);
              if (!merging) {
                await stageIntoJail(mode.snap.memPath!, join(paths.staged.snapshotDir, 'memory'), false);
              }
            }
            for (const d of spec.disks) {
              const dst = paths.staged.disk(d.id);
              await stageIntoJail(d.path, dst, !d.readOnly);
              // Same inode as the VM's own disk file: the jailed uid must be able to write it, and
              // to read the VM's own read-only drives (the config drive is 0600: it holds secrets).
              if (!d.readOnly || d.path.startsWith(`${spec.vmDir}/`)) await chownIfRoot(dst, uid, gid);
            }
          }
          // Firecracker opens logger and metrics targets without creating them.
          for (const f of [paths.logPath, paths.metricsPath]) {
            await writeFile(f, '');
            if (paths.jail) await chownIfRoot(f, paths.jail.uid, paths.jail.gid);
          }
          created.push(paths.logPath, paths.metricsPath, paths.consoleFifo, paths.stderrLog);
          if (!(await exists(paths.consoleLog))) created.push(paths.consoleLog);
          await createConsoleFifo(paths.consoleFifo);
        },
        undo: async () => {
          const output = launch.died ? await this.keepVmmOutput(paths) : [];
          for (const f of [...created, paths.apiSocket, paths.vsockPath]) {
            if (!output.includes(f)) await unlink(f).catch(() => {});
          }
          if (paths.jail) {
            await removeJail(paths.jail);
            this.ids.release(spec.id);
          }
        },
      },
      ...(merging ? [this.memoryMergeStep(paths, layers)] : []),
      {
        name: 'spawn',
        run: async () => {
          const fds = openConsoleFds(paths.consoleFifo, paths.consoleLog, paths.stderrLog);
          const [bin, args] = this.commandLine(spec, paths, paths.jail ? await this.cgroups() : null);
          launch.spawnedAt = performance.now();
          launch.child = await spawnDetached(bin, args, fds);
          launch.pid = launch.child.pid!;
          const st = await readProcStat(launch.pid);
          if (!st) throw new Error(`${basename(bin)} exited at once`);
          launch.startTime = st.startTime;
          this.log.debug({ vmId: spec.id, pid: launch.pid, bin, args }, 'firecracker spawned');
        },
        undo: async () => {
          const child = launch.child;
          if (!child || child.exitCode !== null || child.signalCode !== null) return;
          const gone = new Promise((r) => child.once('exit', r));
          if (await isSameProcess(launch.pid, launch.startTime)) kill(launch.pid, 'SIGKILL');
          await Promise.race([gone, sleep(5000)]);
        },
      },
      {
        name: 'wait-socket',
        run: async () => {
          const child = launch.child!;
          await waitForSocket(
            paths.apiSocket,
            this.opts.socketTimeoutMs ?? 5000,
            () => child.exitCode !== null || child.signalCode !== null,
          );
          const info = await launch.api.get<{ vmm_version: string; state: string }>('/');
          const running = parseVersion(info.vmm_version)?.join('.') ?? info.vmm_version;
          if (running !== version) {
            throw new Error(
              `the API reports Firecracker ${info.vmm_version}, the binary said ${version}: probe again`,
            );
          }
          launch.caps = capabilitiesFor(running);
        },
      },
    ];
  }

  /**
   * A Diff chain becomes one memory file in the VM's folder (the snapshots stay untouched), which
   * the VM then maps as a Full snapshot's memory.
   */
  private memoryMergeStep(paths: VmPaths, layers: SnapshotLayer[]): PipelineStep {
    return {
      name: 'memory-merge',
      run: async () => {
        const stats = await mergeMemoryLayers(
          layers.map((l) => l.files.memPath),
          paths.restoredMemory,
        );
        this.log.info({ vmDir: paths.vmDir, ...stats }, 'snapshot memory merged from its Diff chain');
        if (paths.jail && paths.staged) {
          await chownIfRoot(paths.restoredMemory, paths.jail.uid, paths.jail.gid);
          await stageIntoJail(paths.restoredMemory, join(paths.staged.snapshotDir, 'memory'), false);
        }
      },
      undo: () => unlink(paths.restoredMemory).catch(() => {}),
    };
  }

  /** logger and metrics: the only configuration a snapshot load allows before it. */
  private observabilitySteps(launch: Launch): PipelineStep[] {
    return [
      {
        name: 'logger',
        run: () =>
          launch.api.put('/logger', {
            log_path: launch.paths.api(launch.paths.logPath),
            level: launch.caps!.loggerLevel,
          }),
      },
      {
        name: 'metrics',
        run: () => launch.api.put('/metrics', { metrics_path: launch.paths.api(launch.paths.metricsPath) }),
      },
    ];
  }

  /** The cgroup layout the jailer works in (detected once). */
  private cgroups(): Promise<CgroupLayout> {
    const o = this.opts.cgroupLayout;
    const v2 = (root: string): CgroupLayout => ({
      version: 2,
      mounts: { cpu: root, memory: root, pids: root },
    });
    this.layout ??=
      o === 'detect'
        ? detectCgroups().then((l) => l ?? v2('/sys/fs/cgroup'))
        : Promise.resolve(o ?? v2(this.opts.cgroupRoot ?? '/sys/fs/cgroup'));
    return this.layout;
  }

  private commandLine(spec: VmSpec, paths: VmPaths, layout: CgroupLayout | null): [string, string[]] {
    if (!paths.jail) {
      return [this.opts.firecrackerBin, ['--api-sock', paths.apiSocket, '--id', spec.id]];
    }
    const memory = (spec.memMib + (this.opts.memoryOverheadMib ?? 64)) * 1024 * 1024;
    const args = [
      '--id',
      spec.id,
      '--exec-file',
      this.opts.firecrackerBin,
      '--uid',
      String(paths.jail.uid),
      '--gid',
      String(paths.jail.gid),
      '--chroot-base-dir',
      this.chrootBaseDir,
      ...jailerCgroupArgs(layout?.version ?? 2, spec.vcpu * 100_000, 100_000, memory),
    ];
    if (this.opts.parentCgroup) args.push('--parent-cgroup', this.opts.parentCgroup);
    const netns = this.opts.netnsPath?.(spec);
    if (netns) args.push('--netns', netns);
    // Never --daemonize: it sends Firecracker's stdio, hence the console, to /dev/null.
    return [this.opts.jailerBin!, [...args, '--', '--api-sock', paths.api(paths.apiSocket)]];
  }

  /** A leftover socket of a live Firecracker means the VM runs: refuse; otherwise clear it. */
  private async clearStale(paths: VmPaths): Promise<void> {
    if (await exists(paths.apiSocket)) {
      const live = await new FirecrackerApiClient(paths.apiSocket, 500).get('/').then(
        () => true,
        () => false,
      );
      if (live) throw new Error(`a Firecracker already answers on ${paths.apiSocket}`);
      await unlink(paths.apiSocket).catch(() => {});
    }
    // Firecracker binds the vsock socket itself and fails if the path exists.
    await unlink(paths.vsockPath).catch(() => {});
    if (paths.jail) await removeJail(paths.jail);
  }

  private async runLaunch(
    launch: Launch,
    steps: PipelineStep[],
    version: string,
    memory: { trackDirtyPages: boolean; lineage: MemoryLineage },
    signal?: AbortSignal,
  ): Promise<FirecrackerVmHandle> {
    const t0 = performance.now();
    const timings: { name: string; ms: number }[] = [];
    const timed = steps.map((s) => ({
      ...s,
      run: async () => {
        const start = performance.now();
        try {
          await s.run();
        } catch (err) {
          throw await this.withVmmDeath(launch, err);
        }
        timings.push({ name: s.name, ms: performance.now() - start });
      },
    }));
    try {
      await runPipeline(timed, signal);
    } catch (err) {
      this.log.error({ vmId: launch.spec.id, err: (err as Error).message }, 'firecracker launch failed');
      throw err;
    }
    const stats: BootStats = {
      requests: launch.api.requests,
      spawnToStartMs: launch.startedAt - launch.spawnedAt,
      totalMs: performance.now() - t0,
      steps: timings,
    };
    const handle = await this.track(launch, version, memory, stats);
    // The whole configuration as Firecracker holds it: a record worth keeping beside the VM.
    await launch.api
      .get('/vm/config')
      .then((cfg) => writeFile(join(launch.spec.vmDir, 'vm-config.json'), JSON.stringify(cfg, null, 2)))
      .catch((err) => this.log.warn({ vmId: launch.spec.id, err: String(err) }, 'cannot save vm config'));
    this.log.info({ vmId: launch.spec.id, pid: launch.pid, version, ...stats }, 'firecracker VM running');
    return handle;
  }

  /**
   * A VMM that dies during its launch leaves the step talking to it a broken connection
   * ("socket hang up"): the error then says how it ended and what it wrote last, which the
   * launch's undo keeps (see keepVmmOutput). A VMM that answered, or still runs, is left alone.
   */
  private async withVmmDeath(launch: Launch, err: unknown): Promise<unknown> {
    const child = launch.child;
    if (!child || err instanceof FirecrackerApiError) return err;
    const gone = child.exitCode !== null || child.signalCode !== null;
    const broken = err instanceof FirecrackerConnectionError && !err.timedOut;
    if (!gone && !broken) return err;
    // The connection breaks a moment before the exit is reported.
    const exit = await exitWithin(child, 5000);
    if (!exit) return err;
    launch.died = exit;
    const how = exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.code}`;
    const output = await vmmOutput(launch.paths);
    const message = `${(err as Error).message}; Firecracker ${how}${output ? `, its last output: ${output}` : ''}`;
    return new Error(message, { cause: err });
  }

  /**
   * The VMM's log and stderr of a failed launch stay in the VM folder for a post-mortem (the
   * jailed log is copied out of the jail, which goes). Returns the paths to keep.
   */
  private async keepVmmOutput(paths: VmPaths): Promise<string[]> {
    if (!paths.jail) return [paths.logPath, paths.stderrLog];
    await readFile(paths.logPath)
      .then((b) => writeFile(join(paths.vmDir, 'firecracker.log'), b))
      .catch(() => {});
    return [paths.stderrLog];
  }

  private async track(
    launch: Launch,
    version: string,
    memory: { trackDirtyPages: boolean; lineage: MemoryLineage },
    stats: BootStats,
  ): Promise<FirecrackerVmHandle> {
    const { spec, paths } = launch;
    const record: RunRecord = {
      vmId: spec.id,
      generation: spec.generation,
      kind: 'firecracker',
      pid: launch.pid,
      pidStartTime: launch.startTime,
      vmDir: spec.vmDir,
      controlSocket: paths.apiSocket,
      consoleSocket: paths.consoleFifo,
      extra: recordExtra(
        paths,
        version,
        spec,
        memory.trackDirtyPages,
        paths.jail ? { chrootBaseDir: this.chrootBaseDir, firecrackerBin: this.opts.firecrackerBin } : null,
      ) as unknown as Record<string, unknown>,
    };
    const handle = this.attach(
      record,
      paths,
      launch.api,
      capabilitiesFor(version),
      memory,
      launch.child,
      stats,
    );
    await this.saveLineage(this.runtimes.get(spec.id)!);
    return handle;
  }

  private attach(
    record: RunRecord,
    paths: VmPaths,
    api: FirecrackerApiClient,
    caps: FirecrackerCapabilities,
    memory: { trackDirtyPages: boolean; lineage: MemoryLineage },
    child: ChildProcess | null,
    stats: BootStats,
  ): FirecrackerVmHandle {
    const watch = watchProcess(record.pid, record.pidStartTime, child ?? undefined);
    const maxLog = this.opts.consoleLogMaxBytes ?? 4 * 1024 * 1024;
    const rotation = setInterval(() => {
      void rotateConsoleLog(paths.consoleLog, maxLog).catch(() => {});
      // Metrics lines come every minute; only the last one is read, so older ones are dropped.
      void truncateIfOver(paths.metricsPath, METRICS_MAX_BYTES);
    }, 10_000);
    rotation.unref();
    const rt: VmRuntime = {
      record,
      paths,
      api,
      caps,
      trackDirtyPages: memory.trackDirtyPages,
      lineage: memory.lineage,
      stopping: null,
      stopWatch: watch.stop,
      rotation,
      exited: watch.exited.then((pe) => this.onExit(rt, pe)),
    };
    this.runtimes.set(record.vmId, rt);
    this.cleanups.set(record.vmId, rt.exited);
    return { record, exited: rt.exited, stats, version: caps.version, bootSteps: stats.steps };
  }

  private async onExit(rt: VmRuntime, pe: { code: number | null; signal: string | null }): Promise<VmExit> {
    clearInterval(rt.rotation);
    rt.stopWatch();
    const { paths, record } = rt;
    let reason: VmExit['reason'];
    if (rt.stopping === 'forced') reason = 'killed';
    else if (rt.stopping === 'graceful') reason = 'shutdown';
    else if (pe.code === 0) reason = 'shutdown';
    else if (pe.code === null && pe.signal === null) {
      // Adopted process: no exit status; Firecracker logs how it ended.
      reason = /exit_code=0\b/.test(await tailText(paths.logPath, 4096)) ? 'shutdown' : 'crashed';
    } else reason = 'crashed';
    const stderr = reason === 'crashed' ? await tailText(paths.stderrLog, 1024) : '';
    for (const f of [paths.apiSocket, paths.consoleFifo, paths.vsockPath, paths.lineageFile]) {
      await unlink(f).catch(() => {});
    }
    if (paths.jail) {
      // Keep Firecracker's own log beside the console for a post-mortem; the jail goes.
      await readFile(paths.logPath)
        .then((b) => writeFile(join(paths.vmDir, 'firecracker.log'), b))
        .catch(() => {});
      await removeJail(paths.jail).catch((err) => this.log.warn({ err: String(err) }, 'cannot remove jail'));
      // The jailer made the VM's group under each controller's mount (one mount under v2).
      const layout = await this.cgroups();
      for (const mount of new Set([layout.mounts.cpu, layout.mounts.memory])) {
        const cgroup = join(mount, this.opts.parentCgroup ?? basename(this.opts.firecrackerBin), record.vmId);
        await rmdir(cgroup).catch(() => {});
      }
      this.ids.release(record.vmId);
    }
    this.runtimes.delete(record.vmId);
    const exit: VmExit = {
      reason,
      code: pe.code,
      signal: pe.signal,
      ...(stderr ? { message: stderr } : {}),
    };
    this.log.info({ vmId: record.vmId, pid: record.pid, ...exit }, 'firecracker exited');
    return exit;
  }

  /** Keeps the lineage beside the VM so that an agent adopting the VM can still take Diffs. */
  private async saveLineage(rt: VmRuntime): Promise<void> {
    const rec: LineageRecord = {
      pid: rt.record.pid,
      pidStartTime: rt.record.pidStartTime,
      lineage: rt.lineage,
    };
    await writeFile(rt.paths.lineageFile, JSON.stringify(rec)).catch((err) =>
      this.log.warn({ vmId: rt.record.vmId, err: String(err) }, 'cannot save the snapshot lineage'),
    );
  }

  private async loadLineage(paths: VmPaths, record: RunRecord): Promise<MemoryLineage> {
    const rec = await readFile(paths.lineageFile, 'utf8').then(
      (t) => JSON.parse(t) as LineageRecord,
      () => null,
    );
    return rec?.pid === record.pid && rec.pidStartTime === record.pidStartTime
      ? rec.lineage
      : { kind: 'unknown' };
  }

  private runtime(h: VmHandle): VmRuntime {
    const rt = this.runtimes.get(h.record.vmId);
    if (!rt || rt.record.pid !== h.record.pid) throw new Error(`VM ${h.record.vmId} is not running`);
    return rt;
  }

  // ---- lifecycle ---------------------------------------------------------------------------------

  async pause(h: VmHandle): Promise<void> {
    await this.runtime(h).api.patch('/vm', { state: 'Paused' });
  }

  async resume(h: VmHandle): Promise<void> {
    await this.runtime(h).api.patch('/vm', { state: 'Resumed' });
  }

  /** Writes a metrics line now (Firecracker otherwise writes one a minute). */
  async flushMetrics(h: VmHandle): Promise<void> {
    await this.runtime(h).api.put('/actions', { action_type: 'FlushMetrics' });
  }

  /**
   * Graceful: Ctrl-Alt-Del (the guest reboots, which ends Firecracker), then SIGKILL after
   * timeoutMs (some 1.8-1.11 versions ignore Ctrl-Alt-Del on ACPI guests).
   */
  async shutdown(h: VmHandle, opts: ShutdownOptions): Promise<{ graceful: boolean }> {
    // The VMM is detached and unref'd: keep this process alive while we wait for its end.
    const keepAlive = setInterval(noop, 1000);
    try {
      return await this.stop(h, opts);
    } finally {
      clearInterval(keepAlive);
    }
  }

  private async stop(h: VmHandle, opts: ShutdownOptions): Promise<{ graceful: boolean }> {
    const rt = this.runtimes.get(h.record.vmId);
    if (!rt) return { graceful: (await h.exited).reason === 'shutdown' };
    if (opts.graceful) {
      rt.stopping = 'graceful';
      try {
        const info = await rt.api.get<{ state: string }>('/');
        // A paused guest cannot see the key press.
        if (info.state === 'Paused') await rt.api.patch('/vm', { state: 'Resumed' });
        await rt.api.put('/actions', { action_type: 'SendCtrlAltDel' });
      } catch (err) {
        this.log.warn({ vmId: h.record.vmId, err: String(err) }, 'Ctrl-Alt-Del not delivered');
      }
      const ended = await Promise.race([rt.exited.then(() => true), sleep(opts.timeoutMs).then(() => false)]);
      if (ended) return { graceful: true };
    }
    rt.stopping = 'forced';
    if (await isSameProcess(rt.record.pid, rt.record.pidStartTime)) kill(rt.record.pid, 'SIGKILL');
    await rt.exited;
    return { graceful: false };
  }

  // ---- snapshots ---------------------------------------------------------------------------------

  /**
   * Pauses (if running), writes the VM state and memory files into `dir` with copies of the
   * writable disks taken at the same moment, then resumes if it was running. A Diff holds the
   * pages written since the VM's previous snapshot (or its boot or restore): restoring it needs
   * that one as its `base`, and the manifest names it so that a wrong chain is refused.
   */
  async snapshot(h: VmHandle, dir: string, type: 'Full' | 'Diff'): Promise<SnapshotFiles> {
    const rt = this.runtime(h);
    if (type === 'Diff' && !rt.trackDirtyPages && !rt.caps.has('diff-snapshot-without-dirty-tracking')) {
      throw new FirecrackerFeatureUnavailableError(
        'diff-snapshot',
        rt.caps.version,
        'before 1.13 a Diff snapshot needs a VM booted with track_dirty_pages',
      );
    }
    if (type === 'Diff' && rt.lineage.kind === 'unknown') {
      throw new SnapshotChainError(
        `VM ${rt.record.vmId}: what its memory builds on is unknown (adopted without a lineage record, or restored from a snapshot without a manifest): take a Full snapshot first`,
      );
    }
    const id = randomUUID();
    const base = type === 'Diff' && rt.lineage.kind === 'snapshot' ? rt.lineage : null;
    await mkdir(dir, { recursive: true });
    const statePath = join(dir, 'vmstate');
    const memPath = join(dir, 'memory');
    const files: SnapshotFiles = { statePath, memPath, type, ...(base ? { base: base.files } : {}) };
    const t0 = performance.now();
    const { paths, api } = rt;
    const timeout = this.opts.snapshotTimeoutMs ?? 120_000;
    const wasRunning = (await api.get<{ state: string }>('/')).state === 'Running';
    if (wasRunning) await api.patch('/vm', { state: 'Paused' });
    try {
      const target = paths.staged
        ? { state: join(paths.staged.snapshotDir, 'vmstate'), mem: join(paths.staged.snapshotDir, 'memory') }
        : { state: statePath, mem: memPath };
      if (paths.staged && paths.jail) {
        await mkdir(paths.staged.snapshotDir, { recursive: true });
        await chownIfRoot(paths.staged.snapshotDir, paths.jail.uid, paths.jail.gid);
      }
      await api.put(
        '/snapshot/create',
        { snapshot_type: type, snapshot_path: paths.api(target.state), mem_file_path: paths.api(target.mem) },
        timeout,
      );
      // Firecracker has reset its dirty bitmap: the next Diff goes over this snapshot.
      rt.lineage = { kind: 'snapshot', id, files };
      await this.saveLineage(rt);
      if (paths.staged) {
        await moveFile(target.state, statePath);
        // A Diff's holes say which pages it lacks: a sparse cp would add its zero pages to them.
        await moveFile(target.mem, memPath, type === 'Diff' ? copyWrittenExtents : cloneFile);
      }
      const vmConfig = await api.get<Record<string, unknown>>('/vm/config');
      // The disks are not in the snapshot: copy them now, while the guest cannot write.
      const disks: SnapshotManifest['disks'] = [];
      for (const d of (vmConfig.drives as {
        drive_id: string;
        path_on_host?: string;
        is_read_only?: boolean;
      }[]) ?? []) {
        if (d.is_read_only || !d.path_on_host) continue;
        const host = paths.jail ? join(paths.jail.root, d.path_on_host) : d.path_on_host;
        const file = `disk-${d.drive_id}.img`;
        await cloneFile(host, join(dir, file));
        disks.push({ id: d.drive_id, file });
      }
      const manifest: SnapshotManifest = {
        format: 'nqvm-firecracker-snapshot/1',
        id,
        firecrackerVersion: rt.caps.version,
        type,
        baseId: base?.id ?? null,
        vmId: rt.record.vmId,
        createdAt: new Date().toISOString(),
        vmConfig,
        disks,
        mode: paths.mode,
      };
      await writeFile(join(dir, SNAPSHOT_MANIFEST), JSON.stringify(manifest, null, 2));
    } finally {
      if (wasRunning) await api.patch('/vm', { state: 'Resumed' });
    }
    const mem = await stat(memPath);
    this.log.info(
      {
        vmId: rt.record.vmId,
        type,
        memBytes: mem.size,
        memBytesAllocated: mem.blocks * 512,
        ms: Math.round(performance.now() - t0),
      },
      'snapshot taken',
    );
    return files;
  }

  /**
   * A fresh Firecracker process, only logger and metrics configured, then the load (resumed,
   * never followed by InstanceStart), then the MMDS data again (snapshots do not keep it). A
   * Diff's chain (`base`, down to a complete one) is checked, then merged into one memory file
   * in the VM's folder, which the VM maps until its next boot.
   */
  async restore(spec: VmSpec, snap: SnapshotFiles): Promise<FirecrackerVmHandle> {
    this.checkSpec(spec);
    const version = await this.version();
    if (!snap.memPath) throw new Error('a Firecracker snapshot needs its memory file');
    const manifest = await readSnapshotManifest(snap);
    if (manifest && manifest.firecrackerVersion !== version) {
      throw new Error(
        `snapshot taken by Firecracker ${manifest.firecrackerVersion}; ${version} restores only its own snapshot format`,
      );
    }
    const layers = await resolveSnapshotChain(snap);
    for (const { files, manifest: m } of layers) {
      if (m && m.firecrackerVersion !== version) {
        throw new SnapshotChainError(
          `snapshot ${dirname(files.statePath)} of the chain was taken by Firecracker ${m.firecrackerVersion}, not ${version}`,
        );
      }
      if (!(await exists(files.memPath))) {
        throw new SnapshotChainError(
          `snapshot ${dirname(files.statePath)} lacks its memory file ${files.memPath}`,
        );
      }
    }
    const merged = layers.length > 1;
    const caps = capabilitiesFor(version);
    this.checkRestoreNics(spec, manifest, caps);
    const launch = await this.newLaunch(spec);
    const trackDirtyPages = this.opts.trackDirtyPages ?? false;
    const steps: PipelineStep[] = [
      ...this.launchSteps(launch, version, { kind: 'restore', snap, layers }),
      ...this.observabilitySteps(launch),
      {
        name: 'snapshot-load',
        run: async () => {
          const { paths } = launch;
          const state = paths.staged ? join(paths.staged.snapshotDir, 'vmstate') : snap.statePath;
          const mem = paths.staged
            ? join(paths.staged.snapshotDir, 'memory')
            : merged
              ? paths.restoredMemory
              : snap.memPath!;
          const body: Record<string, unknown> = {
            snapshot_path: paths.api(state),
            mem_backend: { backend_type: 'File', backend_path: paths.api(mem) },
            resume_vm: true,
          };
          if (trackDirtyPages) {
            body[
              caps.has('snapshot-load-track-dirty-pages') ? 'track_dirty_pages' : 'enable_diff_snapshots'
            ] = true;
          }
          if (caps.has('snapshot-network-overrides') && spec.nics.length > 0) {
            body.network_overrides = spec.nics.map((n) => ({
              iface_id: recordedNic(manifest, n.id)?.iface_id ?? firecrackerId(n.id),
              host_dev_name: n.tap,
            }));
          }
          const recorded = recordedVsock(manifest);
          const vsockPath = paths.api(paths.vsockPath);
          if (recorded && recorded !== vsockPath && caps.has('snapshot-vsock-override')) {
            body.vsock_override = { uds_path: vsockPath };
          }
          await launch.api.put('/snapshot/load', body, this.opts.snapshotTimeoutMs ?? 120_000);
          launch.startedAt = performance.now();
        },
      },
      ...(this.servesMmds(spec) ? [{ name: 'mmds', run: () => launch.api.put('/mmds', spec.mmds) }] : []),
    ];
    const lineage: MemoryLineage = manifest?.id
      ? { kind: 'snapshot', id: manifest.id, files: snap }
      : { kind: 'unknown' };
    return this.runLaunch(launch, steps, version, { trackDirtyPages, lineage });
  }

  /**
   * Without vsock_override Firecracker binds the vsock socket where the snapshot recorded it: it
   * must be this VM's path (the record points there, and another VM's socket is not ours to take).
   */
  private checkRestoreVsock(manifest: SnapshotManifest | null, paths: VmPaths, version: string): void {
    const recorded = recordedVsock(manifest);
    const wanted = paths.api(paths.vsockPath);
    if (
      recorded === undefined ||
      recorded === wanted ||
      capabilitiesFor(version).has('snapshot-vsock-override')
    )
      return;
    throw new FirecrackerFeatureUnavailableError(
      'snapshot-vsock-override',
      version,
      `the vsock socket was at ${recorded} when snapshotted; this version cannot move it to ${wanted}`,
    );
  }

  /** Without network_overrides the snapshot's TAP names must already be the spec's. */
  private checkRestoreNics(
    spec: VmSpec,
    manifest: SnapshotManifest | null,
    caps: FirecrackerCapabilities,
  ): void {
    if (caps.has('snapshot-network-overrides') || !manifest) return;
    for (const n of spec.nics) {
      const r = recordedNic(manifest, n.id);
      if (r && r.host_dev_name !== n.tap) {
        throw new FirecrackerFeatureUnavailableError(
          'snapshot-network-overrides',
          caps.version,
          `${n.id} was on TAP ${r.host_dev_name} when snapshotted; this version cannot move it to ${n.tap}`,
        );
      }
    }
  }

  /**
   * Guest memory and disk must be of the same moment: the snapshot's disk copies replace the
   * spec's disk files (a disk written after the snapshot would not match the restored memory).
   */
  private async restoreDisks(
    spec: VmSpec,
    paths: VmPaths,
    manifest: SnapshotManifest | null,
    snapDir: string,
  ): Promise<void> {
    for (const d of spec.disks) {
      const copy = manifest?.disks.find((x) => sameFirecrackerId(x.id, d.id));
      if (copy) {
        await cloneFile(join(snapDir, copy.file), d.path);
        this.log.info({ vmId: spec.id, disk: d.id, from: copy.file }, 'disk restored from the snapshot copy');
      } else if (!(await exists(d.path))) {
        throw new Error(`disk ${d.id} (${d.path}) is missing and the snapshot holds no copy of it`);
      }
    }
    if (paths.mode === 'direct' && manifest) {
      // Unjailed, Firecracker reopens the disks at the paths it recorded.
      const drives = (manifest.vmConfig.drives as { drive_id: string; path_on_host?: string }[]) ?? [];
      for (const d of drives) {
        const want = spec.disks.find((x) => sameFirecrackerId(d.drive_id, x.id));
        if (want && d.path_on_host && want.path !== d.path_on_host) {
          throw new Error(
            `disk ${d.drive_id} was at ${d.path_on_host} when snapshotted; without the jailer it must be there again (spec says ${want.path})`,
          );
        }
      }
    }
  }

  // ---- adoption ------------------------------------------------------------------------------------

  /** Re-attaches to a Firecracker that outlived the agent: same pid and start time, API answers. */
  async adopt(record: RunRecord): Promise<FirecrackerVmHandle | null> {
    if (record.kind !== 'firecracker') return null;
    if (this.runtimes.has(record.vmId)) throw new Error(`VM ${record.vmId} is already tracked`);
    if (!(await isSameProcess(record.pid, record.pidStartTime))) return null;
    let paths: VmPaths;
    let extra: FirecrackerRecordExtra;
    try {
      ({ paths, extra } = pathsFromRecord(record));
    } catch (err) {
      this.log.warn({ vmId: record.vmId, err: String(err) }, 'cannot adopt');
      return null;
    }
    const api = new FirecrackerApiClient(record.controlSocket, this.opts.requestTimeoutMs);
    let info: { vmm_version: string };
    try {
      info = await api.get('/', 2000);
    } catch {
      return null;
    }
    const version = parseVersion(info.vmm_version)?.join('.') ?? info.vmm_version;
    if (paths.jail) this.ids.claim(record.vmId, paths.jail.uid);
    const stats: BootStats = { requests: api.requests, spawnToStartMs: 0, totalMs: 0, steps: [] };
    this.log.info({ vmId: record.vmId, pid: record.pid, version }, 'firecracker VM adopted');
    const memory = { trackDirtyPages: extra.trackDirtyPages, lineage: await this.loadLineage(paths, record) };
    return this.attach(record, paths, api, capabilitiesFor(version), memory, null, stats);
  }
}

/**
 * The jailer's cgroup arguments: CPU bandwidth and a memory limit, in the file names of the
 * host's cgroup version (the jailer finds each controller from the file's prefix).
 */
export function jailerCgroupArgs(
  version: 1 | 2,
  quotaUs: number,
  periodUs: number,
  memoryBytes: number,
): string[] {
  const files =
    version === 2
      ? [`cpu.max=${quotaUs} ${periodUs}`, `memory.max=${memoryBytes}`]
      : [
          `cpu.cfs_period_us=${periodUs}`,
          `cpu.cfs_quota_us=${quotaUs}`,
          `memory.limit_in_bytes=${memoryBytes}`,
        ];
  return ['--cgroup-version', String(version), ...files.flatMap((f) => ['--cgroup', f])];
}
