/**
 * Which addresses a URL import may fetch from. Refused unless an admin allows them
 * (NQVM_IMAGE_FETCH_ALLOW): loopback, link-local (cloud metadata services), unspecified,
 * multicast and reserved addresses, the addresses of the manager's own machine and those of the
 * registered hosts. A name is resolved and every address it resolves to is checked; the caller
 * then connects to the address checked, so a name that resolves differently a moment later
 * (DNS rebinding) is not asked again.
 */
import dns from 'node:dns/promises';
import net from 'node:net';
import os from 'node:os';
import { NqvmError } from '@nqvm/api';

/** What NQVM_IMAGE_FETCH_ALLOW allows: address ranges, and host names trusted whatever they resolve to. */
export interface FetchAllow {
  subnets: net.BlockList;
  names: ReadonlySet<string>;
  /** The entries as given, for the configuration. */
  entries: string[];
}

export type RefusedReason =
  | 'loopback'
  | 'link-local'
  | 'unspecified'
  | 'multicast'
  | 'reserved'
  | 'manager'
  | 'host';

/** An address a checked URL may connect to. */
export interface PinnedAddress {
  address: string;
  family: 4 | 6;
}

export type Lookup = (name: string) => Promise<PinnedAddress[]>;

interface OwnAddresses {
  manager: net.BlockList;
  hosts: net.BlockList;
}

const REASON_TEXT: Record<RefusedReason, string> = {
  loopback: 'a loopback address',
  'link-local': 'a link-local address',
  unspecified: 'the unspecified address',
  multicast: 'a multicast address',
  reserved: 'a reserved address',
  manager: "an address of the manager's own machine",
  host: 'the address of a registered host',
};

const RANGES: Array<[Exclude<RefusedReason, 'manager' | 'host'>, string, number]> = [
  ['unspecified', '0.0.0.0', 8],
  ['loopback', '127.0.0.0', 8],
  ['link-local', '169.254.0.0', 16],
  ['multicast', '224.0.0.0', 4],
  ['reserved', '240.0.0.0', 4],
  ['unspecified', '::', 128],
  ['loopback', '::1', 128],
  ['link-local', 'fe80::', 10],
  ['multicast', 'ff00::', 8],
];

/** One BlockList per reason; BlockList also matches IPv4-mapped IPv6 (::ffff:127.0.0.1) to IPv4 rules. */
const RESERVED = (() => {
  const lists = new Map<RefusedReason, net.BlockList>();
  for (const [reason, address, prefix] of RANGES) {
    if (!lists.has(reason)) lists.set(reason, new net.BlockList());
    lists.get(reason)!.addSubnet(address, prefix, net.isIPv6(address) ? 'ipv6' : 'ipv4');
  }
  return lists;
})();

const HOST_NAME = /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

/** An address without brackets or IPv6 zone, as net and BlockList want it. */
function bare(host: string): string {
  return host.replace(/^\[|\]$/g, '').replace(/%.*$/, '');
}

function familyOf(address: string): 'ipv4' | 'ipv6' {
  return net.isIPv6(address) ? 'ipv6' : 'ipv4';
}

/**
 * Parses NQVM_IMAGE_FETCH_ALLOW: CIDRs, single addresses and host names, separated by commas or
 * spaces. Throws an Error naming the first entry that is none of them.
 *
 * @example
 * parseFetchAllow('10.0.0.0/8, 127.0.0.1, images.lan');
 */
export function parseFetchAllow(text: string): FetchAllow {
  const subnets = new net.BlockList();
  const names = new Set<string>();
  const entries = text.split(/[\s,]+/).filter(Boolean);
  for (const entry of entries) {
    const [address, prefix, extra] = entry.split('/');
    const ip = bare(address!);
    if (extra === undefined && net.isIP(ip)) {
      const max = net.isIPv6(ip) ? 128 : 32;
      const bits = prefix === undefined ? max : /^\d{1,3}$/.test(prefix) ? Number(prefix) : -1;
      if (bits < 0 || bits > max) throw new Error(`"${entry}": the prefix length must be 0-${max}`);
      subnets.addSubnet(ip, bits, familyOf(ip));
      continue;
    }
    const name = entry.toLowerCase().replace(/\.$/, '');
    if (prefix !== undefined || !HOST_NAME.test(name))
      throw new Error(`"${entry}" is neither a CIDR, an IP address nor a host name`);
    names.add(name);
  }
  return { subnets, names, entries };
}

async function systemLookup(name: string): Promise<PinnedAddress[]> {
  const found = await dns.lookup(name, { all: true, verbatim: true });
  return found.map((a) => ({ address: a.address, family: a.family === 6 ? 6 : 4 }));
}

