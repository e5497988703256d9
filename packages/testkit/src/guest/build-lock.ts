import { open, readFile, rm, stat } from 'node:fs/promises';

/** A lock older than this is taken over even if its PID is alive (PID reuse, other container). */
const MAX_LOCK_AGE_MS = 30 * 60 * 1000;

export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function isStale(lockPath: string): Promise<boolean> {
  const [text, info] = await Promise.all([
    readFile(lockPath, 'utf8').catch(() => undefined),
    stat(lockPath).catch(() => undefined),
  ]);
  if (!info) return true;
  const age = Date.now() - info.mtimeMs;
  const pid = Number.parseInt(text ?? '', 10);
  // An empty lock is one being written right now, unless it has stayed empty for a while.
  if (!Number.isInteger(pid)) return age > 10_000;
  return !isProcessAlive(pid) || age > MAX_LOCK_AGE_MS;
}

/**
 * Takes an exclusive lock file holding our PID. Resolves to a release function, or to
 * `undefined` when a live process holds the lock. A lock left by a dead process is taken over.
 * Two processes breaking the same stale lock may both build: publishing by rename keeps the
 * cache consistent even then, at the cost of one wasted build.
 */
export async function tryLock(lockPath: string): Promise<(() => Promise<void>) | undefined> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const file = await open(lockPath, 'wx');
      await file.writeFile(`${process.pid}\n`);
      await file.close();
      return async () => {
        const holder = await readFile(lockPath, 'utf8').catch(() => '');
        if (Number.parseInt(holder, 10) === process.pid) await rm(lockPath, { force: true });
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    if (!(await isStale(lockPath))) return undefined;
    await rm(lockPath, { force: true });
  }
  return undefined;
}
