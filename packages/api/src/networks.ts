/**
 * Networks and port forwards. A nat or isolated network has a prefix the manager hands VM
 * addresses out of (IPAM); a bridged network joins a LAN whose DHCP gives the addresses, which
 * the host's agent finds and reports.
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { InterfaceName as IfName } from './interface-names';
import { type Ipv4Cidr, overlaps, parseCidr } from './ipv4';
import { ListQuery, Name, Timestamp, Uuid } from './schemas';

export const NetworkKind = z.enum(['nat', 'bridged', 'isolated']);
export type NetworkKind = z.infer<typeof NetworkKind>;

/**
 * IPv4 ranges no network may use: a bridge address there would shadow the host's own loopback
 * or link-local traffic, or is no unicast address at all (RFC 6890).
 */
export const RESERVED_IPV4_RANGES: ReadonlyArray<{ cidr: string; use: string }> = [
  { cidr: '0.0.0.0/8', use: '"this network" (0/8)' },
  { cidr: '127.0.0.0/8', use: 'loopback' },
  { cidr: '169.254.0.0/16', use: 'link-local' },
  { cidr: '224.0.0.0/4', use: 'multicast' },
  { cidr: '240.0.0.0/4', use: 'reserved (class E and the broadcast address)' },
];

/**
 * The reserved range `cidr` overlaps, or null.
 *
 * @example
 * reservedRange(parseCidr('127.0.0.0/24')!); // { cidr: '127.0.0.0/8', use: 'loopback' }
 */
export function reservedRange(cidr: Ipv4Cidr): { cidr: string; use: string } | null {
  return RESERVED_IPV4_RANGES.find((r) => overlaps(cidr, parseCidr(r.cidr)!)) ?? null;
}

const Cidr = z
  .string()
  .regex(/^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/, 'an IPv4 prefix such as 10.213.0.0/24')
  .describe(
    'nat, isolated: the prefix VM addresses come from (host bits zero, /8../30; 400 NETWORK_CIDR_RESERVED inside 0/8, 127/8, 169.254/16, 224/4 or 240/4)',
  );

export const NetworkCreate = z
  .strictObject({
    name: Name,
    kind: NetworkKind,
    cidr: Cidr.optional(),
    gateway: z.ipv4().optional().describe('the host address on the bridge; default: the first host address'),
    dhcp: z
      .boolean()
      .default(false)
      .describe(
        'nat, isolated: the cloud-init network configuration asks DHCP instead of setting the address (DHCP is served on every nat and isolated network, each NIC’s address reserved for its MAC)',
      ),
    bridge: IfName.optional().describe(
      'bridged: an existing bridge to join; a host must report it as a bridge (422 NETWORK_INTERFACE_NOT_FOUND)',
    ),
    uplink: IfName.optional().describe(
      'bridged: an interface to enslave to a new bridge; nat: the way out; a host must report it (422 NETWORK_INTERFACE_NOT_FOUND)',
    ),
    dns_servers: z
      .array(z.ipv4())
      .max(4)
      .optional()
      .describe('nat: upstream resolvers (default: the host’s)'),
    is_default: z.boolean().default(false).describe('VMs created without `networks` get a NIC here'),
  })
  .superRefine((n, ctx) => {
    const issue = (path: string, message: string) => ctx.addIssue({ code: 'custom', path: [path], message });
    if (n.kind === 'bridged') {
      if ((n.bridge === undefined) === (n.uplink === undefined))
        issue('bridge', 'a bridged network names either an existing bridge or an uplink to enslave');
      for (const f of ['cidr', 'gateway', 'dns_servers'] as const)
        if (n[f] !== undefined) issue(f, 'a bridged network takes its addressing from the LAN');
      if (n.dhcp) issue('dhcp', 'a bridged network uses the LAN’s DHCP');
      return;
    }
    if (n.cidr === undefined) issue('cidr', `a ${n.kind} network needs a cidr`);
    if (n.bridge !== undefined) issue('bridge', `a ${n.kind} network has a bridge of its own`);
    if (n.kind === 'isolated' && n.uplink !== undefined) issue('uplink', 'an isolated network has no uplink');
    if (n.kind === 'isolated' && n.dns_servers !== undefined)
      issue('dns_servers', 'only nat networks get a DNS resolver');
  });
export type NetworkCreate = z.infer<typeof NetworkCreate>;

export const NetworkPatch = z.strictObject({ name: Name.optional(), is_default: z.boolean().optional() });
export type NetworkPatch = z.infer<typeof NetworkPatch>;

export const Network = z.object({
  id: Uuid,
  name: z.string(),
  kind: NetworkKind,
  cidr: z.string().nullable(),
  gateway: z.string().nullable(),
  dhcp: z.boolean(),
  bridge: z.string().nullable(),
  uplink: z.string().nullable(),
  dns_servers: z.array(z.string()),
  is_default: z.boolean(),
  /** NICs on it (of any VM). */
  nic_count: z.number().int(),
  available_on: z
    .array(Uuid)
    .describe(
      'the hosts its VMs can run on: those whose agent reports its bridge or uplink, every host for a network that names neither',
    ),
  created_at: Timestamp,
  updated_at: Timestamp,
});
export type Network = z.infer<typeof Network>;

export const NetworkListQuery = ListQuery.extend({
  kind: NetworkKind.optional(),
  name: z.string().max(63).optional().describe('case-sensitive name prefix'),
});

// ---- port forwards ----------------------------------------------------------------------

const Port = z.number().int().min(1).max(65_535);
export const PortProto = z.enum(['tcp', 'udp']);

export const PortForwardCreate = z.strictObject({
  host_port: Port,
  guest_port: Port,
  proto: PortProto.default('tcp'),
  nic_index: z.number().int().min(0).max(7).default(0),
});
export type PortForwardCreate = z.infer<typeof PortForwardCreate>;

export const PortForward = z.object({
  id: Uuid,
  vm_id: Uuid,
  nic_index: z.number().int(),
  proto: PortProto,
  host_port: z.number().int(),
  guest_port: z.number().int(),
  /** The host whose addresses the port is opened on; null until the VM is placed. */
  host_id: Uuid.nullable(),
  created_at: Timestamp,
});
export type PortForward = z.infer<typeof PortForward>;

export const VmPortForwardParams = z.object({ id: Uuid, pf_id: Uuid });

/**
 * The MAC address of a VM's NIC: locally administered, unicast (`02:` then 5 hash bytes), the
 * same on every host and every boot. The agent's networking derives TAP MACs the same way.
 *
 * @example
 * nicMac('4b0c2f9e-...', 0); // '02:5e:91:0c:7a:13'
 */
export function nicMac(vmId: string, nicIndex: number): string {
  const bytes = [...createHash('sha256').update(`mac:${vmId}:${nicIndex}`).digest().subarray(0, 5)];
  return ['02', ...bytes.map((b) => b.toString(16).padStart(2, '0'))].join(':');
}
