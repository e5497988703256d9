import { open } from 'node:fs/promises';
import type { RunRecord } from '../types';

/**
 * The most recent metrics line Firecracker wrote (every 60 s and on FlushMetrics), parsed;
 * null when none was written yet.
 *
 * @example
 * await driver.flushMetrics(handle);
 * const m = await readFirecrackerMetrics(handle.record); // { utc_timestamp_ms, ... }
 */
export async function readFirecrackerMetrics(record: RunRecord): Promise<Record<string, unknown> | null> {
  const path = record.extra?.metricsPath;
  if (typeof path !== 'string') throw new Error(`run record of ${record.vmId} has no metrics path`);
  let fh: Awaited<ReturnType<typeof open>>;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  try {
    const size = (await fh.stat()).size;
    // One metrics line is a few KiB; read enough of the end to hold the last complete one.
    const len = Math.min(size, 256 * 1024);
    const buf = Buffer.alloc(len);
    await fh.read(buf, 0, len, size - len);
    const lines = buf.toString('utf8').split('\n');
    for (let i = lines.length - 1; i >= 0; i--) {
      const line = lines[i]!.trim();
      if (line === '') continue;
      try {
        return JSON.parse(line) as Record<string, unknown>;
      } catch {
        // A line cut by the read window or still being written: try the one before.
      }
    }
    return null;
  } finally {
    await fh.close();
  }
}
