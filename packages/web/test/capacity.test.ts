import { describe, expect, test } from 'vitest';
import { hostFigures, totalFigures } from '../src/capacity';
import type { Host } from '../src/types';

/** A host as the API shows it: `resources` are the scheduler's figures, with the manager's ratio. */
const host = (name: string, cores: number, alloc: number, overcommit: number): Host =>
  ({
    id: `00000000-0000-4000-8000-00000000000${cores}`,
    name,
    capacity: { vcpu: cores, mem_mib: 4096, disk_mib: 10_000, kvm: false, drivers: [] },
    allocated: { vcpu: alloc, mem_mib: 768, disk_mib: 3072 },
    resources: {
      vcpu: {
        cores,
        overcommit,
        capacity: Math.floor(cores * overcommit),
        allocated: alloc,
        free: Math.floor(cores * overcommit) - alloc,
      },
      mem_mib: { capacity: 4096, allocated: 768, free: 3328 },
      disk_mib: { capacity: 10_000, allocated: 3072, free: 6928 },
    },
  }) as unknown as Host;

describe('capacity as the scheduler counts it', () => {
  test("the figures are the API's, whatever the manager's ratio (no ratio assumed in the UI)", () => {
    const f = hostFigures(host('hv', 2, 3, 1.5));
    expect(f.vcpu).toEqual({ cores: 2, overcommit: 1.5, capacity: 3, allocated: 3, free: 0 });
    expect(f.mem_mib).toEqual({ allocated: 768, capacity: 4096, free: 3328 });
    expect(f.disk_mib).toEqual({ allocated: 3072, capacity: 10_000, free: 6928 });
  });

  test('totals add hosts up', () => {
    const t = totalFigures([host('a', 2, 3, 2), host('b', 4, 1, 2)]);
    expect(t.vcpu).toEqual({ cores: 6, overcommit: 2, capacity: 12, allocated: 4, free: 8 });
    expect(t.mem_mib.free).toBe(2 * 3328);
  });
});
