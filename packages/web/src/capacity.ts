/**
 * Host capacity as the scheduler counts it, the one source for every bar in the UI: vCPUs are
 * overcommitted (cores x ratio), memory and disk never are; free = capacity - allocated.
 */
import type { Host } from './types';

export interface ResourceFigures {
  allocated: number;
  /** What the scheduler places up to (for vCPUs: the cores times the overcommit ratio). */
  capacity: number;
  free: number;
}

export interface CapacityFigures {
  vcpu: ResourceFigures & { cores: number; overcommit: number };
  mem_mib: ResourceFigures;
  disk_mib: ResourceFigures;
}

/** The manager's NQVM_VCPU_OVERCOMMIT default, for a manager that does not say its ratio. */
export const DEFAULT_VCPU_OVERCOMMIT = 4;

const resource = (allocated: number, capacity: number): ResourceFigures => ({
  allocated,
  capacity,
  free: Math.max(0, capacity - allocated),
});

/**
 * One host's figures, mirroring the scheduler's rule (floor(cores x ratio) - allocated vCPUs).
 * @example hostFigures(h).vcpu // { cores: 2, overcommit: 4, capacity: 8, allocated: 3, free: 5 }
 */
export function hostFigures(h: Host, overcommit = DEFAULT_VCPU_OVERCOMMIT): CapacityFigures {
  return {
    vcpu: {
      ...resource(h.allocated.vcpu, Math.floor(h.capacity.vcpu * overcommit)),
      cores: h.capacity.vcpu,
      overcommit,
    },
    mem_mib: resource(h.allocated.mem_mib, h.capacity.mem_mib),
    disk_mib: resource(h.allocated.disk_mib, h.capacity.disk_mib),
  };
}

/** The sum over hosts (the dashboard's totals). */
export function totalFigures(hosts: Host[], overcommit = DEFAULT_VCPU_OVERCOMMIT): CapacityFigures {
  const sum = (f: (c: CapacityFigures) => ResourceFigures, all: CapacityFigures[]) =>
    all.reduce(
      (acc, c) => {
        const r = f(c);
        return {
          allocated: acc.allocated + r.allocated,
          capacity: acc.capacity + r.capacity,
          free: acc.free + r.free,
        };
      },
      { allocated: 0, capacity: 0, free: 0 },
    );
  const all = hosts.map((h) => hostFigures(h, overcommit));
  const ratios = new Set(all.map((c) => c.vcpu.overcommit));
  return {
    vcpu: {
      ...sum((c) => c.vcpu, all),
      cores: all.reduce((n, c) => n + c.vcpu.cores, 0),
      overcommit: ratios.size === 1 ? [...ratios][0]! : overcommit,
    },
    mem_mib: sum((c) => c.mem_mib, all),
    disk_mib: sum((c) => c.disk_mib, all),
  };
}
