/**
 * nqvm's whole nftables state as one script for `nft -f -`: the `inet` table (port forwards,
 * masquerade, the fence around nat and isolated bridges) and the `bridge` table (per-TAP
 * anti-spoofing, address learning). The script deletes and recreates both tables in one
 * transaction, so applying it is atomic, idempotent, and never touches anyone else's tables.
 */
import { parseCidr, parseIpv4 } from '@nqvm/api/ipv4';
import { IFNAME, MAC } from './names';
import type { HostPortForwardSpec, NetworkKind } from './spec';

export interface RulesetNetwork {
  kind: NetworkKind;
  bridge: string;
  cidr?: string;
  /** nat: masquerade only out of this interface. */
  uplink?: string;
}

export interface RulesetTap {
  tap: string;
  mac: string;
  /** The only IPv4 source the TAP may use; undefined: any (bridged, addresses from the LAN). */
  ip?: string;
}

export interface RulesetInput {
  table: string;
  networks: readonly RulesetNetwork[];
  taps: readonly RulesetTap[];
  portForwards: readonly HostPortForwardSpec[];
  /** Learned addresses per set name, carried over the table's recreation. */
  learned?: ReadonlyMap<string, readonly string[]>;
}

/** Addresses a TAP's guest was seen using as a source. */
export function seenSet(tap: string): string {
  return `seen_${tap}`;
}

/** Addresses DHCP servers offered or acknowledged to a TAP's MAC. */
export function leaseSet(tap: string): string {
  return `lease_${tap}`;
}

const TABLE = /^[a-z][a-z0-9_]{0,31}$/;

function name(value: string): string {
  if (!IFNAME.test(value)) throw new Error(`refusing interface name ${JSON.stringify(value)} in nft`);
  return `"${value}"`;
}

function ip(value: string): string {
  if (parseIpv4(value) === null) throw new Error(`refusing address ${JSON.stringify(value)} in nft`);
  return value;
}

function cidr(value: string): string {
  if (parseCidr(value) === null) throw new Error(`refusing prefix ${JSON.stringify(value)} in nft`);
  return value;
}

function mac(value: string): string {
  if (!MAC.test(value)) throw new Error(`refusing MAC ${JSON.stringify(value)} in nft`);
  return value;
}

function port(value: number): number {
  if (!Number.isInteger(value) || value < 1 || value > 65_535)
    throw new Error(`refusing port ${value} in nft`);
  return value;
}

/** The set declaration, with learned elements (re-armed with the full timeout). */
function dynamicSet(setName: string, size: number, learned: readonly string[] | undefined): string[] {
  const elements = (learned ?? []).filter((a) => parseIpv4(a) !== null);
  return [
    `  set ${setName} {`,
    '    type ipv4_addr; flags dynamic,timeout; timeout 1d;',
    `    size ${size};`,
    ...(elements.length > 0 ? [`    elements = { ${elements.join(', ')} }`] : []),
    '  }',
  ];
}

function inetTable(input: RulesetInput): string[] {
  const nat = input.networks.filter((n) => n.kind === 'nat');
  const isolated = input.networks.filter((n) => n.kind === 'isolated');
  const lines = [`table inet ${input.table} {`];
  if (nat.length > 0) {
    // A nat bridge routes 127/8 (route_localnet, for forwards used from the host itself):
    // nothing arriving on it may be addressed there.
    lines.push(
      '  chain guard {',
      '    type filter hook prerouting priority raw; policy accept;',
      `    iifname { ${nat.map((n) => name(n.bridge)).join(', ')} } ip daddr 127.0.0.0/8 drop`,
      '  }',
    );
  }
  lines.push(
    '  chain port_forwards {',
    ...input.portForwards.map(
      (f) =>
        `    ${f.proto} dport ${port(f.hostPort)} dnat ip to ${ip(f.guestIp)}:${port(f.guestPort)} comment "pf:${f.id}"`,
    ),
    '  }',
    '  chain dstnat {',
    '    type nat hook prerouting priority dstnat; policy accept;',
    '    fib daddr type local jump port_forwards',
    '  }',
    '  chain output_dstnat {',
    '    type nat hook output priority -100; policy accept;',
    '    fib daddr type local jump port_forwards',
    '  }',
    '  chain srcnat {',
    '    type nat hook postrouting priority srcnat; policy accept;',
    // The host itself through 127.0.0.1: the guest must answer to an address it can reach.
    '    ip saddr 127.0.0.0/8 ct status dnat masquerade',
  );
  for (const n of nat) {
    const c = cidr(n.cidr ?? '');
    // A guest reaching a forward of its own network: the reply must come back through the host.
    lines.push(`    ip saddr ${c} ip daddr ${c} ct status dnat masquerade`);
    const out = n.uplink ? `oifname ${name(n.uplink)}` : `oifname != ${name(n.bridge)}`;
    lines.push(`    ip saddr ${c} ip daddr != ${c} ${out} masquerade`);
  }
  lines.push('  }', '  chain forward {', '    type filter hook forward priority filter; policy accept;');
  for (const n of nat) {
    const br = name(n.bridge);
    lines.push(
      `    oifname ${br} iifname != ${br} ct state established,related accept`,
      `    oifname ${br} iifname != ${br} ct status dnat accept`,
      `    oifname ${br} iifname != ${br} drop`,
    );
  }
  for (const n of isolated) {
    const br = name(n.bridge);
    lines.push(`    iifname ${br} oifname != ${br} drop`, `    oifname ${br} iifname != ${br} drop`);
  }
  lines.push('  }', '}');
  return lines;
}

