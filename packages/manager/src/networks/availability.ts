/**
 * Where a network is available: a network that names a host interface (a bridged network's
 * bridge or uplink, a nat network's uplink) exists only on the hosts whose agent reports that
 * interface, of a kind it can be used as; a network naming none exists on every host. Derived
 * from the hosts' latest reports, never stored, so it follows hosts as they join and change.
 */
import type { HostInterface } from '@nqvm/api';
import type { Kysely } from 'kysely';
import type { Database, HostRow, NetworkRow } from '../db/schema';
import { networkConfig } from './networks';

/** The host interface a network needs, as the agent would use it. */
export interface InterfaceNeed {
  networkId: string;
  networkName: string;
  /** bridge: an existing bridge VMs join; uplink: enslaved to nqvm's bridge (bridged) or the way out (nat). */
  role: 'bridge' | 'uplink';
  name: string;
  /** bridged: the uplink is enslaved to a new bridge, which a bridge cannot be. */
  enslaved: boolean;
}

/** What the network needs of a host, or null when any host will do. */
export function interfaceNeed(n: Pick<NetworkRow, 'id' | 'name' | 'kind' | 'config'>): InterfaceNeed | null {
  const c = networkConfig(n);
  const base = { networkId: n.id, networkName: n.name };
  if (n.kind === 'bridged' && c.bridge) return { ...base, role: 'bridge', name: c.bridge, enslaved: false };
  if (n.kind !== 'isolated' && c.uplink)
    return { ...base, role: 'uplink', name: c.uplink, enslaved: n.kind === 'bridged' };
  return null;
}

export function reportedInterfaces(h: Pick<HostRow, 'capacity'>): HostInterface[] {
  return (JSON.parse(h.capacity) as { interfaces?: HostInterface[] }).interfaces ?? [];
}

/** Whether `iface` can serve `need`: a bridge to join must be a bridge, an uplink to enslave must not. */
export function serves(iface: HostInterface, need: Pick<InterfaceNeed, 'role' | 'enslaved'>): boolean {
  if (need.role === 'bridge') return iface.kind === 'bridge';
  return !(need.enslaved && iface.kind === 'bridge');
}

export function offers(h: Pick<HostRow, 'capacity'>, need: InterfaceNeed | null): boolean {
  if (!need) return true;
  return reportedInterfaces(h).some((i) => i.name === need.name && serves(i, need));
}

/**
 * @example
 * availableOn(interfaceNeed(lan), hosts); // ['5d1e...'] (the host reporting eth1)
 */
export function availableOn(
  need: InterfaceNeed | null,
  hosts: ReadonlyArray<Pick<HostRow, 'id' | 'capacity'>>,
) {
  return hosts.filter((h) => offers(h, need)).map((h) => h.id);
}

/** "uplink eth1 for network lan" */
export function needText(need: InterfaceNeed): string {
  return `${need.role} ${need.name} for network ${need.networkName}`;
}

/** The interfaces a VM's NICs need of its host (one per network that names one). */
export async function vmInterfaceNeeds(db: Kysely<Database>, vmId: string): Promise<InterfaceNeed[]> {
  const networks = await db
    .selectFrom('vm_nics')
    .innerJoin('networks', 'networks.id', 'vm_nics.network_id')
    .select(['networks.id', 'networks.name', 'networks.kind', 'networks.config'])
    .where('vm_nics.vm_id', '=', vmId)
    .orderBy('vm_nics.nic_index')
    .execute();
  const needs = networks.map(interfaceNeed).filter((n): n is InterfaceNeed => n !== null);
  return needs.filter((n, i) => needs.findIndex((m) => m.networkId === n.networkId) === i);
}
