/**
 * `nqvm up`'s default NAT network: a /24 that no route of the host already covers, so VM
 * traffic never shadows a LAN, a VPN or a container network.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { NetworkCreate } from '@nqvm/api';
import type { Manager } from '@nqvm/manager';
import { overlaps, parseIpv4, parseSubnet, type Subnet } from '@nqvm/manager/networks/ipam';

/** Tried in order: 10.213.0.0/24 .. 10.222.0.0/24, then 172.30.0.0/24 .. 172.30.9.0/24. */
export const DEFAULT_NETWORK_CANDIDATES = [
  ...Array.from({ length: 10 }, (_, i) => `10.${213 + i}.0.0/24`),
  ...Array.from({ length: 10 }, (_, i) => `172.30.${i}.0/24`),
];

/** A route's destination as a subnet; null for `default` (it would overlap everything). */
function routeSubnet(dst: string): Subnet | null {
  if (dst === 'default') return null;
  const [addr, prefix = '32'] = dst.split('/');
  const a = parseIpv4(addr ?? '');
  if (a === null) return null;
  const p = Number(prefix);
  const size = 2 ** (32 - p);
  return { network: a - (a % size), prefix: p };
}

/**
 * The first candidate no route overlaps; null when all are taken.
 *
 * @example
 * pickDefaultSubnet([{ dst: '10.213.0.0/16' }]); // '10.214.0.0/24'
 */
export function pickDefaultSubnet(routes: Array<{ dst: string }>): string | null {
  const taken = routes.map((r) => routeSubnet(r.dst)).filter((s): s is Subnet => s !== null);
  return DEFAULT_NETWORK_CANDIDATES.find((c) => !taken.some((t) => overlaps(parseSubnet(c)!, t))) ?? null;
}

/** The host's IPv4 routes, every table (`ip -json route show table all`). */
export async function hostRoutes(): Promise<Array<{ dst: string }>> {
  const { stdout } = await promisify(execFile)('ip', ['-4', '-json', 'route', 'show', 'table', 'all']);
  return JSON.parse(stdout) as Array<{ dst: string }>;
}

/** Creates the `default` NAT network when there is no default network yet; answers what it did. */
export async function ensureDefaultNetwork(manager: Manager): Promise<string> {
  const { networks, store } = manager.services;
  const existing = await store.db
    .selectFrom('networks')
    .select(['name', 'cidr'])
    .where('is_default', '=', 1)
    .executeTakeFirst();
  if (existing) return `default network ${existing.name} (${existing.cidr})`;
  const cidr = pickDefaultSubnet(await hostRoutes());
  if (!cidr) return 'no default network: every candidate subnet overlaps a route of this host';
  const n = await networks.create(
    NetworkCreate.parse({ name: 'default', kind: 'nat', cidr, is_default: true }),
  );
  return `created the default NAT network ${n.name} (${n.cidr}, gateway ${n.gateway})`;
}
