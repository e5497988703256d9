import { fstatSync, ftruncateSync, readSync, writeSync } from 'node:fs';
import { open, rename, rm, stat } from 'node:fs/promises';

/**
 * The on-disk console log that the VMM appends to (QEMU: the chardev `logfile=` opened with
 * O_APPEND), kept bounded by rotation: once `console.log` exceeds its limit, its last `keepBytes`
 * go to `console.log.1` and `console.log` is truncated to zero. The writer's O_APPEND makes its
 * next write land at the new end, so truncation never leaves a hole or corrupts later output.
 */

/** Path of the previous generation of a log. */
export function rotatedLogPath(logPath: string): string {
  return `${logPath}.1`;
}

/**
 * Path of the console hub's own log beside the VMM's `logPath`: the output as the hub received
 * it, each byte once (QEMU's log repeats the bytes its socket refused once, see ConsoleHub).
 */
export function receivedLogPath(logPath: string): string {
  return logPath.endsWith('.log') ? `${logPath.slice(0, -4)}.received.log` : `${logPath}.received`;
}

async function sizeOf(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch {
    return 0;
  }
}

async function readRange(path: string, from: number, to: number): Promise<Buffer> {
  if (to <= from) return Buffer.alloc(0);
  const fh = await open(path, 'r').catch(() => null);
  if (!fh) return Buffer.alloc(0);
  try {
    const buf = Buffer.alloc(to - from);
    const { bytesRead } = await fh.read(buf, 0, buf.length, from);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** The last `bytes` bytes of the log, reaching into `console.log.1` when `console.log` is short. */
export async function readLogTail(logPath: string, bytes: number): Promise<Buffer> {
  const size = await sizeOf(logPath);
  const current = await readRange(logPath, Math.max(0, size - bytes), size);
  const missing = bytes - current.length;
  if (missing <= 0) return current;
  const older = rotatedLogPath(logPath);
  const olderSize = await sizeOf(older);
  const previous = await readRange(older, Math.max(0, olderSize - missing), olderSize);
  return Buffer.concat([previous, current]);
}

/**
 * Rotates `logPath` when it is larger than `maxBytes`; returns whether it did. The bulk of the
 * tail is copied asynchronously; then, with no yield to the event loop, whatever the VMM
 * appended meanwhile is copied and the log truncated. Only a write landing in the microseconds
 * between that last fstat and the ftruncate can be lost from disk (the hub's memory has it).
 */
export async function rotateLogIfLarge(
  logPath: string,
  maxBytes: number,
  keepBytes = maxBytes,
): Promise<boolean> {
  const log = await open(logPath, 'r+').catch(() => null);
  if (!log) return false;
  const older = rotatedLogPath(logPath);
  const tmp = `${older}.tmp`;
  try {
    const size = (await log.stat()).size;
    if (size <= maxBytes) return false;
    const out = await open(tmp, 'w');
    try {
      let copiedTo = Math.max(0, size - keepBytes);
      const bulk = Buffer.alloc(size - copiedTo);
      const { bytesRead } = await log.read(bulk, 0, bulk.length, copiedTo);
      await out.write(bulk.subarray(0, bytesRead));
      copiedTo += bytesRead;
      for (let round = 0; round < 8; round++) {
        const now = fstatSync(log.fd).size;
        if (now <= copiedTo) break;
        const extra = Buffer.alloc(now - copiedTo);
        const n = readSync(log.fd, extra, 0, extra.length, copiedTo);
        writeSync(out.fd, extra, 0, n);
        copiedTo += n;
      }
      ftruncateSync(log.fd, 0);
    } finally {
      await out.close();
    }
    await rename(tmp, older);
    return true;
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  } finally {
    await log.close();
  }
}
