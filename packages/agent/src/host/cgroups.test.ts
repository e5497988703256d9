/**
 * VM cgroups on this host's real cgroup hierarchy (v1 here: cpu, memory and pids mounts with an
 * empty unified tree): a busy process is held to its CPU quota, one allocating past its memory
 * limit is killed, the pids limit is written, and the group goes once its process has.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CgroupLayout, detectCgroups, VmCgroups } from './cgroups';

const layout = await detectCgroups();
const TICKS = 100; // USER_HZ

/** User + system CPU seconds a process used, from /proc/PID/stat. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICKS;
}

const exited = (p: ChildProcess) =>
  new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    p.once('exit', (code, signal) => resolve({ code, signal })),
  );

describe.skipIf(layout === null)('VM cgroups on this host', () => {
  const groups = new VmCgroups(layout as CgroupLayout, `nqvm-test-${process.pid}`);
  const children: ChildProcess[] = [];
  beforeAll(() => {
    expect(layout!.version === 1 || layout!.version === 2).toBe(true);
  });
  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    await new Promise((r) => setTimeout(r, 200));
    for (const id of ['busy', 'hungry']) await groups.remove(id).catch(() => {});
    for (const dir of new Set(Object.values(layout!.mounts)))
      await import('node:fs/promises').then((fs) =>
        fs.rmdir(path.join(dir, `nqvm-test-${process.pid}`)).catch(() => {}),
      );
  });

  it('holds a busy process to its CPU quota and removes the group after it', async () => {
    await groups.create('busy', {
      cpuQuotaUs: 10_000,
      cpuPeriodUs: 100_000,
      memoryBytes: 64 << 20,
      pidsMax: 16,
    });
    const busy = spawn('sh', ['-c', 'while :; do :; done'], { stdio: 'ignore' });
    children.push(busy);
    await groups.enter('busy', busy.pid!);
    expect(await groups.pids('busy')).toEqual([busy.pid]);
    expect(readFileSync(path.join(groups.dirs('busy').pids, 'pids.max'), 'utf8').trim()).toBe('16');
    const before = cpuSeconds(busy.pid!);
    await new Promise((r) => setTimeout(r, 2_000));
    const used = cpuSeconds(busy.pid!) - before;
    // 10% of one CPU over 2 s is 0.2 s; unlimited it would take close to 2 s. Five times the quota:
    expect(used).toBeLessThan(1.0);
    busy.kill('SIGKILL');
    await exited(busy);
    await groups.remove('busy');
    for (const dir of Object.values(groups.dirs('busy'))) expect(existsSync(dir)).toBe(false);
  });

  it('kills a process that allocates past its memory limit', async () => {
    await groups.create('hungry', {
      cpuQuotaUs: 100_000,
      cpuPeriodUs: 100_000,
      memoryBytes: 64 << 20,
      pidsMax: 16,
    });
    // It waits to be moved into the group, then touches 256 MiB.
    const hungry = spawn(
      'sh',
      ['-c', 'read go; exec python3 -c "b = b\\"x\\" * (256 << 20); print(len(b))"'],
      {
        stdio: ['pipe', 'pipe', 'ignore'],
      },
    );
    children.push(hungry);
    let out = '';
    hungry.stdout!.on('data', (d) => (out += d));
    await groups.enter('hungry', hungry.pid!);
    const end = exited(hungry);
    hungry.stdin!.end('go\n');
    const { signal } = await end;
    expect(signal).toBe('SIGKILL');
    expect(out).toBe('');
    await groups.remove('hungry');
  });
});
