/**
 * Every name nqvm gives a host object (bridge, TAP, nft table and chains, owner tags) derives
 * from validated ids here. Linux interface names hold at most 15 characters, so bridges and
 * TAPs get `<prefix>b` / `<prefix>t` plus 8 base32 characters of a hash; a name already taken
 * by someone else is rehashed with a salt.
 */
import { createHash } from 'node:crypto';
import { NqvmError } from '@nqvm/api/errors';
import { INTERFACE_NAME, INTERFACE_NAME_RULE } from '@nqvm/api/interface-names';

/** Ids of networks, VMs and port forwards (UUIDs in practice). */
export const ID = /^[A-Za-z0-9][A-Za-z0-9-]{0,63}$/;
/** Interface names nqvm accepts from outside (an existing bridge, an uplink): the API's rule. */
export const IFNAME = INTERFACE_NAME;
/** The host-unique prefix of nqvm's names (NQVM_HOST_PREFIX). */
export const HOST_PREFIX = /^[a-z0-9]{1,4}$/;
export const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';
const HASH_CHARS = 8;
/** How many salted names are tried before giving up on a collision. */
export const NAME_ATTEMPTS = 4;

export function assertId(what: string, id: string): void {
  if (!ID.test(id))
    throw new NqvmError('VALIDATION_FAILED', `${what} must be letters, digits and dashes (at most 64)`, {
      [what]: id,
    });
}

export function assertIfName(what: string, name: string): void {
  if (!IFNAME.test(name)) {
    throw new NqvmError('VALIDATION_FAILED', `${what} must be an interface name: ${INTERFACE_NAME_RULE}`, {
      [what]: name,
    });
  }
}

function base32(bytes: Uint8Array, chars: number): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5 && out.length < chars) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    if (out.length === chars) break;
    value &= (1 << bits) - 1;
  }
  return out;
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** Names of one agent's host objects; `prefix` keeps two agents on one host apart. */
export class HostNames {
  readonly bridgePattern: RegExp;
  readonly tapPattern: RegExp;

  constructor(readonly prefix = 'nq') {
    if (!HOST_PREFIX.test(prefix))
      throw new NqvmError('VALIDATION_FAILED', 'the host prefix must be 1-4 of [a-z0-9]', { prefix });
    this.bridgePattern = new RegExp(`^${prefix}b[a-z2-7]{${HASH_CHARS}}$`);
    this.tapPattern = new RegExp(`^${prefix}t[a-z2-7]{${HASH_CHARS}}$`);
  }

  /** nftables table of this agent, in the inet and bridge families: `nqvm` for the default prefix. */
  get table(): string {
    return this.prefix === 'nq' ? 'nqvm' : `nqvm_${this.prefix}`;
  }

  /** Start of every owner tag (interface alias) this agent writes. */
  get tagPrefix(): string {
    return `nqvm:${this.prefix}:`;
  }

  /**
   * @example
   * new HostNames().bridge('8f1c...', 0); // 'nqbq3k9xw2a'
   */
  bridge(networkId: string, salt = 0): string {
    assertId('network id', networkId);
    return `${this.prefix}b${base32(digest(`network:${networkId}#${salt}`), HASH_CHARS)}`;
  }

  tap(vmId: string, nicIndex: number, salt = 0): string {
    assertId('vm id', vmId);
    assertNicIndex(nicIndex);
    return `${this.prefix}t${base32(digest(`tap:${vmId}:${nicIndex}#${salt}`), HASH_CHARS)}`;
  }

  /** The interface alias marking a bridge as this agent's, for `networkId`. */
  bridgeTag(networkId: string): string {
    return `${this.tagPrefix}network:${networkId}`;
  }

  tapTag(vmId: string, nicIndex: number): string {
    return `${this.tagPrefix}tap:${vmId}:${nicIndex}`;
  }
}

export function assertNicIndex(nicIndex: number): void {
  if (!Number.isInteger(nicIndex) || nicIndex < 0 || nicIndex > 31) {
    throw new NqvmError('VALIDATION_FAILED', 'nic index must be 0..31', { nicIndex });
  }
}

/**
 * The MAC address of a VM's NIC: locally administered, unicast (`02:` then 5 hash bytes), the
 * same on every host and every boot.
 *
 * @example
 * macFor('4b0c2f9e-...', 0); // '02:5e:91:0c:7a:13'
 */
export function macFor(vmId: string, nicIndex: number): string {
  assertId('vm id', vmId);
  assertNicIndex(nicIndex);
  const bytes = [...digest(`mac:${vmId}:${nicIndex}`).subarray(0, 5)];
  return ['02', ...bytes.map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

/** The bridge's own MAC, fixed so it does not change as ports come and go. */
export function bridgeMac(networkId: string): string {
  assertId('network id', networkId);
  const bytes = [...digest(`bridge-mac:${networkId}`).subarray(0, 5)];
  return ['02', ...bytes.map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

/**
 * Picks the salted name to use: the one already tagged as ours (and shaped like our names),
 * else the first candidate no interface holds; null when every candidate is taken.
 */
export function pickName(
  candidates: readonly string[],
  links: ReadonlyMap<string, { alias: string | null }>,
  tag: string,
  pattern: RegExp,
): string | null {
  for (const [name, link] of links) if (link.alias === tag && pattern.test(name)) return name;
  for (const name of candidates) if (!links.has(name)) return name;
  return null;
}
