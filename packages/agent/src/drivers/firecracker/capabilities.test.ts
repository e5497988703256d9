import { FIRECRACKER_SIM_VERSIONS, loadFirecrackerSpec } from '@nqvm/testkit/firecracker-sim/index';
import { describe, expect, it } from 'vitest';
import { CAPABILITY_TABLE, capabilitiesFor, versionAtLeast } from './capabilities';

describe('capability table', () => {
  const specs = FIRECRACKER_SIM_VERSIONS.map((v) => loadFirecrackerSpec(v));

  for (const row of CAPABILITY_TABLE) {
    const evidence = row.evidence;
    if ('notes' in evidence) continue;
    it(`${row.feature} (since ${row.since}) matches the official specs`, () => {
      for (const spec of specs) {
        let present: boolean;
        if ('endpoint' in evidence) {
          const [method, template] = evidence.endpoint.split(' ');
          present = spec.operations.some((o) => o.method === method && o.template === template);
        } else {
          const [def, prop] = evidence.field;
          present = prop in ((spec.definitions[def]?.properties as object | undefined) ?? {});
        }
        expect(present, `${row.feature} in ${spec.version}`).toBe(versionAtLeast(spec.version, row.since));
      }
    });
  }

  it('answers per version', () => {
    expect(capabilitiesFor('1.1.0').has('entropy')).toBe(false);
    expect(capabilitiesFor('1.4.0').has('entropy')).toBe(true);
    expect(capabilitiesFor('1.13.1').has('serial-out')).toBe(false);
    expect(capabilitiesFor('1.16.1').has('serial-out')).toBe(true);
    expect(capabilitiesFor('1.12.0').has('diff-snapshot-without-dirty-tracking')).toBe(false);
    expect(versionAtLeast('1.10.0', '1.9.9')).toBe(true);
    expect(versionAtLeast('v1.2.0', '1.13.0')).toBe(false);
  });
});
