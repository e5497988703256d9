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

/** Creates `file` holding our PID; false when it exists. */
async function createExclusive(file: string): Promise<boolean> {
  try {
    const fh = await open(file, 'wx');
    await fh.writeFile(`${process.pid}\n`);
    await fh.close();
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
}

/**
 * Takes an exclusive lock file holding our PID. Resolves to a release function, or to
 * `undefined` when a live process holds the lock. A lock left by a dead process is taken over,
 * by one process only: the takeover happens under a second, short-lived lock (`.break`), and
 * staleness is checked again while holding it, so a process that judged the old lock stale can
 * never remove the fresh lock another process has just taken.
 */
export async function tryLock(lockPath: string): Promise<(() => Promise<void>) | undefined> {
  const release = async () => {
    const holder = await readFile(lockPath, 'utf8').catch(() => '');
    if (Number.parseInt(holder, 10) === process.pid) await rm(lockPath, { force: true });
  };
  if (await createExclusive(lockPath)) return release;
  if (!(await isStale(lockPath))) return undefined;
  const breaker = `${lockPath}.break`;
  if (!(await createExclusive(breaker))) {
    // A breaker that died holding it: gone after a while, then the next try breaks the lock.
    if (await isStale(breaker)) await rm(breaker, { force: true });
    return undefined;
  }
  try {
    if (!(await isStale(lockPath))) return undefined;
    await rm(lockPath, { force: true });
    return (await createExclusive(lockPath)) ? release : undefined;
  } finally {
    await rm(breaker, { force: true });
  }
}
