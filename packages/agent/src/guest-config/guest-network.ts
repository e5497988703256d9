/**
 * A VM's NICs as its guest configures them, read from the manager's network-config v2 (the
 * subset it writes: ethernets matched by MAC, each with one static IPv4 address, its default
 * gateway and resolvers, or DHCP), and the cloud-init network-config v1 made from them.
 *
 * Why v1 on the config drive: cloud-init renders v1's subnet `gateway` in each renderer's own
 * form (ifupdown `gateway`, netplan `gateway4` or a default route by version, networkd
 * `Gateway=`, NetworkManager `gateway=`), while a v2 default route becomes `post-up route add
 * default gw ...` for ifupdown, which needs net-tools that most images lack, and v2 `gateway4`
 * beside a default route makes netplan refuse conflicting default routes.
 */
import { parseIpv4 } from '@nqvm/api/ipv4';
import { GuestConfigError } from './guest-values';

export interface GuestNic {
  /** nqvm's NIC index (the manager names NIC i `eth<i>`). */
  index: number;
  /** The name cloud-init gives it. */
  name: string;
  /** Lower case, colon separated. */
  mac: string;
  /** `10.213.0.5/24`; null: the NIC asks DHCP. */
  address: string | null;
  /** The default route's next hop; only the first NIC that has one keeps it (one default route). */
  gateway: string | null;
  dns: string[];
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
/** A name every stack and debugfs take as it is (IFNAMSIZ is 16 with the NUL). */
const NIC_NAME = /^[a-z][a-z0-9]{0,14}$/;
const ETHERNET_KEYS = new Set([
  'match',
  'set-name',
  'dhcp4',
  'addresses',
  'gateway4',
  'routes',
  'nameservers',
]);

function isMap(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function unsupported(where: string, what: string): GuestConfigError {
  return new GuestConfigError(`network_config ${where}: ${what}`);
}

function ipv4(where: string, v: unknown): string {
  if (typeof v !== 'string' || parseIpv4(v) === null) throw unsupported(where, 'not an IPv4 address');
  return v;
}

function hostAddress(where: string, v: unknown): string {
  const m = typeof v === 'string' ? /^([0-9.]+)\/([0-9]{1,2})$/.exec(v) : null;
  if (!m || parseIpv4(m[1]!) === null || Number(m[2]) > 32) {
    throw unsupported(where, 'not an IPv4 address with its prefix length');
  }
  return v as string;
}

function defaultGateway(where: string, eth: Record<string, unknown>): string | null {
  const routes = eth.routes ?? [];
  if (!Array.isArray(routes)) throw unsupported(`${where}.routes`, 'not a list');
  const vias = routes.map((r, i) => {
    const at = `${where}.routes[${i}]`;
    if (!isMap(r) || Object.keys(r).some((k) => k !== 'to' && k !== 'via')) {
      throw unsupported(at, 'only {to, via} routes are understood');
    }
    if (r.to !== 'default' && r.to !== '0.0.0.0/0')
      throw unsupported(at, 'only the default route is understood');
    return ipv4(`${at}.via`, r.via);
  });
  if (eth.gateway4 !== undefined) vias.push(ipv4(`${where}.gateway4`, eth.gateway4));
  if (new Set(vias).size > 1) throw unsupported(where, 'more than one default gateway');
  return vias[0] ?? null;
}

function readEthernet(key: string, eth: unknown, position: number): GuestNic {
  const where = `ethernets.${key}`;
  if (!isMap(eth)) throw unsupported(where, 'not a map');
  const unknown = Object.keys(eth).filter((k) => !ETHERNET_KEYS.has(k));
  if (unknown.length) throw unsupported(where, `${unknown.join(', ')} not understood`);
  const match = eth.match;
  if (!isMap(match) || Object.keys(match).join() !== 'macaddress' || typeof match.macaddress !== 'string') {
    throw unsupported(`${where}.match`, 'must be {macaddress}');
  }
  const mac = match.macaddress.toLowerCase();
  if (!MAC.test(mac)) throw unsupported(`${where}.match.macaddress`, 'not a MAC address');
  const name = eth['set-name'] ?? key;
  if (typeof name !== 'string' || !NIC_NAME.test(name))
    throw unsupported(where, 'not a usable interface name');
  const index = /^eth([0-9]{1,2})$/.exec(key);

  const addresses = eth.addresses ?? [];
  if (!Array.isArray(addresses) || addresses.length > 1) {
    throw unsupported(`${where}.addresses`, 'one address at most is understood');
  }
  const dhcp = eth.dhcp4 === true;
  if (eth.dhcp4 !== undefined && typeof eth.dhcp4 !== 'boolean')
    throw unsupported(`${where}.dhcp4`, 'not a boolean');
  if (dhcp === (addresses.length === 1)) throw unsupported(where, 'needs either dhcp4 or one address');

  const ns = eth.nameservers ?? {};
  if (!isMap(ns) || Object.keys(ns).some((k) => k !== 'addresses') || !Array.isArray(ns.addresses ?? [])) {
    throw unsupported(`${where}.nameservers`, 'must be {addresses}');
  }
  const dns = ((ns.addresses ?? []) as unknown[]).map((a, i) =>
    ipv4(`${where}.nameservers.addresses[${i}]`, a),
  );
  const gateway = defaultGateway(where, eth);
  if (dhcp && (gateway || dns.length))
    throw unsupported(where, 'a DHCP NIC takes its gateway and resolvers from DHCP');
  return {
    index: index ? Number(index[1]) : position,
    name,
    mac,
    address: dhcp ? null : hostAddress(`${where}.addresses[0]`, addresses[0]),
    gateway,
    dns,
  };
}

/**
 * The NICs of a network-config v2 document, by index. Throws a GuestConfigError naming the
 * first part it does not understand (nothing is dropped silently).
 *
 * @example
 * guestNics({ version: 2, ethernets: { eth0: { match: { macaddress: '02:fc:00:00:00:01' }, 'set-name': 'eth0',
 *   dhcp4: false, addresses: ['10.213.0.2/24'], routes: [{ to: '0.0.0.0/0', via: '10.213.0.1' }] } } });
 * // [{ index: 0, name: 'eth0', mac: '02:fc:00:00:00:01', address: '10.213.0.2/24', gateway: '10.213.0.1', dns: [] }]
 */
export function guestNics(doc: Record<string, unknown>): GuestNic[] {
  if (doc.version !== 2) throw unsupported('version', 'must be 2');
  const extra = Object.keys(doc).filter((k) => k !== 'version' && k !== 'ethernets');
  if (extra.length) throw unsupported(extra[0]!, 'not understood');
  const ethernets = doc.ethernets ?? {};
  if (!isMap(ethernets)) throw unsupported('ethernets', 'not a map');
  const nics = Object.entries(ethernets)
    .map(([key, eth], i) => readEthernet(key, eth, i))
    .sort((a, b) => a.index - b.index);
  for (const [field, values] of [
    ['index', nics.map((n) => n.index)],
    ['name', nics.map((n) => n.name)],
    ['MAC', nics.map((n) => n.mac)],
  ] as const) {
    if (new Set<unknown>(values).size !== values.length)
      throw unsupported('ethernets', `two NICs share a ${field}`);
  }
  // Two default routes in one table conflict (ifup fails on the second, netplan refuses both).
  const first = nics.find((n) => n.gateway !== null);
  return nics.map((n) => (n === first ? n : { ...n, gateway: null }));
}

/**
 * cloud-init network-config v1 for these NICs: physical interfaces matched by MAC and named
 * as nqvm names them, each with one static subnet or DHCP.
 *
 * @example
 * networkConfigV1(nics);
 * // { version: 1, config: [{ type: 'physical', name: 'eth0', mac_address: '02:..', subnets: [{ type: 'static', address: '10.213.0.2/24', gateway: '10.213.0.1' }] }] }
 */
export function networkConfigV1(nics: readonly GuestNic[]): Record<string, unknown> {
  return {
    version: 1,
    config: nics.map((n) => ({
      type: 'physical',
      name: n.name,
      mac_address: n.mac,
      subnets: [
        n.address === null
          ? { type: 'dhcp4' }
          : {
              type: 'static',
              address: n.address,
              ...(n.gateway ? { gateway: n.gateway } : {}),
              ...(n.dns.length ? { dns_nameservers: n.dns } : {}),
            },
      ],
    })),
  };
}
