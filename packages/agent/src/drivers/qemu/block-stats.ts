import type { DiskUsage } from '../types';

/** What `query-blockstats` answers per drive (the fields nqvm reads). */
interface BlockStatsEntry {
  device?: string;
  stats?: { rd_bytes?: number; wr_bytes?: number; rd_operations?: number; wr_operations?: number };
}

const DRIVE_PREFIX = 'disk-';

/**
 * The drives' counters from QMP `query-blockstats`, by the VmSpec drive id: QEMU names each
 * `-drive` by `driveId()` ("disk-root"); entries of other block nodes are left out.
 *
 * @example
 * parseBlockStats(await qmp.execute('query-blockstats')); // [{ drive: 'root', readBytes: 1048576, ... }]
 */
export function parseBlockStats(reply: unknown): DiskUsage[] {
  if (!Array.isArray(reply)) return [];
  const out: DiskUsage[] = [];
  for (const e of reply as BlockStatsEntry[]) {
    if (typeof e?.device !== 'string' || !e.device.startsWith(DRIVE_PREFIX) || !e.stats) continue;
    out.push({
      drive: e.device.slice(DRIVE_PREFIX.length),
      readBytes: e.stats.rd_bytes ?? 0,
      writeBytes: e.stats.wr_bytes ?? 0,
      readOps: e.stats.rd_operations ?? 0,
      writeOps: e.stats.wr_operations ?? 0,
    });
  }
  return out;
}