/**
 * Checks URL import targets against the reserved ranges, the manager's machine, the registered
 * hosts (`hostUrls`: their agent addresses) and the allow list.
 *
 * @example
 * const policy = new UrlPolicy(parseFetchAllow(''), async () => ['https://10.0.0.5:8443']);
 * await policy.admit('http://127.0.0.1:8081/x'); // throws URL_NOT_ALLOWED
 * const addresses = await policy.resolve(new URL('https://images.example/rootfs.ext4'));
 */
export class UrlPolicy {
  constructor(
    private readonly allow: FetchAllow,
    private readonly hostUrls: () => Promise<string[]>,
    private readonly lookup: Lookup = systemLookup,
  ) {}

  /**
   * At admission, without DNS: refuses a URL whose host is a literal address (or a `localhost`
   * name) that may not be fetched. Names are checked when the import fetches them.
   */
  async admit(url: string): Promise<void> {
    const target = new URL(url);
    const host = bare(target.hostname).toLowerCase();
    if (this.allow.names.has(host)) return;
    if (net.isIP(host)) {
      const reason = await this.refusal(host, this.ownAddresses());
      if (reason) throw refused(target, null, host, reason);
    } else if (host === 'localhost' || host.endsWith('.localhost')) {
      // Such a name resolves to loopback only: refused now unless some loopback address is allowed.
      const own = this.ownAddresses();
      if ((await this.refusal('127.0.0.1', own)) && (await this.refusal('::1', own)))
        throw refused(target, null, null, 'loopback');
    }
  }

  /**
   * Resolves the URL's host and checks every address it resolves to; answers them, the only
   * ones to connect to. `redirectedFrom` names the URL whose answer pointed here, for the message.
   */
  async resolve(target: URL, redirectedFrom: string | null = null): Promise<PinnedAddress[]> {
    const host = bare(target.hostname).toLowerCase();
    let addresses: PinnedAddress[];
    if (net.isIP(host)) addresses = [{ address: host, family: net.isIPv6(host) ? 6 : 4 }];
    else {
      addresses = await this.lookup(host).catch(() => []);
      if (addresses.length === 0)
        throw new NqvmError('IMPORT_FAILED', `the host name ${host} does not resolve`, {
          url: target.toString(),
        });
    }
    if (!this.allow.names.has(host)) {
      const own = this.ownAddresses();
      for (const a of addresses) {
        const reason = await this.refusal(a.address, own);
        if (reason) throw refused(target, redirectedFrom, net.isIP(host) ? null : a.address, reason);
      }
    }
    return addresses;
  }

  /** Why `address` may not be fetched from, or null when it may. */
  private async refusal(address: string, own: () => Promise<OwnAddresses>): Promise<RefusedReason | null> {
    const ip = bare(address);
    const family = familyOf(ip);
    if (this.allow.subnets.check(ip, family)) return null;
    for (const [reason, list] of RESERVED) if (list.check(ip, family)) return reason;
    const { manager, hosts } = await own();
    if (manager.check(ip, family)) return 'manager';
    if (hosts.check(ip, family)) return 'host';
    return null;
  }

  /** The addresses of this machine and of the registered hosts, looked up once when first needed. */
  private ownAddresses(): () => Promise<OwnAddresses> {
    let found: Promise<OwnAddresses> | undefined;
    return () => {
      found ??= (async () => {
        const manager = new net.BlockList();
        for (const a of Object.values(os.networkInterfaces()).flat())
          if (a) manager.addAddress(bare(a.address), familyOf(bare(a.address)));
        return { manager, hosts: await this.hostAddresses() };
      })();
      return found;
    };
  }

  private async hostAddresses(): Promise<net.BlockList> {
    const list = new net.BlockList();
    for (const url of await this.hostUrls()) {
      let host: string;
      try {
        host = bare(new URL(url).hostname);
      } catch {
        continue;
      }
      const found = net.isIP(host)
        ? [{ address: host }]
        : await this.lookup(host).catch(() => [] as PinnedAddress[]);
      for (const a of found) list.addAddress(bare(a.address), familyOf(bare(a.address)));
    }
    return list;
  }
}

function refused(
  target: URL,
  redirectedFrom: string | null,
  resolvedTo: string | null,
  reason: RefusedReason,
): NqvmError {
  const host = target.hostname;
  const what = resolvedTo
    ? `${host} resolves to ${resolvedTo}, ${REASON_TEXT[reason]}`
    : `${host} is ${REASON_TEXT[reason]}`;
  const via = redirectedFrom ? `${redirectedFrom} redirects to ${target}, and ` : '';
  return new NqvmError(
    'URL_NOT_ALLOWED',
    `${via}${what}: image imports do not fetch from it unless NQVM_IMAGE_FETCH_ALLOW allows it`,
    { field: 'source.url', url: target.toString(), reason },
  );
}
