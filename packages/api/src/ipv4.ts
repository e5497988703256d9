/** IPv4 addresses and prefixes as plain numbers: strict parsing, containment, overlap. */

const OCTET = /^(0|[1-9][0-9]{0,2})$/;

/** The address as an unsigned 32-bit number, or null unless `text` is a dotted quad. */
export function parseIpv4(text: string): number | null {
  const parts = text.split('.');
  if (parts.length !== 4) return null;
  let value = 0;
  for (const p of parts) {
    if (!OCTET.test(p) || Number(p) > 255) return null;
    value = value * 256 + Number(p);
  }
  return value;
}

export function formatIpv4(value: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(value / 2 ** shift) % 256).join('.');
}

export interface Ipv4Cidr {
  /** The network address (host bits zero). */
  network: number;
  prefix: number;
}

/** `10.0.0.0/24` -> {network, prefix}; null when malformed or when host bits are set. */
export function parseCidr(text: string): Ipv4Cidr | null {
  const m = /^([0-9.]+)\/([0-9]{1,2})$/.exec(text);
  if (!m) return null;
  const network = parseIpv4(m[1]!);
  const prefix = Number(m[2]);
  if (network === null || prefix > 32) return null;
  if (network % blockSize(prefix) !== 0) return null;
  return { network, prefix };
}

function blockSize(prefix: number): number {
  return 2 ** (32 - prefix);
}

export function cidrText(c: Ipv4Cidr): string {
  return `${formatIpv4(c.network)}/${c.prefix}`;
}

export function broadcast(c: Ipv4Cidr): number {
  return c.network + blockSize(c.prefix) - 1;
}

export function netmask(prefix: number): string {
  return formatIpv4(2 ** 32 - blockSize(prefix));
}

export function contains(c: Ipv4Cidr, address: number): boolean {
  return address >= c.network && address <= broadcast(c);
}

/** Whether `address` can be given to a host of `c` (not its network or broadcast address). */
export function isHostAddress(c: Ipv4Cidr, address: number): boolean {
  if (c.prefix >= 31) return contains(c, address);
  return address > c.network && address < broadcast(c);
}

export function overlaps(a: Ipv4Cidr, b: Ipv4Cidr): boolean {
  return a.network <= broadcast(b) && b.network <= broadcast(a);
}
