/**
 * What the agent's networking module is asked to make: networks, TAPs and port forwards. The
 * manager sends these through the agent protocol (in snake_case there); the agent parses them
 * here once, so everything past this file works on checked values.
 */
import { NqvmError } from '@nqvm/api/errors';
import { broadcast, isHostAddress, parseCidr, parseIpv4 } from '@nqvm/api/ipv4';
import { z } from 'zod';
import { ID, IFNAME, MAC } from './names';

const Id = z.string().regex(ID, 'letters, digits and dashes, at most 64');
const IfName = z.string().regex(IFNAME, 'an interface name: 1-15 of [A-Za-z0-9_.-]');
const Ipv4 = z.string().refine((v) => parseIpv4(v) !== null, 'an IPv4 address such as 10.0.0.1');
const Cidr = z
  .string()
  .refine((v) => parseCidr(v) !== null, 'an IPv4 prefix such as 10.0.0.0/24 (host bits zero)');
const Port = z.number().int().min(1).max(65_535);

export const NetworkKind = z.enum(['nat', 'bridged', 'isolated']);
export type NetworkKind = z.infer<typeof NetworkKind>;

export const HostNetworkSpec = z
  .object({
    id: Id,
    kind: NetworkKind,
    /** bridged: an existing bridge VMs join (nqvm neither creates nor deletes it). */
    bridge: IfName.optional(),
    /**
     * bridged: an interface enslaved to a new bridge (its addresses and routes move to the
     * bridge); nat: the only interface traffic is masqueraded out of (default: any but the bridge).
     */
    uplink: IfName.optional(),
    /** nat, isolated: the network's prefix. bridged: the LAN's, so unused. */
    cidr: Cidr.optional(),
    /** The host's address on the bridge: the VMs' gateway, DHCP server and DNS resolver. */
    gateway: Ipv4.optional(),
    /**
     * nat, isolated: DHCP is served on the gateway in any case, each NIC's address reserved for
     * its MAC; `dhcp` also hands out the addresses of `dhcpRange`.
     */
    dhcp: z.boolean().default(false),
    /** Addresses DHCP hands out besides the NICs' own (static leases); none: static leases only. */
    dhcpRange: z.object({ start: Ipv4, end: Ipv4 }).optional(),
    /** nat: answer DNS on the gateway, forwarding to `dnsServers` or the host's resolv.conf. */
    dns: z.boolean().default(false),
    dnsServers: z.array(Ipv4).max(4).optional(),
  })
  .superRefine((n, ctx) => {
    const issue = (path: string, message: string) => ctx.addIssue({ code: 'custom', path: [path], message });
    if (n.kind === 'bridged') {
      if ((n.bridge === undefined) === (n.uplink === undefined))
        issue('bridge', 'a bridged network names either an existing bridge or an uplink to enslave');
      for (const f of ['cidr', 'gateway', 'dhcpRange', 'dnsServers'] as const)
        if (n[f] !== undefined) issue(f, 'a bridged network takes its addressing from the LAN');
      if (n.dhcp || n.dns) issue('dhcp', 'a bridged network uses the LAN’s DHCP and DNS');
      return;
    }
    if (n.bridge !== undefined) issue('bridge', `a ${n.kind} network has a bridge of its own`);
    if (n.kind === 'isolated' && n.uplink !== undefined) issue('uplink', 'an isolated network has no uplink');
    const cidr = n.cidr ? parseCidr(n.cidr) : null;
    if (!cidr) return issue('cidr', `a ${n.kind} network needs a cidr`);
    if (cidr.prefix < 8 || cidr.prefix > 30) issue('cidr', 'the prefix length must be 8..30');
    if (n.kind === 'nat' && n.gateway === undefined) issue('gateway', 'a nat network needs a gateway');
    if (n.gateway !== undefined && !isHostAddress(cidr, parseIpv4(n.gateway) ?? -1))
      issue('gateway', 'the gateway must be a host address inside the cidr');
    if ((n.dhcp || n.dns) && n.gateway === undefined)
      issue('gateway', 'DHCP and DNS are served on the gateway');
    if (n.dns && n.kind !== 'nat') issue('dns', 'only nat networks get a DNS resolver');
    if (n.dnsServers && !n.dns) issue('dnsServers', 'upstream DNS servers need dns: true');
    if (n.dhcpRange) {
      const start = parseIpv4(n.dhcpRange.start) ?? -1;
      const end = parseIpv4(n.dhcpRange.end) ?? -1;
      const gw = parseIpv4(n.gateway ?? '') ?? -1;
      if (!n.dhcp) issue('dhcpRange', 'a DHCP range needs dhcp: true');
      if (!isHostAddress(cidr, start) || !isHostAddress(cidr, end) || start > end)
        issue('dhcpRange', 'the DHCP range must be host addresses of the cidr, start <= end');
      if (gw >= start && gw <= end) issue('dhcpRange', 'the DHCP range must not hold the gateway');
    }
    if (broadcast(cidr) === cidr.network) issue('cidr', 'the cidr holds no host address');
  });
export type HostNetworkSpec = z.infer<typeof HostNetworkSpec>;
export type HostNetworkInput = z.input<typeof HostNetworkSpec>;

export const HostTapSpec = z.object({
  vmId: Id,
  /** Position of the NIC in the VM (eth0 = 0). */
  nicIndex: z.number().int().min(0).max(31),
  networkId: Id,
  /** Default: macFor(vmId, nicIndex). Must be unicast. */
  mac: z
    .string()
    .transform((v) => v.toLowerCase())
    .pipe(z.string().regex(MAC, 'a MAC such as 02:00:00:00:00:01'))
    .refine((v) => (Number.parseInt(v.slice(0, 2), 16) & 1) === 0, 'a unicast MAC')
    .optional(),
  /** The NIC's address when nqvm assigned it (nat, isolated): the only source it may use. */
  ip: Ipv4.optional(),
  /** Owner of the TAP (root; a jailed Firecracker's uid). */
  uid: z
    .number()
    .int()
    .min(0)
    .max(2 ** 31 - 1)
    .default(0),
});
export type HostTapSpec = z.infer<typeof HostTapSpec>;
export type HostTapInput = z.input<typeof HostTapSpec>;

export const HostPortForwardSpec = z.object({
  id: Id,
  proto: z.enum(['tcp', 'udp']),
  hostPort: Port,
  guestIp: Ipv4,
  guestPort: Port,
});
export type HostPortForwardSpec = z.infer<typeof HostPortForwardSpec>;
export type HostPortForwardInput = z.input<typeof HostPortForwardSpec>;

/** Everything this host should have: `reconcile` makes the host match it. */
export const HostNetworking = z.object({
  networks: z.array(HostNetworkSpec),
  taps: z.array(HostTapSpec),
  portForwards: z.array(HostPortForwardSpec),
});
export type HostNetworking = z.infer<typeof HostNetworking>;
export type HostNetworkingInput = z.input<typeof HostNetworking>;

/** Parses input at the module's edge; a bad field is a VALIDATION_FAILED error naming it, before any command. */
export function parseInput<S extends z.ZodType>(schema: S, what: string, value: unknown): z.infer<S> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issues = result.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message }));
  throw new NqvmError(
    'VALIDATION_FAILED',
    `invalid ${what}: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`,
    {
      issues,
    },
  );
}
