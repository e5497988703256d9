/** The manager shows NIC MACs it derives itself; they must be the ones this host's TAPs get. */
import { nicMac } from '@nqvm/api';
import { describe, expect, it } from 'vitest';
import { macFor } from '../network/names';

describe('NIC MACs', () => {
  it('are the same on the manager (nicMac) and the agent (macFor)', () => {
    for (const vmId of ['4b0c2f9e-1d7a-4e0b-9b1e-0f3c2a1d5e6f', '00000000-0000-4000-8000-000000000001'])
      for (const i of [0, 1, 7]) expect(nicMac(vmId, i)).toBe(macFor(vmId, i));
  });
});
