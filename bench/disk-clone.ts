/**
 * P2: per-VM disk time. Images of 1, 4 and 16 GiB holding about 20% data (a random 1 MiB chunk
 * in every 5th MiB, holes elsewhere), on the default file system of the data directory and on
 * an XFS (reflink=1) and a btrfs file system, each in a loop file this benchmark makes, mounts
 * and removes. Per size and method, BENCH_RUNS runs (default 3), page cache dropped before each
 * when /proc/sys/vm/drop_caches is writable (root; the tools' own binaries are loaded again
 * right after), median printed:
 *
 *   overlay   createRootDisk('qemu', ...): a qcow2 overlay via qemu-img
 *   fc-auto   createRootDisk('firecracker', ...): cp --reflink=auto --sparse=always (what the agent does)
 *   reflink   cp --reflink=always
 *   sparse    cp --reflink=never --sparse=always
 *   full      cp --reflink=never --sparse=never (the baseline: every byte written)
 *
 * "create" is what a boot waits for; "+fsync" adds an fsync of the new file (the durable cost).
 * The full copy runs on the default file system only unless BENCH_FULL_EVERYWHERE=1.
 * Goals: overlay and reflink <= 50 ms at any size; sparse >= 5x faster than full.
 * Needs root for the loop mounts (mount -o loop); without it only the default fs is measured.
 *
 *   npx tsx bench/disk-clone.ts
 *   BENCH_SIZES_GIB=1,4 BENCH_RUNS=5 BENCH_DIR=/srv/tmp npx tsx bench/disk-clone.ts
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { createRootDisk } from '@nqvm/agent/agent/vm-disk';
import { size, sizes } from './bench-kit';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const SIZES_GIB = sizes('BENCH_SIZES_GIB', '1,4,16', '1');
const RUNS = size('BENCH_RUNS', 3, 1);
const BASE_DIR = process.env.BENCH_DIR ?? '/var/tmp';
const FULL_EVERYWHERE = process.env.BENCH_FULL_EVERYWHERE === '1';
const GOAL_FLAT_MS = 50;
const GOAL_SPARSE_SPEEDUP = 5;

type Method = 'overlay' | 'fc-auto' | 'reflink' | 'sparse' | 'full';
interface Fs {
  name: string;
  dir: string;
  reflink: boolean;
  teardown: () => Promise<void>;
}
interface Row {
  fs: string;
  sizeGib: number;
  method: Method;
  createMs: number;
  durableMs: number;
  allocatedMib: number;
}

const median = (v: number[]) => {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const fmtMs = (v: number) => (v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${v.toFixed(1)} ms`);

function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => r.map((c, i) => (i < 3 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  return [line(head), w.map((x) => '-'.repeat(x)).join('  '), ...rows.map(line)].join('\n');
}

/**
 * Drops the page cache so every run reads the image from disk (false when not allowed), then
 * loads the tools again: an agent spawns them often, so their binaries are warm in practice.
 */
async function dropCaches(): Promise<boolean> {
  await run('sync');
  let dropped = true;
  try {
    writeFileSync('/proc/sys/vm/drop_caches', '3');
  } catch {
    dropped = false;
  }
  await run('qemu-img', ['--version']);
  await run('cp', ['--version']);
  return dropped;
}

