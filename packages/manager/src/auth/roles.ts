import type { Role } from '@nqvm/api';

const rank: Record<Role, number> = { viewer: 1, operator: 2, admin: 3 };

export function roleAtLeast(have: Role, need: Role): boolean {
  return rank[have] >= rank[need];
}

export function lowerRole(a: Role, b: Role): Role {
  return rank[a] <= rank[b] ? a : b;
}

/**
 * Who may call a route. Every route declares one; a route without it fails at start-up.
 * `metrics`: an operator (or admin), or the metrics token (NQVM_METRICS_TOKEN).
 */
export type RouteAccess = 'public' | 'viewer' | 'operator' | 'admin' | 'host' | 'join' | 'metrics';
