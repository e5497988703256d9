import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tryLock } from './build-lock';

describe('build lock', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('lets exactly one of many concurrent takers break a dead holder’s lock', async () => {
    for (let round = 0; round < 20; round++) {
      const dir = await mkdtemp(join(tmpdir(), 'nqvm-lock-'));
      dirs.push(dir);
      const lock = join(dir, 'x.lock');
      // A pid no process has (pid_max is at most 2^22).
      await writeFile(lock, '4194304999\n');
      const takers = await Promise.all(Array.from({ length: 8 }, () => tryLock(lock)));
      expect(takers.filter(Boolean)).toHaveLength(1);
      await takers.find(Boolean)!();
      expect(await readdir(dir)).toEqual([]);
    }
  });

  it('refuses a lock a live process holds, and takes a released one', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'nqvm-lock-'));
    dirs.push(dir);
    const lock = join(dir, 'y.lock');
    const first = await tryLock(lock);
    expect(first).toBeDefined();
    expect(await tryLock(lock)).toBeUndefined();
    await first!();
    expect(await tryLock(lock)).toBeDefined();
  });
});
