/**
 * Host capacity as the scheduler counts it, the one source of every capacity figure nqvm shows
 * (the hosts API, the dashboard, refusals): vCPUs are overcommitted (floor(cores x ratio)),
 * memory and disk never are; allocated is what the VMs placed on the host reserve, stopped ones
 * included (a stopped VM keeps its place and its disk on its host until it is deleted); free is
 * capacity - allocated.
 */
import type { HostRow } from '../db/schema';

/** What a VM asks of a host. */
export interface Demand {
  vcpu: number;
  memMib: number;
  diskMib: number;
  vmm: 'firecracker' | 'qemu' | null;
}

export interface Resource {
  /** What the scheduler places up to. */
  capacity: number;
  allocated: number;
  free: number;
}

export interface HostResources {
  vcpu: Resource & { cores: number; overcommit: number };
  mem_mib: Resource;
  disk_mib: Resource;
}

export type ResourceName = 'vcpu' | 'mem_mib' | 'disk_mib';

const RESOURCES: readonly ResourceName[] = ['vcpu', 'mem_mib', 'disk_mib'];

/** How a resource reads in a message. */
export const RESOURCE_WORDS: Record<ResourceName, string> = {
  vcpu: 'vCPU',
  mem_mib: 'memory',
  disk_mib: 'disk',
};

/** The vCPUs a host with `cores` takes at an overcommit ratio. */
export function vcpuCapacity(cores: number, overcommit: number): number {
  return Math.floor(cores * overcommit);
}

const resource = (capacity: number, allocated: number): Resource => ({
  capacity,
  allocated,
  free: Math.max(0, capacity - allocated),
});

/**
 * @example
 * hostResources(h, 4).vcpu; // { capacity: 8, allocated: 3, free: 5, cores: 2, overcommit: 4 }
 */
export function hostResources(
  h: Pick<
    HostRow,
    'cap_vcpu' | 'cap_mem_mib' | 'cap_disk_mib' | 'alloc_vcpu' | 'alloc_mem_mib' | 'alloc_disk_mib'
  >,
  overcommit: number,
): HostResources {
  return {
    vcpu: {
      ...resource(vcpuCapacity(h.cap_vcpu, overcommit), h.alloc_vcpu),
      cores: h.cap_vcpu,
      overcommit,
    },
    mem_mib: resource(Number(h.cap_mem_mib), Number(h.alloc_mem_mib)),
    disk_mib: resource(Number(h.cap_disk_mib), Number(h.alloc_disk_mib)),
  };
}

export function demandFigures(d: Demand): Record<ResourceName, number> {
  return { vcpu: d.vcpu, mem_mib: d.memMib, disk_mib: d.diskMib };
}

/** The resources a host has too little of free for `d`; empty when it fits. */
export function shortOn(r: HostResources, d: Demand): ResourceName[] {
  const need = demandFigures(d);
  return RESOURCES.filter((k) => need[k] > 0 && r[k].free < need[k]);
}

/** "2 vCPU, 512 MiB memory, 1024 MiB disk" */
export function figuresText(f: Record<ResourceName, number>): string {
  return `${f.vcpu} vCPU, ${f.mem_mib} MiB memory, ${f.disk_mib} MiB disk`;
}

/** "vCPU and memory" */
export function resourcesText(names: ResourceName[]): string {
  const words = names.map((n) => RESOURCE_WORDS[n]);
  return words.length > 1 ? `${words.slice(0, -1).join(', ')} and ${words.at(-1)}` : (words[0] ?? '');
}
