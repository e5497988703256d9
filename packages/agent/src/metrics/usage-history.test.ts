import { describe, expect, it } from 'vitest';
import { UsageHistory } from './usage-history';
import type { VmUsage } from './vm-usage';

const usage = (vmId: string, cpu: number): VmUsage => ({
  vmId,
  vmm: 'qemu',
  state: 'running',
  vcpu: 1,
  memMib: 128,
  cpuSeconds: cpu,
  rssBytes: 1000,
  disks: [
    { drive: 'root', readBytes: 10, writeBytes: 20, readOps: 1, writeOps: 1 },
    { drive: 'cidata', readBytes: 5, writeBytes: 0, readOps: 1, writeOps: 0 },
  ],
  nics: [{ nic: 'eth0', rxBytes: 7, rxPackets: 1, txBytes: 9, txPackets: 1 }],
});

describe('UsageHistory', () => {
  it('keeps 10 minutes of seconds and 7 days of minutes, oldest first, the last sample of each step', () => {
    const h = new UsageHistory();
    const start = Date.UTC(2026, 0, 1);
    // Two hours, a sample a second.
    for (let s = 0; s < 7200; s++) h.record(usage('a', s), start + s * 1000);
    const now = start + 7199 * 1000;
    const seconds = h.points('a', '1s', now)!;
    expect(seconds).toHaveLength(600);
    expect(seconds[0]!.t).toBe(now - 599_000);
    expect(seconds.at(-1)).toEqual({
      t: now,
      cpu_seconds: 7199,
      rss_bytes: 1000,
      disk_read_bytes: 15,
      disk_written_bytes: 20,
      net_rx_bytes: 7,
      net_tx_bytes: 9,
    });
    const minutes = h.points('a', '1m', now)!;
    expect(minutes).toHaveLength(120);
    // Each minute holds its last second: 59, 119, ...
    expect(minutes.slice(0, 2).map((p) => p.cpu_seconds)).toEqual([59, 119]);
    expect(minutes.map((p) => p.t)).toEqual([...minutes.map((p) => p.t)].sort((x, y) => x - y));
  });

  it('forgets nothing it should keep and everything past its window', () => {
    const h = new UsageHistory();
    h.record(usage('b', 1), 1_000_000);
    expect(h.points('b', '1s', 1_000_000 + 599_000)).toHaveLength(1);
    expect(h.points('b', '1s', 1_000_000 + 600_000)).toEqual([]);
    expect(h.points('b', '1m', 1_000_000 + 7 * 86_400_000 - 60_000)).toHaveLength(1);
    expect(h.points('b', '1m', 1_000_000 + 7 * 86_400_000)).toEqual([]);
    expect(h.points('nobody', '1s', 0)).toBeNull();
    h.forget('b');
    expect(h.ids()).toEqual([]);
  });
});
