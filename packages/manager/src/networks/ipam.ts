/**
 * IPv4 address management as plain numbers: parsing prefixes, overlap between networks, and
 * picking the lowest free host address of a subnet.
 */

import { broadcast, formatIpv4, type Ipv4Cidr, parseCidr, parseIpv4 } from '@nqvm/api/ipv4';

export { formatIpv4, isHostAddress, overlaps, parseIpv4 } from '@nqvm/api/ipv4';

/** A network's prefix: its address (host bits zero) as an unsigned 32-bit number, and length. */
export type Subnet = Ipv4Cidr;

/** `10.0.0.0/24` -> subnet; null when malformed or when host bits are set. */
export const parseSubnet = parseCidr;

/** The subnet's last (broadcast) address. */
export const lastAddress = broadcast;

export function firstHost(s: Subnet): number {
  return s.network + 1;
}

/** The lowest host address of `s` not in `taken` (dotted quads), or null when none is left. */
export function lowestFree(s: Subnet, taken: Iterable<string>): string | null {
  const used = new Set<number>();
  for (const t of taken) {
    const v = parseIpv4(t);
    if (v !== null) used.add(v);
  }
  for (let a = s.network + 1; a < lastAddress(s); a++) if (!used.has(a)) return formatIpv4(a);
  return null;
}
