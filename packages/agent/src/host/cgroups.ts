/**
 * A VMM's own cgroup, so one guest cannot take the host's CPU, memory or process table: CPU
 * bandwidth (quota per period), a memory limit (the guest's memory plus the VMM's overhead) and a
 * pids limit. cgroup v2 (one unified hierarchy with the controllers enabled) and v1 (one
 * hierarchy per controller, as on hosts that mount v2 only as an empty unified tree) are both
 * supported, as Firecracker's jailer does. Every VM's group lives under `<parent>/<vm id>`.
 */
import { mkdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export type CgroupVersion = 1 | 2;

export interface CgroupLimits {
  /** CPU time per period, in microseconds: `cpus * periodUs` allows `cpus` CPUs. */
  cpuQuotaUs: number;
  cpuPeriodUs: number;
  memoryBytes: number;
  pidsMax: number;
}

/** Where the controllers are: one folder for v2, one per controller for v1. */
export interface CgroupLayout {
  version: CgroupVersion;
  /** v2: the unified mount; v1: the mount of each controller. */
  mounts: { cpu: string; memory: string; pids: string };
}

const CONTROLLERS = ['cpu', 'memory', 'pids'] as const;

/**
 * Finds the cgroup layout of this host from its mount table: v2 when the unified hierarchy
 * offers cpu, memory and pids; else v1 when each has its own mount; else null (no limits can be
 * set, e.g. in a container without cgroup access).
 *
 * @example
 * await detectCgroups(); // { version: 1, mounts: { cpu: '/sys/fs/cgroup/cpu', ... } }
 */
export async function detectCgroups(mountsFile = '/proc/self/mounts'): Promise<CgroupLayout | null> {
  const mounts = (await readFile(mountsFile, 'utf8').catch(() => ''))
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f.length >= 4)
    .map(([, dir, type, options]) => ({
      dir: unescapeMount(dir!),
      type: type!,
      options: options!.split(','),
    }));
  for (const m of mounts.filter((x) => x.type === 'cgroup2')) {
    const offered = (await readFile(path.join(m.dir, 'cgroup.controllers'), 'utf8').catch(() => '')).split(
      /\s+/,
    );
    if (CONTROLLERS.every((c) => offered.includes(c)))
      return { version: 2, mounts: { cpu: m.dir, memory: m.dir, pids: m.dir } };
  }
  const v1 = (c: string) => mounts.find((m) => m.type === 'cgroup' && m.options.includes(c))?.dir;
  const [cpu, memory, pids] = CONTROLLERS.map(v1);
  return cpu && memory && pids ? { version: 1, mounts: { cpu, memory, pids } } : null;
}

/** /proc/mounts escapes spaces and such as octal (`\040`). */
function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
}

/** Cgroup and VM ids are used as folder names: only what a UUID or a simple name holds. */
const SAFE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/**
 * The cgroups of a host's VMMs under one parent (default `nqvm`).
 *
 * @example
 * const groups = new VmCgroups(layout);
 * await groups.create(vmId, { cpuQuotaUs: 100_000, cpuPeriodUs: 100_000, memoryBytes, pidsMax: 512 });
 * await groups.enter(vmId, qemuPid);
 * // ... once the VMM has exited:
 * await groups.remove(vmId);
 */
export class VmCgroups {
  constructor(
    readonly layout: CgroupLayout,
    private readonly parent = 'nqvm',
  ) {
    if (!SAFE_NAME.test(parent)) throw new Error(`invalid cgroup parent name "${parent}"`);
  }

  /** The folders of a VM's group: one (v2) or one per controller (v1). */
  dirs(vmId: string): { cpu: string; memory: string; pids: string } {
    if (!SAFE_NAME.test(vmId)) throw new Error(`invalid cgroup name "${vmId}"`);
    const at = (c: keyof CgroupLayout['mounts']) => path.join(this.layout.mounts[c], this.parent, vmId);
    return { cpu: at('cpu'), memory: at('memory'), pids: at('pids') };
  }

  /** Makes the VM's group with its limits (again, if it is left over: limits are rewritten). */
  async create(vmId: string, limits: CgroupLimits): Promise<void> {
    const d = this.dirs(vmId);
    if (this.layout.version === 2) {
      const root = this.layout.mounts.cpu;
      await mkdir(path.join(root, this.parent), { recursive: true });
      // Children get the controllers only when each level above hands them down.
      await writeFile(path.join(root, 'cgroup.subtree_control'), '+cpu +memory +pids').catch(() => {});
      await writeFile(path.join(root, this.parent, 'cgroup.subtree_control'), '+cpu +memory +pids');
      await mkdir(d.cpu, { recursive: true });
      await writeFile(path.join(d.cpu, 'cpu.max'), `${limits.cpuQuotaUs} ${limits.cpuPeriodUs}`);
      await writeFile(path.join(d.memory, 'memory.max'), String(limits.memoryBytes));
      // No swap beyond the limit: the limit is what the VM may take.
      await writeFile(path.join(d.memory, 'memory.swap.max'), '0').catch(() => {});
      await writeFile(path.join(d.pids, 'pids.max'), String(limits.pidsMax));
      return;
    }
    for (const dir of new Set(Object.values(d))) await mkdir(dir, { recursive: true });
    await writeFile(path.join(d.cpu, 'cpu.cfs_period_us'), String(limits.cpuPeriodUs));
    await writeFile(path.join(d.cpu, 'cpu.cfs_quota_us'), String(limits.cpuQuotaUs));
    await writeFile(path.join(d.memory, 'memory.limit_in_bytes'), String(limits.memoryBytes));
    // Where swap accounting is on, the same limit holds for memory plus swap.
    await writeFile(path.join(d.memory, 'memory.memsw.limit_in_bytes'), String(limits.memoryBytes)).catch(
      () => {},
    );
    await writeFile(path.join(d.pids, 'pids.max'), String(limits.pidsMax));
  }

  /** Moves a process (all its threads) into the VM's group. */
  async enter(vmId: string, pid: number): Promise<void> {
    for (const dir of new Set(Object.values(this.dirs(vmId))))
      await writeFile(path.join(dir, 'cgroup.procs'), String(pid));
  }

  /** The pids in the VM's group (of its CPU controller). */
  async pids(vmId: string): Promise<number[]> {
    const text = await readFile(path.join(this.dirs(vmId).cpu, 'cgroup.procs'), 'utf8').catch(() => '');
    return text.split('\n').filter(Boolean).map(Number);
  }

  /**
   * Removes the VM's group once its processes are gone (the kernel refuses a busy one: a VMM
   * exiting is waited for a moment). Nothing to remove is not an error.
   */
  async remove(vmId: string): Promise<void> {
    for (const dir of new Set(Object.values(this.dirs(vmId)))) {
      for (let attempt = 0; ; attempt++) {
        try {
          await rmdir(dir);
          break;
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          if (code === 'ENOENT') break;
          if (code !== 'EBUSY' || attempt >= 50) throw err;
          await sleep(100);
        }
      }
    }
  }
}
