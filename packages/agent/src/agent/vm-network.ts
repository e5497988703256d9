/**
 * A VM's networking on this host, from its command: its networks, one TAP per NIC and its port
 * forwards, made through the host networking module (idempotent; a re-run converges), and the
 * addresses its bridged NICs got, found on the host.
 */
import type { AgentNetwork, AgentNic, AgentPortForward, AgentVmSpec } from '@nqvm/api';
import { NqvmError } from '@nqvm/api/errors';
import { parseIpv4 } from '@nqvm/api/ipv4';
import type { NicSpec } from '../drivers/types';
import { type HostNetwork, type HostNetworkInput, nicSpec } from '../network';
import { MAC } from '../network/names';

export function hostNetworkInput(n: AgentNetwork): HostNetworkInput {
  return {
    id: n.id,
    kind: n.kind,
    bridge: n.bridge,
    uplink: n.uplink,
    cidr: n.cidr,
    gateway: n.gateway,
    dhcp: n.dhcp,
    dhcpRange: n.dhcp_range,
    dns: n.dns,
    dnsServers: n.dns_servers,
  };
}

/**
 * Makes the VM's networks and TAPs and its port forwards; answers the driver's NICs, by index,
 * and why forwards the host refused were not applied (the VM boots without them).
 */
export async function prepareVmNetwork(
  net: HostNetwork,
  vmId: string,
  spec: AgentVmSpec,
): Promise<{ nics: NicSpec[]; refusedForwards: string | null }> {
  const nics: NicSpec[] = [];
  const made = new Set<string>();
  for (const nic of spec.nics) {
    if (!made.has(nic.network.id)) {
      await net.ensureNetwork(hostNetworkInput(nic.network));
      made.add(nic.network.id);
    }
    const tap = await net.ensureTap({
      vmId,
      nicIndex: nic.nic_index,
      networkId: nic.network.id,
      mac: nic.mac,
      ...(nic.ip !== null ? { ip: nic.ip } : {}),
    });
    nics.push(nicSpec(tap, nic.nic_index));
  }
  try {
    await syncPortForwards(net, [], spec.port_forwards);
    return { nics, refusedForwards: null };
  } catch (err) {
    return { nics, refusedForwards: err instanceof Error ? err.message : String(err) };
  }
}

/**
 * Removes the forwards of `before` that `after` lacks, and makes those of `after`, each on its
 * own: one the host refuses (its port taken) does not keep the others from their rules. Throws
 * once all were tried, naming every refused one.
 */
export async function syncPortForwards(
  net: HostNetwork,
  before: AgentPortForward[],
  after: AgentPortForward[],
): Promise<void> {
  const keep = new Set(after.map((f) => f.id));
  for (const f of before) if (!keep.has(f.id)) await net.removePortForward(f.id);
  const refused: string[] = [];
  for (const f of after) {
    try {
      await net.ensurePortForward({
        id: f.id,
        proto: f.proto,
        hostPort: f.host_port,
        guestIp: f.guest_ip,
        guestPort: f.guest_port,
      });
    } catch (err) {
      refused.push(`${f.proto} ${f.host_port}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  if (refused.length) throw new Error(refused.join('; '));
}

/**
 * Removes the VM's forwards and TAPs, and each of its networks no other VM of this host is on
 * (the next VM on it makes it again).
 */
export async function removeVmNetwork(net: HostNetwork, vmId: string, spec: AgentVmSpec): Promise<void> {
  for (const f of spec.port_forwards) await net.removePortForward(f.id);
  for (const nic of spec.nics) await net.removeTap(vmId, nic.nic_index);
  for (const id of new Set(spec.nics.map((n) => n.network.id))) {
    await net.removeNetwork(id).catch((err: unknown) => {
      if (!(err instanceof NqvmError && err.code === 'CONFLICT')) throw err;
    });
  }
}

/**
 * How the guests nqvm provides (the built-in guest, containers) configure their NICs, from the
 * kernel command line: `nqvm.net.<index>=` per NIC, the NIC found in the guest by its MAC, with
 * the address the manager assigned (nat, isolated: `ADDR/PREFIX[,gw=GW]`) or `dhcp` (bridged:
 * the LAN's DHCP), and `nqvm.dns=` for the resolvers. NIC 0 is also given in the older form
 * (`nqvm.ip=`/`nqvm.gw=`, or `nqvm.dhcp=1`) that guests built before `nqvm.net.` read.
 *
 * @example
 * networkBootArgs(spec);
 * // 'nqvm.net.0=10.213.0.5/24,gw=10.213.0.1,mac=02:... nqvm.net.1=dhcp,mac=02:... nqvm.dns=10.213.0.1 nqvm.ip=10.213.0.5/24 nqvm.gw=10.213.0.1'
 */
export function networkBootArgs(spec: Pick<AgentVmSpec, 'nics'>): string {
  const args: string[] = [];
  const dns = new Set<string>();
  for (const nic of spec.nics) {
    const mac = nic.mac.toLowerCase();
    if (!MAC.test(mac)) throw new Error(`NIC ${nic.nic_index} has no valid MAC (${JSON.stringify(nic.mac)})`);
    const how = nicAddress(nic);
    args.push(
      `nqvm.net.${nic.nic_index}=${how ? `${how.address}${how.gateway ? `,gw=${how.gateway}` : ''}` : 'dhcp'},mac=${mac}`,
    );
    if (how) for (const d of nic.dns) dns.add(ipv4(d));
  }
  if (dns.size) args.push(`nqvm.dns=${[...dns].join(',')}`);
  const first = spec.nics.find((n) => n.nic_index === 0);
  if (first) {
    const how = nicAddress(first);
    if (!how) args.push('nqvm.dhcp=1');
    else args.push(`nqvm.ip=${how.address}`, ...(how.gateway ? [`nqvm.gw=${how.gateway}`] : []));
  }
  return args.join(' ');
}

/** A NIC's assigned address and gateway (checked: they go on a command line); null: DHCP. */
function nicAddress(nic: AgentNic): { address: string; gateway: string | null } | null {
  if (nic.ip === null || nic.prefix_len === null) return null;
  return { address: `${ipv4(nic.ip)}/${nic.prefix_len}`, gateway: nic.gateway ? ipv4(nic.gateway) : null };
}

function ipv4(value: string): string {
  if (parseIpv4(value) === null)
    throw new Error(`refusing address ${JSON.stringify(value)} on the kernel command line`);
  return value;
}

/** The addresses found for the NICs the manager gave none (bridged): the most trustworthy of each. */
export async function foundAddresses(
  net: HostNetwork,
  vmId: string,
  spec: AgentVmSpec,
): Promise<Array<{ nic_index: number; ip: string | null }>> {
  const out: Array<{ nic_index: number; ip: string | null }> = [];
  for (const nic of spec.nics) {
    if (nic.ip !== null) continue;
    const found = await net.discoverAddresses(vmId, nic.nic_index).catch(() => null);
    out.push({ nic_index: nic.nic_index, ip: found?.addresses[0] ?? null });
  }
  return out;
}
