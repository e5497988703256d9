/**
 * Host capacity as the scheduler counts it, the one source for every bar in the UI: the hosts
 * API's `resources` (vCPUs overcommitted, cores x the manager's ratio; memory and disk never;
 * free = capacity - allocated, stopped VMs included in allocated). Nothing is assumed here.
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

/**
 * One host's figures, as the manager's scheduler reports them.
 * @example hostFigures(h).vcpu // { cores: 2, overcommit: 4, capacity: 8, allocated: 3, free: 5 }
 */
export function hostFigures(h: Host): CapacityFigures {
  return h.resources;
}

/** The sum over hosts (the dashboard's totals); the ratio shown is the hosts' one (all share the manager's). */
export function totalFigures(hosts: Host[]): CapacityFigures {
  const all = hosts.map(hostFigures);
  const sum = (f: (c: CapacityFigures) => ResourceFigures): ResourceFigures =>
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
  const { allocated, capacity, free } = sum((c) => c.vcpu);
  return {
    vcpu: {
      allocated,
      capacity,
      free,
      cores: all.reduce((n, c) => n + c.vcpu.cores, 0),
      overcommit: all[0]?.vcpu.overcommit ?? 1,
    },
    mem_mib: sum((c) => c.mem_mib),
    disk_mib: sum((c) => c.disk_mib),
  };
}
