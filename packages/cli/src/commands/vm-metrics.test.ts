import { describe, expect, it } from 'vitest';
import { type UsagePoint, usageRows } from './vm-metrics';

const point = (t: number, cpu: number, disk: number, rx: number): UsagePoint => ({
  t,
  cpu_seconds: cpu,
  rss_bytes: 1 << 20,
  disk_read_bytes: 0,
  disk_written_bytes: disk,
  net_rx_bytes: rx,
  net_tx_bytes: 0,
});

describe('usageRows', () => {
  it('turns cumulative counters into rates per interval', () => {
    const t0 = Date.UTC(2026, 11, 7, 12, 0, 0);
    const rows = usageRows([
      point(t0, 10, 0, 0),
      point(t0 + 2000, 11, 4096, 1000),
      point(t0 + 3000, 11.25, 4096, 1000),
    ]);
    expect(rows).toEqual([
      {
        time: '2026-12-07 12:00:02',
        cpuPercent: 50,
        rssBytes: 1 << 20,
        diskReadPerS: 0,
        diskWrittenPerS: 2048,
        netRxPerS: 500,
        netTxPerS: 0,
      },
      expect.objectContaining({ time: '2026-12-07 12:00:03', cpuPercent: 25, diskWrittenPerS: 0 }),
    ]);
  });

  it('starts again from zero when a counter goes back (the VMM restarted)', () => {
    const rows = usageRows([point(0, 100, 10_000, 0), point(1000, 0.5, 1000, 0)]);
    expect(rows[0]).toMatchObject({ cpuPercent: 50, diskWrittenPerS: 1000 });
    expect(usageRows([point(0, 1, 0, 0)])).toEqual([]);
  });
});