/** A sparse raw image of `gib` GiB with a random 1 MiB chunk in every 5th MiB. */
function makeImage(file: string, gib: number): number {
  const pool = Array.from({ length: 16 }, () => randomBytes(MiB));
  const fd = openSync(file, 'w');
  let data = 0;
  try {
    for (let mib = 0; mib < gib * 1024; mib += 5) {
      const chunk = pool[mib % pool.length]!;
      // A unique head per chunk: no file system may dedupe or compress the pool away.
      randomBytes(4096).copy(chunk, 0);
      writeSync(fd, chunk, 0, MiB, mib * MiB);
      data += MiB;
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return data;
}

function fsyncFile(file: string): void {
  const fd = openSync(file, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

async function create(method: Method, image: string, target: string): Promise<void> {
  switch (method) {
    case 'overlay':
      return createRootDisk('qemu', image, target, null);
    case 'fc-auto':
      return createRootDisk('firecracker', image, target, null);
    case 'reflink':
      await run('cp', ['--reflink=always', '--', image, target]);
      return;
    case 'sparse':
      await run('cp', ['--reflink=never', '--sparse=always', '--', image, target]);
      return;
    case 'full':
      await run('cp', ['--reflink=never', '--sparse=never', '--', image, target]);
      return;
  }
}

async function loopFs(kind: 'xfs' | 'btrfs', root: string, bytes: number): Promise<Fs | null> {
  const backing = path.join(root, `${kind}.img`);
  const dir = path.join(root, kind);
  mkdirSync(dir);
  await run('truncate', ['-s', String(bytes), backing]);
  try {
    await run(kind === 'xfs' ? 'mkfs.xfs' : 'mkfs.btrfs', [
      '-q',
      ...(kind === 'xfs' ? ['-m', 'reflink=1'] : []),
      backing,
    ]);
    await run('mount', ['-o', 'loop', backing, dir]);
  } catch (err) {
    console.log(`skipping ${kind}: ${(err as Error).message.split('\n')[0]}`);
    rmSync(backing, { force: true });
    return null;
  }
  return {
    name: `${kind} (loop)`,
    dir,
    reflink: true,
    teardown: async () => {
      await run('umount', [dir]);
      rmSync(backing, { force: true });
    },
  };
}

async function measure(fs: Fs, full: boolean, rows: Row[], cacheNote: Set<string>): Promise<void> {
  const methods: Method[] = ['overlay', 'fc-auto', ...(fs.reflink ? (['reflink'] as const) : []), 'sparse'];
  if (full) methods.push('full');
  for (const gib of SIZES_GIB) {
    const image = path.join(fs.dir, `image-${gib}g.raw`);
    const t0 = performance.now();
    const data = makeImage(image, gib);
    await run('truncate', ['-s', `${gib}G`, image]);
    console.log(
      `${fs.name}: made a ${gib} GiB image with ${(data / MiB).toFixed(0)} MiB data in ${fmtMs(performance.now() - t0)}`,
    );
    const times = new Map(
      methods.map((m) => [m, { creates: [] as number[], durable: [] as number[], allocated: 0 }]),
    );
    // Rounds of every method, in a rotated order: background I/O (writeback, discards of the
    // last removed copy, other users of the machine) falls on all methods alike.
    for (let i = 0; i < RUNS; i++) {
      for (const method of [...methods.slice(i % methods.length), ...methods.slice(0, i % methods.length)]) {
        const t = times.get(method)!;
        const target = path.join(fs.dir, method === 'overlay' ? 'vm.qcow2' : 'vm.raw');
        cacheNote.add((await dropCaches()) ? 'dropped' : 'not dropped (no permission)');
        const start = performance.now();
        await create(method, image, target);
        const created = performance.now();
        fsyncFile(target);
        const synced = performance.now();
        t.creates.push(created - start);
        t.durable.push(synced - start);
        t.allocated = statSync(target).blocks * 512;
        rmSync(target);
        await run('sync');
      }
    }
    for (const [method, t] of times) {
      const row = {
        fs: fs.name,
        sizeGib: gib,
        method,
        createMs: median(t.creates),
        durableMs: median(t.durable),
        allocatedMib: t.allocated / MiB,
      };
      rows.push(row);
      console.log(`  ${gib} GiB ${method}: ${fmtMs(row.createMs)} (+fsync ${fmtMs(row.durableMs)})`);
    }
    rmSync(image);
  }
}

const loadBefore = os.loadavg()[0]!;
const root = await mkdtemp(path.join(BASE_DIR, 'nqvm-bench-disk-'));
const rows: Row[] = [];
const cacheNote = new Set<string>();
const mounted: Fs[] = [];
const cleanUp = async () => {
  for (const fs of mounted.splice(0)) await fs.teardown().catch(() => {});
  rmSync(root, { recursive: true, force: true });
};
process.once('SIGINT', () => void cleanUp().then(() => process.exit(130)));
try {
  const defaultFs = (await run('findmnt', ['-n', '-o', 'FSTYPE', '-T', root])).stdout.trim();
  const plain = path.join(root, 'default');
  mkdirSync(plain);
  const maxGib = Math.max(...SIZES_GIB);
  await measure(
    { name: `${defaultFs} (${BASE_DIR})`, dir: plain, reflink: false, teardown: async () => {} },
    true,
    rows,
    cacheNote,
  );
  rmSync(plain, { recursive: true, force: true });
  for (const kind of ['xfs', 'btrfs'] as const) {
    // Room for the image data, a sparse copy of it and, when asked, a full copy.
    const bytes = Math.ceil(maxGib * (FULL_EVERYWHERE ? 1.6 : 0.6) + 2) * GiB;
    const fs = await loopFs(kind, root, bytes);
    if (!fs) continue;
    mounted.push(fs);
    await measure(fs, FULL_EVERYWHERE, rows, cacheNote);
    await fs.teardown();
    mounted.splice(mounted.indexOf(fs), 1);
  }
} finally {
  await cleanUp();
}

console.log(
  `\nP2 per-VM disk time, median of ${RUNS}; page cache ${[...cacheNote].join(' / ')} before each run; load average ${loadBefore.toFixed(1)} at start, ${os.loadavg()[0]!.toFixed(1)} at end (${os.availableParallelism()} CPUs)\n`,
);
console.log(
  table(
    ['file system', 'size', 'method', 'create', '+fsync', 'allocated'],
    rows.map((r) => [
      r.fs,
      `${r.sizeGib} GiB`,
      r.method,
      fmtMs(r.createMs),
      fmtMs(r.durableMs),
      `${r.allocatedMib.toFixed(1)} MiB`,
    ]),
  ),
);

const find = (fs: string, gib: number, m: Method) =>
  rows.find((r) => r.fs === fs && r.sizeGib === gib && r.method === m);
console.log('\nsparse vs full (create, then +fsync):');
for (const fs of new Set(rows.map((r) => r.fs))) {
  for (const gib of SIZES_GIB) {
    const s = find(fs, gib, 'sparse');
    const f = find(fs, gib, 'full');
    if (!s || !f) continue;
    const x = f.createMs / s.createMs;
    const xd = f.durableMs / s.durableMs;
    console.log(
      `  ${fs} ${gib} GiB: ${x.toFixed(1)}x / ${xd.toFixed(1)}x ${x >= GOAL_SPARSE_SPEEDUP ? 'meets' : 'MISSES'} the ${GOAL_SPARSE_SPEEDUP}x goal`,
    );
  }
}
const flat = rows.filter((r) => r.method === 'overlay' || r.method === 'reflink');
const worst = flat.reduce((a, b) => (b.createMs > a.createMs ? b : a), flat[0]!);
console.log(
  `\noverlay and reflink: worst ${fmtMs(worst.createMs)} (${worst.fs}, ${worst.sizeGib} GiB, ${worst.method}): ${
    worst.createMs <= GOAL_FLAT_MS ? 'meets' : 'MISSES'
  } the <= ${GOAL_FLAT_MS} ms goal`,
);
