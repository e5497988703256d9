import { describe, expect, test } from 'vitest';
import { hostFigures, totalFigures } from '../src/capacity';
import type { Host } from '../src/types';

const host = (name: string, cores: number, alloc: number): Host =>
  ({
    id: `00000000-0000-4000-8000-00000000000${cores}`,
    name,
    capacity: { vcpu: cores, mem_mib: 4096, disk_mib: 10_000, kvm: false, drivers: [] },
    allocated: { vcpu: alloc, mem_mib: 768, disk_mib: 3072 },
  }) as unknown as Host;

describe('capacity as the scheduler counts it', () => {
  test('3 one-vCPU VMs on a 2-core host: 3 of 8 with 4x overcommit, 5 free (what the scheduler says)', () => {
    const f = hostFigures(host('hv', 2, 3));
    expect(f.vcpu).toEqual({ cores: 2, overcommit: 4, capacity: 8, allocated: 3, free: 5 });
    expect(f.mem_mib).toEqual({ allocated: 768, capacity: 4096, free: 3328 });
    expect(f.disk_mib).toEqual({ allocated: 3072, capacity: 10_000, free: 6928 });
  });

  test('totals add hosts up', () => {
    const t = totalFigures([host('a', 2, 3), host('b', 4, 1)]);
    expect(t.vcpu).toEqual({ cores: 6, overcommit: 4, capacity: 24, allocated: 4, free: 20 });
    expect(t.mem_mib.free).toBe(2 * 3328);
  });
});
