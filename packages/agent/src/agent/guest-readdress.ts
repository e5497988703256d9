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

/**
 * $1 old MAC, $2 new MAC, $3 address/prefix or "", $4 gateway or "", $5 "dhcp" or "".
 *
 * A DHCP client of the interface (udhcpc, dhclient) knows it by the old MAC and holds the
 * source's lease: it is stopped before the change and started again after it with the same
 * arguments, so it asks with the clone's MAC and its lease is the clone's reservation (nqvm's
 * DHCP server reserves each NIC's address for its MAC), not the source's. A NIC on a bridged
 * network ($5) gets a client when it had none. The assigned address ($3) is set when the
 * client did not bring it.
 */
export const READDRESS_NIC = `set -e
dev=
for d in /sys/class/net/*; do
  if [ "$(cat "$d/address" 2>/dev/null)" = "$1" ]; then dev=\${d##*/}; fi
done
if [ -z "$dev" ]; then echo "no interface has MAC $1" >&2; exit 3; fi
clients=
for p in /proc/[0-9]*; do
  case "$(cat "$p/comm" 2>/dev/null)" in udhcpc|dhclient) ;; *) continue ;; esac
  argv=$(tr '\\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
  case " $argv" in *" $dev "*|*" -i$dev "*|*"=$dev "*) ;; *) continue ;; esac
  kill "\${p#/proc/}" 2>/dev/null || continue
  i=0
  while [ $i -lt 20 ] && [ -e "$p" ] && ! grep -q '^State:.*Z' "$p/status" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
  clients="$clients
$argv"
done
ip link set dev "$dev" down
ip link set dev "$dev" address "$2"
ip -4 addr flush dev "$dev"
ip link set dev "$dev" up
if [ -z "$clients" ] && [ "$5" = dhcp ]; then
  if command -v udhcpc >/dev/null; then clients="udhcpc -i $dev -b -t 5 -T 1 -p /run/udhcpc.$dev.pid"
  elif command -v dhclient >/dev/null; then clients="dhclient $dev"; fi
fi
if [ -n "$clients" ]; then
  echo "$clients" | while read -r argv; do
    if [ -n "$argv" ]; then setsid $argv </dev/null >/dev/null 2>&1 & fi
  done
  i=0
  while [ $i -lt 32 ] && ! ip -4 addr show dev "$dev" | grep -q 'inet '; do sleep 0.25; i=$((i + 1)); done
fi
if [ -n "$3" ] && ! ip -4 addr show dev "$dev" | grep -q "inet $3 "; then ip addr add "$3" dev "$dev"; fi
if [ -n "$4" ]; then ip route replace default via "$4" dev "$dev"; fi
if [ -n "$3" ]; then arping -U -c 1 -I "$dev" "\${3%/*}" >/dev/null 2>&1 || true; fi
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