function bridgeTable(input: RulesetInput): string[] {
  const lines = [`table bridge ${input.table} {`];
  for (const t of input.taps) {
    lines.push(...dynamicSet(seenSet(t.tap), 16, input.learned?.get(seenSet(t.tap))));
    lines.push(...dynamicSet(leaseSet(t.tap), 4, input.learned?.get(leaseSet(t.tap))));
  }
  for (const t of input.taps) {
    const m = mac(t.mac);
    name(t.tap);
    lines.push(`  chain from_${t.tap} {`, `    ether saddr != ${m} drop`, `    arp saddr ether != ${m} drop`);
    if (t.ip) {
      const a = ip(t.ip);
      lines.push(
        // 0.0.0.0: ARP probes (RFC 5227) and DHCP requests come before the guest has its address.
        `    arp saddr ip != { 0.0.0.0, ${a} } drop`,
        '    ether type != { ip, arp } drop',
        '    udp sport 67 drop',
        '    ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept',
        `    ip saddr != ${a} drop`,
      );
    } else {
      lines.push('    udp sport 67 drop');
    }
    lines.push(
      `    arp saddr ip != 0.0.0.0 update @${seenSet(t.tap)} { arp saddr ip }`,
      `    ip saddr != 0.0.0.0 update @${seenSet(t.tap)} { ip saddr }`,
      '  }',
      `  chain to_${t.tap} {`,
      // DHCP offers and acks for this MAC: client hardware address at byte 28 of the DHCP
      // message, "your address" at byte 16 (both after the 8-byte UDP header).
      `    udp sport 67 udp dport 68 @th,288,48 0x${m.replaceAll(':', '')} update @${leaseSet(t.tap)} { @th,192,32 }`,
      '  }',
    );
  }
  const from = input.taps.map((t) => `${name(t.tap)} : jump from_${t.tap}`);
  const to = input.taps.map((t) => `${name(t.tap)} : jump to_${t.tap}`);
  lines.push('  chain prerouting {', '    type filter hook prerouting priority filter; policy accept;');
  if (from.length > 0) lines.push(`    iifname vmap { ${from.join(', ')} }`);
  lines.push(
    '  }',
    '  chain postrouting {',
    '    type filter hook postrouting priority filter; policy accept;',
  );
  if (to.length > 0) lines.push(`    oifname vmap { ${to.join(', ')} }`);
  lines.push('  }', '}');
  return lines;
}

/**
 * The script that makes nqvm's tables exactly `input` (or removes them when it holds nothing).
 *
 * @example
 * await host.run('nft', ['-f', '-'], { input: renderRuleset({ table: 'nqvm', networks, taps, portForwards }) });
 */
export function renderRuleset(input: RulesetInput): string {
  if (!TABLE.test(input.table)) throw new Error(`refusing table name ${JSON.stringify(input.table)}`);
  // "add" then "delete" removes a table whether or not it exists, inside the same transaction.
  const lines = [
    `add table inet ${input.table}`,
    `delete table inet ${input.table}`,
    `add table bridge ${input.table}`,
    `delete table bridge ${input.table}`,
  ];
  const empty = input.networks.length === 0 && input.taps.length === 0 && input.portForwards.length === 0;
  if (!empty) lines.push(...inetTable(input), ...bridgeTable(input));
  return `${lines.join('\n')}\n`;
}

/** Elements of nqvm's learned-address sets in `nft -j list table bridge <table>` output. */
export function learnedFromJson(json: unknown): Map<string, string[]> {
  const learned = new Map<string, string[]>();
  const items = (json as { nftables?: unknown[] } | null)?.nftables ?? [];
  for (const item of items) {
    const set = (item as { set?: { name?: unknown; elem?: unknown[] } }).set;
    if (!set || typeof set.name !== 'string' || !/^(seen|lease)_/.test(set.name)) continue;
    const values = (set.elem ?? []).flatMap((e) => {
      const v = typeof e === 'string' ? e : (e as { elem?: { val?: unknown } }).elem?.val;
      return typeof v === 'string' && parseIpv4(v) !== null ? [v] : [];
    });
    learned.set(set.name, values);
  }
  return learned;
}
