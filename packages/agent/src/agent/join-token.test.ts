import { describe, expect, it } from 'vitest';
import { parseJoinToken } from './manager-client';

const HEX = 'ab'.repeat(32);

describe('parseJoinToken', () => {
  it('splits the secret from a sha256 pin, with or without colons, in any case', () => {
    expect(parseJoinToken('nqvm_join_x')).toEqual({ secret: 'nqvm_join_x', tlsFingerprint: null });
    expect(parseJoinToken(`nqvm_join_x~sha256:${HEX.toUpperCase()}`)).toEqual({
      secret: 'nqvm_join_x',
      tlsFingerprint: HEX,
    });
    const colons = HEX.match(/../g)?.join(':');
    expect(parseJoinToken(`nqvm_join_x~sha256:${colons}`).tlsFingerprint).toBe(HEX);
  });

  it('refuses a pin that is not a sha256 fingerprint', () => {
    for (const bad of [`x~${HEX}`, 'x~sha256:abc', `x~sha256:${HEX}00`, `x~sha1:${HEX}`]) {
      expect(() => parseJoinToken(bad), bad).toThrow(/malformed certificate pin/);
    }
  });
});
