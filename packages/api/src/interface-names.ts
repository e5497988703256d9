/**
 * The one rule for host interface names nqvm accepts from outside (a network's existing bridge
 * or uplink, the interfaces agents report), used by the API's schemas and by the agent before
 * a name reaches `ip` or `nft`. Linux takes up to 15 bytes (IFNAMSIZ 16 with the NUL) and
 * refuses `.`, `..`, `/`, `:` and whitespace; nqvm also refuses a leading `-` or `.` (a name an
 * `ip` argument list would read as an option) and every character outside [A-Za-z0-9_.-].
 */
import { z } from 'zod';

export const INTERFACE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;

export const INTERFACE_NAME_RULE = '1-15 of [A-Za-z0-9_.-], starting with a letter or digit';

/**
 * @example
 * isInterfaceName('eth0.100'); // true
 * isInterfaceName('-json'); // false
 */
export function isInterfaceName(name: string): boolean {
  return INTERFACE_NAME.test(name);
}

export const InterfaceName = z.string().regex(INTERFACE_NAME, `an interface name: ${INTERFACE_NAME_RULE}`);

/** An interface an agent reports (its own TAPs and bridges, and loopback, left out). */
export const HostInterface = z.object({
  name: InterfaceName,
  /** The link kind (`bridge`, `vlan`, `bond`, `veth`, ...), or its type (`ether`) for a plain device. */
  kind: z.string().max(32),
  /** Administratively up. */
  up: z.boolean(),
});
export type HostInterface = z.infer<typeof HostInterface>;

/** How many interfaces a host's report holds at most. */
export const MAX_HOST_INTERFACES = 512;
