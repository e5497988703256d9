import type { Role } from '@nqvm/api';

export type Principal =
  | { kind: 'anonymous' }
  | {
      kind: 'user';
      userId: string;
      username: string;
      /** Effective role: a token's role, never higher than its owner's. */
      role: Role;
      via: 'session' | 'token';
      tokenId?: string;
      sessionId?: string;
    }
  | { kind: 'host'; hostId: string; hostName: string }
  | { kind: 'join'; joinTokenId: string }
  /** The bearer of NQVM_METRICS_TOKEN: it may scrape `/metrics` and nothing else. */
  | { kind: 'metrics' };

export function actorOf(p: Principal): {
  type: 'user' | 'token' | 'host' | 'anonymous';
  id: string | null;
  name: string | null;
} {
  switch (p.kind) {
    case 'user':
      return p.via === 'token'
        ? { type: 'token', id: p.tokenId ?? null, name: p.username }
        : { type: 'user', id: p.userId, name: p.username };
    case 'host':
      return { type: 'host', id: p.hostId, name: p.hostName };
    case 'join':
      return { type: 'anonymous', id: p.joinTokenId, name: 'join-token' };
    default:
      return { type: 'anonymous', id: null, name: null };
  }
}
