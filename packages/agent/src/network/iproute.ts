/** Reading links, addresses, routes and neighbours with `ip -json`, in typed form. */
import type { HostRunner } from './host-runner';

export interface Link {
  name: string;
  /** The interface alias: nqvm's owner tag on the links it made. */
  alias: string | null;
  /** `bridge`, `tun`, `veth`, ... ; null for a plain device. */
  kind: string | null;
  /** The link layer as `ip` reports it: `ether`, `loopback`, `none` (a tun), ... */
  linkType?: string;
  /** `tap` or `tun` for a tun device. */
  tunType: string | null;
  /** Owner of a tun device, as iproute2 prints it (a user name or uid). */
  tunUser: string | null;
  master: string | null;
  up: boolean;
  mac: string;
}

export interface Address {
  local: string;
  prefixlen: number;
}

export interface Route {
  /** `default` or a prefix / address. */
  dst: string;
  gateway?: string;
  dev?: string;
  metric?: number;
  protocol?: string;
  scope?: string;
}

interface RawLink {
  ifname: string;
  ifalias?: string;
  link_type?: string;
  flags?: string[];
  master?: string;
  address?: string;
  linkinfo?: { info_kind?: string; info_data?: { type?: string; user?: string | number } };
}

/** Every link of the namespace, by name. */
export async function listLinks(host: HostRunner): Promise<Map<string, Link>> {
  const raw = JSON.parse(await host.run('ip', ['-json', '-details', 'link', 'show'])) as RawLink[];
  return new Map(
    raw.map((l) => [
      l.ifname,
      {
        name: l.ifname,
        alias: l.ifalias ?? null,
        kind: l.linkinfo?.info_kind ?? null,
        ...(l.link_type ? { linkType: l.link_type } : {}),
        tunType: l.linkinfo?.info_data?.type ?? null,
        tunUser: l.linkinfo?.info_data?.user === undefined ? null : String(l.linkinfo.info_data.user),
        master: l.master ?? null,
        up: l.flags?.includes('UP') ?? false,
        mac: (l.address ?? '').toLowerCase(),
      },
    ]),
  );
}

/** Global IPv4 addresses of `dev`. */
export async function listAddresses(host: HostRunner, dev: string): Promise<Address[]> {
  const raw = JSON.parse(await host.run('ip', ['-json', '-4', 'address', 'show', 'dev', dev])) as Array<{
    addr_info?: Array<{ family?: string; local?: string; prefixlen?: number; scope?: string }>;
  }>;
  return raw.flatMap((l) =>
    (l.addr_info ?? []).flatMap((a) =>
      a.family === 'inet' && a.scope === 'global' && a.local && a.prefixlen !== undefined
        ? [{ local: a.local, prefixlen: a.prefixlen }]
        : [],
    ),
  );
}

/** IPv4 routes of the main table, optionally only those through `dev`. */
export async function listRoutes(host: HostRunner, dev?: string): Promise<Route[]> {
  const args = ['-json', '-4', 'route', 'show', ...(dev ? ['dev', dev] : [])];
  const raw = JSON.parse(await host.run('ip', args)) as Route[];
  return raw.map((r) => (dev ? { ...r, dev } : r));
}

export interface Neighbour {
  ip: string;
  mac: string;
  state: string[];
}

/** IPv4 neighbours seen on `dev`. */
export async function listNeighbours(host: HostRunner, dev: string): Promise<Neighbour[]> {
  const raw = JSON.parse(await host.run('ip', ['-json', '-4', 'neigh', 'show', 'dev', dev])) as Array<{
    dst?: string;
    lladdr?: string;
    state?: string[];
  }>;
  return raw.flatMap((n) =>
    n.dst && n.lladdr ? [{ ip: n.dst, mac: n.lladdr.toLowerCase(), state: n.state ?? [] }] : [],
  );
}

/** argv of `ip route replace` re-creating `route` on `dev`. */
export function routeArgs(route: Route, dev: string): string[] {
  return [
    'route',
    'replace',
    route.dst,
    ...(route.gateway ? ['via', route.gateway] : []),
    'dev',
    dev,
    ...(route.metric !== undefined ? ['metric', String(route.metric)] : []),
  ];
}
