import { describe, expect, it } from 'vitest';
import { parseBlockStats } from '../drivers/qemu/block-stats';
import { parseMeminfo, parseProcStatCpu } from '../host/host-usage';
import { parseNetDev } from '../host/net-dev';
import { guestSide } from './vm-usage';

describe('host counters', () => {
  it('reads /proc/net/dev lines by interface, and turns a TAP around to the guest’s view', () => {
    const text = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  123456     789    0    0    0     0          0         0   123456     789    0    0    0     0       0          0
nq1a2b3c4d5e: 1000 10 0 0 0 0 0 0 5000 50 0 0 0 0 0 0
`;
    const m = parseNetDev(text);
    expect(m.get('lo')).toEqual({ rxBytes: 123456, rxPackets: 789, txBytes: 123456, txPackets: 789 });
    const tap = m.get('nq1a2b3c4d5e')!;
    expect(guestSide('eth0', tap)).toEqual({
      nic: 'eth0',
      rxBytes: 5000,
      rxPackets: 50,
      txBytes: 1000,
      txPackets: 10,
    });
  });

  it('reads the cpu line of /proc/stat in seconds and MemAvailable', () => {
    const cpu = parseProcStatCpu('cpu  100 2 300 4000 50 0 6 0 0 0\ncpu0 1 2 3 4 5 6 7 8\n');
    expect(cpu).toEqual({
      user: 1,
      nice: 0.02,
      system: 3,
      idle: 40,
      iowait: 0.5,
      irq: 0,
      softirq: 0.06,
      steal: 0,
    });
    expect(parseMeminfo('MemTotal:  2048 kB\nMemFree: 1 kB\nMemAvailable:   1024 kB\n')).toEqual({
      totalBytes: 2048 * 1024,
      availableBytes: 1024 * 1024,
    });
  });

  it('keeps the drives of query-blockstats by their VmSpec id, nothing else', () => {
    const reply = [
      { device: 'disk-root', stats: { rd_bytes: 10, wr_bytes: 20, rd_operations: 1, wr_operations: 2 } },
      { device: 'disk-vol-1', stats: { rd_bytes: 0, wr_bytes: 0, rd_operations: 0, wr_operations: 0 } },
      { device: '', 'node-name': '#block123', stats: { rd_bytes: 99 } },
    ];
    expect(parseBlockStats(reply)).toEqual([
      { drive: 'root', readBytes: 10, writeBytes: 20, readOps: 1, writeOps: 2 },
      { drive: 'vol-1', readBytes: 0, writeBytes: 0, readOps: 0, writeOps: 0 },
    ]);
    expect(parseBlockStats({ error: 'x' })).toEqual([]);
  });
});
