/**
 * A clone restored from another VM's snapshot wakes up with that VM's MAC addresses, IP
 * addresses and host name in its memory. Its TAPs admit only its own MAC and address (the
 * anti-spoofing rules), so before anything else the agent re-addresses the guest through the
 * guest agent: each NIC, found by its old MAC, gets the clone's MAC and address, then the
 * host name. Values travel as arguments of a fixed script, never inside it.
 */
import type { AgentNic } from '@nqvm/api';
import type { GuestAgentClient } from '@nqvm/guest-agent';
import type { SnapshotNic } from '../snapshots/snapshot-store';

/** $1 old MAC, $2 new MAC, $3 address/prefix or "", $4 gateway or "", $5 "dhcp" or "". */
const READDRESS_NIC = `set -e
dev=
for d in /sys/class/net/*; do
  if [ "$(cat "$d/address" 2>/dev/null)" = "$1" ]; then dev=\${d##*/}; fi
done
if [ -z "$dev" ]; then echo "no interface has MAC $1" >&2; exit 3; fi
ip link set dev "$dev" down
ip link set dev "$dev" address "$2"
ip -4 addr flush dev "$dev"
ip link set dev "$dev" up
if [ -n "$3" ]; then ip addr add "$3" dev "$dev"; fi
if [ -n "$4" ]; then ip route replace default via "$4" dev "$dev"; fi
if [ -n "$3" ]; then arping -U -c 1 -I "$dev" "\${3%/*}" >/dev/null 2>&1 || true; fi
if [ "$5" = dhcp ]; then
  if command -v udhcpc >/dev/null; then udhcpc -i "$dev" -n -q -t 5 -T 1 >/dev/null 2>&1 || true
  elif command -v dhclient >/dev/null; then dhclient -1 "$dev" >/dev/null 2>&1 || true; fi
fi
echo "$dev"
`;

const SET_HOSTNAME = `hostname "$1"
if [ -w /etc/hostname ]; then echo "$1" > /etc/hostname; fi
`;

export interface ReaddressStep {
  nic_index: number;
  /** The guest interface that was changed. */
  device: string;
  from: { mac: string; ip: string | null };
  to: { mac: string; ip: string | null };
}

/** Whether the snapshot's NICs differ from the VM's (a clone, not a restore in place). */
export function needsReaddress(from: SnapshotNic[], to: AgentNic[]): boolean {
  return to.some((n) => {
    const old = from.find((f) => f.nic_index === n.nic_index);
    return old !== undefined && (old.mac.toLowerCase() !== n.mac.toLowerCase() || old.ip !== n.ip);
  });
}

/**
 * Gives each NIC of the guest the identity of `to` (matched by NIC index with `from`), then
 * sets the host name. Throws with the guest's words when a step fails.
 *
 * @example
 * const steps = await readdressGuest(guest, snapshot.nics, spec.nics, 'clone-1');
 */
export async function readdressGuest(
  guest: GuestAgentClient,
  from: SnapshotNic[],
  to: AgentNic[],
  hostname: string | null,
  timeoutMs = 20_000,
): Promise<ReaddressStep[]> {
  const steps: ReaddressStep[] = [];
  for (const nic of to) {
    const old = from.find((f) => f.nic_index === nic.nic_index);
    if (!old) continue;
    const address = nic.ip && nic.prefix_len !== null ? `${nic.ip}/${nic.prefix_len}` : '';
    const dhcp = nic.ip === null ? 'dhcp' : '';
    const r = await guest.exec(
      [
        '/bin/sh',
        '-c',
        READDRESS_NIC,
        'readdress',
        old.mac.toLowerCase(),
        nic.mac.toLowerCase(),
        address,
        nic.gateway ?? '',
        dhcp,
      ],
      { timeoutMs },
    );
    if (r.exitCode !== 0) {
      const why = r.stderr.toString('utf8').trim() || `exit ${r.exitCode ?? `signal ${r.signal}`}`;
      throw new Error(`re-addressing NIC ${nic.nic_index} in the guest failed: ${why}`);
    }
    steps.push({
      nic_index: nic.nic_index,
      device: r.stdout.toString('utf8').trim(),
      from: { mac: old.mac, ip: old.ip },
      to: { mac: nic.mac, ip: nic.ip },
    });
  }
  if (hostname) {
    const r = await guest.exec(['/bin/sh', '-c', SET_HOSTNAME, 'hostname', hostname], { timeoutMs });
    if (r.exitCode !== 0)
      throw new Error(`setting the guest's host name failed: ${r.stderr.toString('utf8').trim()}`);
  }
  return steps;
}
