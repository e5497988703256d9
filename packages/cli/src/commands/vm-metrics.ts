/** `nqvm vm metrics <vm>`: a VM's CPU, memory, disk and network over time, as its host keeps them. */
import type { Command } from 'commander';
import { formatBytes, printList, UsageError } from '../client/output';
import { action, KINDS, resolveId, session } from '../client/session';

export interface UsagePoint {
  t: number;
  cpu_seconds: number;
  rss_bytes: number;
  disk_read_bytes: number;
  disk_written_bytes: number;
  net_rx_bytes: number;
  net_tx_bytes: number;
}

export interface UsageRow {
  time: string;
  /** CPU busy over the interval, in percent of one core. */
  cpuPercent: number;
  rssBytes: number;
  diskReadPerS: number;
  diskWrittenPerS: number;
  netRxPerS: number;
  netTxPerS: number;
}

/**
 * Rates between consecutive points (counters are cumulative); a counter that went back (the VMM
 * restarted) starts its interval from zero.
 *
 * @example
 * usageRows(history.points); // [{ time: '12:00:01', cpuPercent: 12.5, ... }, ...]
 */
export function usageRows(points: UsagePoint[]): UsageRow[] {
  const rows: UsageRow[] = [];
  for (let i = 1; i < points.length; i++) {
    const a = points[i - 1]!;
    const b = points[i]!;
    const s = (b.t - a.t) / 1000;
    if (s <= 0) continue;
    const rate = (k: keyof UsagePoint) => {
      const d = b[k] - a[k];
      return (d >= 0 ? d : b[k]) / s;
    };
    rows.push({
      time: new Date(b.t).toISOString().replace('T', ' ').slice(0, 19),
      cpuPercent: Math.round(rate('cpu_seconds') * 1000) / 10,
      rssBytes: b.rss_bytes,
      diskReadPerS: rate('disk_read_bytes'),
      diskWrittenPerS: rate('disk_written_bytes'),
      netRxPerS: rate('net_rx_bytes'),
      netTxPerS: rate('net_tx_bytes'),
    });
  }
  return rows;
}

export function addMetricsCommand(vm: Command): void {
  vm.command('metrics')
    .argument('<vm>', 'name or id')
    .description("the VM's CPU, memory, disk and network over time (1 s for 10 minutes, 1 min for 7 days)")
    .option('-r, --resolution <step>', '1s or 1m', '1s')
    .option('-n, --last <rows>', 'how many of the newest intervals (table output)', '10')
    .action(
      action(async (name: string, opts: { resolution: string; last: string }, cmd: Command) => {
        if (opts.resolution !== '1s' && opts.resolution !== '1m')
          throw new UsageError(`--resolution must be 1s or 1m, not "${opts.resolution}"`);
        const last = Number(opts.last);
        if (!Number.isInteger(last) || last < 1) throw new UsageError('--last must be a positive integer');
        const { api, print } = await session(cmd);
        const id = await resolveId(api, KINDS.vm, name);
        const history = await api.get<{ points: UsagePoint[] }>(
          `/api/v1/vms/${id}/usage?resolution=${opts.resolution}`,
        );
        const rows = usageRows(history.points).slice(-last);
        const perS = (n: number) => `${formatBytes(Math.round(n))}/s`;
        printList(print, history, rows, [
          { header: 'TIME (UTC)', value: (r) => r.time },
          { header: 'CPU', value: (r) => `${r.cpuPercent}%` },
          { header: 'RSS', value: (r) => formatBytes(r.rssBytes) },
          { header: 'DISK READ', value: (r) => perS(r.diskReadPerS) },
          { header: 'DISK WRITE', value: (r) => perS(r.diskWrittenPerS) },
          { header: 'NET IN', value: (r) => perS(r.netRxPerS) },
          { header: 'NET OUT', value: (r) => perS(r.netTxPerS) },
        ]);
      }),
    );
}
