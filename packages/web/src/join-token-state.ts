/** The state a join token's row shows. */
import type { JoinToken } from './types';

/**
 * What a join token's row says: revoked, expired, or valid; one an agent joined with says
 * "used" (still usable until it expires, so it can still be revoked).
 */
export function joinTokenState(
  t: Pick<JoinToken, 'revoked_at' | 'expires_at' | 'last_used_at'>,
  now: number,
): {
  tone: 'ok' | 'muted' | 'err' | 'info';
  label: 'revoked' | 'used' | 'expired' | 'valid';
  usable: boolean;
} {
  const usable = !t.revoked_at && new Date(t.expires_at).getTime() > now;
  if (t.revoked_at) return { tone: 'err', label: 'revoked', usable };
  if (t.last_used_at) return { tone: usable ? 'info' : 'muted', label: 'used', usable };
  if (!usable) return { tone: 'muted', label: 'expired', usable };
  return { tone: 'ok', label: 'valid', usable };
}
