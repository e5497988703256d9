/**
 * Each VM's usage over time, kept by the agent for its own VMs: a sample a second for the last
 * 10 minutes and one a minute for 7 days, in fixed typed-array rings (about 0.5 MiB per VM
 * at most, nothing allocated per sample). Counters are cumulative, as Prometheus keeps them: a
 * reader takes rates from consecutive points.
 */
import type { VmUsage } from './vm-usage';

export const USAGE_FIELDS = [
  'cpu_seconds',
  'rss_bytes',
  'disk_read_bytes',
  'disk_written_bytes',
  'net_rx_bytes',
  'net_tx_bytes',
] as const;
export type UsageField = (typeof USAGE_FIELDS)[number];
export type UsagePoint = { t: number } & Record<UsageField, number>;

export const RESOLUTIONS = {
  '1s': { stepMs: 1_000, slots: 600 },
  '1m': { stepMs: 60_000, slots: 7 * 24 * 60 },
} as const;
export type Resolution = keyof typeof RESOLUTIONS;

const WIDTH = 1 + USAGE_FIELDS.length;

/** One resolution's ring: slot i holds the last sample of its step (time first, then the fields). */
class Ring {
  private readonly data: Float64Array;

  constructor(
    private readonly stepMs: number,
    private readonly slots: number,
  ) {
    this.data = new Float64Array(slots * WIDTH).fill(Number.NaN);
  }

  put(t: number, values: readonly number[]): void {
    const at = (Math.floor(t / this.stepMs) % this.slots) * WIDTH;
    this.data[at] = t;
    for (let i = 0; i < values.length; i++) this.data[at + 1 + i] = values[i]!;
  }

  points(now: number): UsagePoint[] {
    const oldest = now - this.stepMs * this.slots;
    const out: UsagePoint[] = [];
    for (let s = 0; s < this.slots; s++) {
      const t = this.data[s * WIDTH]!;
      if (!(t > oldest && t <= now)) continue;
      const p = { t } as UsagePoint;
      USAGE_FIELDS.forEach((f, i) => {
        p[f] = this.data[s * WIDTH + 1 + i]!;
      });
      out.push(p);
    }
    return out.sort((a, b) => a.t - b.t);
  }
}

/** The sample's values in USAGE_FIELDS order (drives and NICs summed). */
export function usageValues(u: VmUsage): number[] {
  const disks = u.disks ?? [];
  return [
    u.cpuSeconds,
    u.rssBytes,
    disks.reduce((n, d) => n + d.readBytes, 0),
    disks.reduce((n, d) => n + d.writeBytes, 0),
    u.nics.reduce((n, x) => n + x.rxBytes, 0),
    u.nics.reduce((n, x) => n + x.txBytes, 0),
  ];
}

/**
 * @example
 * const history = new UsageHistory();
 * history.record(usage, Date.now());
 * history.points(vmId, '1s', Date.now()); // [{ t, cpu_seconds, rss_bytes, ... }, ...] oldest first
 */
export class UsageHistory {
  private readonly vms = new Map<string, Record<Resolution, Ring>>();

  record(u: VmUsage, t: number): void {
    let rings = this.vms.get(u.vmId);
    if (!rings) {
      rings = {
        '1s': new Ring(RESOLUTIONS['1s'].stepMs, RESOLUTIONS['1s'].slots),
        '1m': new Ring(RESOLUTIONS['1m'].stepMs, RESOLUTIONS['1m'].slots),
      };
      this.vms.set(u.vmId, rings);
    }
    const values = usageValues(u);
    rings['1s'].put(t, values);
    rings['1m'].put(t, values);
  }

  /** Points of a VM at a resolution, oldest first; null for a VM never sampled here. */
  points(vmId: string, resolution: Resolution, now: number): UsagePoint[] | null {
    return this.vms.get(vmId)?.[resolution].points(now) ?? null;
  }

  /** Drops a deleted VM's history. */
  forget(vmId: string): void {
    this.vms.delete(vmId);
  }

  /** VM ids with a history. */
  ids(): string[] {
    return [...this.vms.keys()];
  }
}
