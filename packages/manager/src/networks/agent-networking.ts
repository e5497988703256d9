/**
 * What a VM's host must do for its networking, in agent-protocol terms: each NIC with its
 * network, the port forwards, and the cloud-init network-config v2 the guest configures itself
 * from (static addresses from IPAM, DHCP on bridged and DHCP networks).
 */
import type { AgentNetwork, AgentNic, AgentPortForward } from '@nqvm/api';
import type { Kysely } from 'kysely';
import type { Database, NetworkRow } from '../db/schema';
import { networkConfig } from './networks';

export interface VmNetworking {
  nics: AgentNic[];
  port_forwards: AgentPortForward[];
  /** null when the VM has no NIC. */
  network_config: Record<string, unknown> | null;
}

export function agentNetwork(r: NetworkRow): AgentNetwork {
  const c = networkConfig(r);
  return {
    id: r.id,
    kind: r.kind,
    ...(c.bridge !== null ? { bridge: c.bridge } : {}),
    ...(c.uplink !== null ? { uplink: c.uplink } : {}),
    ...(r.cidr !== null ? { cidr: r.cidr } : {}),
    ...(r.gateway !== null ? { gateway: r.gateway } : {}),
    dhcp: c.dhcp,
    dns: r.kind === 'nat',
    ...(r.kind === 'nat' && c.dns_servers.length ? { dns_servers: c.dns_servers } : {}),
  };
}

export async function vmNetworking(db: Kysely<Database>, vmId: string): Promise<VmNetworking> {
  const rows = await db
    .selectFrom('vm_nics')
    .innerJoin('networks', 'networks.id', 'vm_nics.network_id')
    .selectAll('networks')
    .select(['vm_nics.nic_index', 'vm_nics.mac', 'vm_nics.ip', 'vm_nics.ip_source'])
    .where('vm_nics.vm_id', '=', vmId)
    .orderBy('vm_nics.nic_index')
    .execute();
  const nics: AgentNic[] = rows.map((r) => {
    const assigned = r.ip_source === 'ipam' && r.ip !== null;
    return {
      nic_index: r.nic_index,
      mac: r.mac,
      ip: assigned ? r.ip : null,
      prefix_len: assigned && r.cidr ? Number(r.cidr.split('/')[1]) : null,
      // An isolated network has no way out: its gateway only answers on the bridge.
      gateway: assigned && r.kind === 'nat' ? r.gateway : null,
      dns: assigned && r.kind === 'nat' && r.gateway ? [r.gateway] : [],
      network: agentNetwork(r),
    };
  });
  const addressOf = new Map(rows.map((r) => [r.nic_index, r.ip]));
  const forwards = await db
    .selectFrom('port_forwards')
    .selectAll()
    .where('vm_id', '=', vmId)
    .orderBy('created_at')
    .orderBy('id')
    .execute();
  const port_forwards: AgentPortForward[] = [];
  for (const f of forwards) {
    // A bridged NIC's forward waits until the agent has found the NIC's address.
    const guestIp = addressOf.get(f.nic_index);
    if (!guestIp) continue;
    port_forwards.push({
      id: f.id,
      proto: f.proto,
      host_port: f.host_port,
      guest_ip: guestIp,
      guest_port: f.guest_port,
    });
  }
  return { nics, port_forwards, network_config: nics.length ? cloudInitNetworkConfig(nics) : null };
}

/**
 * cloud-init network-config v2: ethernets matched by MAC, named eth<index>.
 *
 * @example
 * cloudInitNetworkConfig([{ nic_index: 0, mac: '02:..', ip: '10.213.0.2', prefix_len: 24, gateway: '10.213.0.1', dns: ['10.213.0.1'], network }]);
 * // { version: 2, ethernets: { eth0: { match: { macaddress: '02:..' }, set-name: 'eth0', addresses: ['10.213.0.2/24'], routes: [...], nameservers: {...} } } }
 */
export function cloudInitNetworkConfig(nics: AgentNic[]): Record<string, unknown> {
  const ethernets: Record<string, unknown> = {};
  for (const n of nics) {
    const name = `eth${n.nic_index}`;
    const base = { match: { macaddress: n.mac }, 'set-name': name };
    if (n.ip === null || n.network.dhcp) {
      ethernets[name] = { ...base, dhcp4: true };
      continue;
    }
    ethernets[name] = {
      ...base,
      dhcp4: false,
      addresses: [`${n.ip}/${n.prefix_len}`],
      ...(n.gateway ? { routes: [{ to: '0.0.0.0/0', via: n.gateway }] } : {}),
      ...(n.dns.length ? { nameservers: { addresses: n.dns } } : {}),
    };
  }
  return { version: 2, ethernets };
}
