import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  copyWrittenExtents,
  mergeMemoryLayers,
  GUEST_PAGE_SIZE as PAGE,
  writtenExtents,
} from './memory-merge';

const PAGES = 1024; // a 4 MiB "guest"
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fc-merge-'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A file of guest size with the given pages written (pwrite at their offsets), holes elsewhere. */
async function layer(name: string, pages: Map<number, Buffer>): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, '');
  await truncate(path, PAGES * PAGE);
  const fh = await open(path, 'r+');
  for (const [p, data] of pages) await fh.write(data, 0, PAGE, p * PAGE);
  await fh.close();
  return path;
}

const zeros = () => Buffer.alloc(PAGE);
const random = () => randomBytes(PAGE);
const sha = async (p: string) =>
  createHash('sha256')
    .update(await readFile(p))
    .digest('hex');

describe('writtenExtents', () => {
  it('finds the written pages, all-zero ones too, and nothing in holes or preallocated ranges', async () => {
    const path = await layer(
      'extents',
      new Map([
        [0, random()],
        [1, zeros()],
        [7, zeros()],
        [500, random()],
        [1023, zeros()],
      ]),
    );
    // Preallocated but never written: reads as zeros, a hole for SEEK_DATA.
    execFileSync('fallocate', ['-n', '-o', String(600 * PAGE), '-l', String(8 * PAGE), path]);
    expect(await writtenExtents(path)).toEqual([
      { offset: 0, length: 2 * PAGE },
      { offset: 7 * PAGE, length: PAGE },
      { offset: 500 * PAGE, length: PAGE },
      { offset: 1023 * PAGE, length: PAGE },
    ]);
    const hole = await layer('hole', new Map());
    expect(await writtenExtents(hole)).toEqual([]);
  });

  it('refuses a file system without FIEMAP instead of guessing', async () => {
    const shm = '/dev/shm';
    if (!existsSync(shm) || !execFileSync('stat', ['-f', '-c', '%T', shm]).toString().includes('tmpfs'))
      return;
    const path = join(shm, `fc-merge-${process.pid}`);
    await writeFile(path, random());
    try {
      await expect(writtenExtents(path)).rejects.toThrow(/must support FIEMAP/);
    } finally {
      await rm(path, { force: true });
    }
  });
});

describe('mergeMemoryLayers', () => {
  it('lays each Diff over the base in order, copies written zero pages, keeps the layers unchanged', async () => {
    const expected = Buffer.alloc(PAGES * PAGE);
    const base = new Map<number, Buffer>();
    for (let p = 0; p < PAGES; p += 3) base.set(p, random());
    const d1 = new Map([
      [0, random()],
      [3, zeros()], // zeroed by the guest: must win over the base's data
      [4, random()],
      [900, random()],
    ]);
    const d2 = new Map([
      [0, zeros()],
      [4, random()],
      [1023, random()],
    ]);
    for (const pages of [base, d1, d2]) for (const [p, data] of pages) data.copy(expected, p * PAGE);
    const files = [await layer('base', base), await layer('d1', d1), await layer('d2', d2)];
    const before = await Promise.all(files.map(sha));
    const target = join(dir, 'merged');
    const stats = await mergeMemoryLayers(files, target);
    expect((await readFile(target)).equals(expected)).toBe(true);
    expect(stats).toMatchObject({ layers: 3, bytesCopied: 7 * PAGE });
    expect(await Promise.all(files.map(sha))).toEqual(before);
    // Sparse: the base's holes stay holes.
    expect((await stat(target)).blocks * 512).toBeLessThan(PAGES * PAGE);
    expect(existsSync(`${target}.partial`)).toBe(false);

    // The order is the chain's: the other way round page 4 holds d1's write.
    await mergeMemoryLayers([files[0]!, files[2]!, files[1]!], target);
    expect((await readFile(target)).equals(expected)).toBe(false);
  });

  it('takes a Diff that holds every page of its run as the base, and an empty Diff as no change', async () => {
    const first = await layer('first', new Map([[10, random()]]));
    const empty = await layer('empty', new Map());
    const target = join(dir, 'merged-first');
    expect(await mergeMemoryLayers([first, empty], target)).toMatchObject({ bytesCopied: 0, extents: 0 });
    expect(await sha(target)).toBe(await sha(first));
  });

  it('refuses layers of different sizes and leaves no partial file', async () => {
    const a = await layer('a', new Map([[1, random()]]));
    const b = join(dir, 'b');
    await writeFile(b, random());
    const target = join(dir, 'merged-bad');
    await expect(mergeMemoryLayers([a, b], target)).rejects.toThrow(/have one size/);
    expect(existsSync(target)).toBe(false);
    expect(existsSync(`${target}.partial`)).toBe(false);
  });
});

describe('copyWrittenExtents', () => {
  it('keeps written zero pages written and holes holes, where cp makes both holes', async () => {
    const src = await layer(
      'diff-src',
      new Map([
        [2, zeros()],
        [3, random()],
        [700, zeros()],
      ]),
    );
    const dst = join(dir, 'diff-copy');
    await copyWrittenExtents(src, dst);
    expect(await writtenExtents(dst)).toEqual(await writtenExtents(src));
    expect(await sha(dst)).toBe(await sha(src));
    const cp = join(dir, 'diff-cp');
    execFileSync('cp', ['--sparse=auto', src, cp]);
    expect(await writtenExtents(cp)).not.toEqual(await writtenExtents(src));
  });
});
