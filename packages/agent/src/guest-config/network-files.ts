/**
 * The network configuration files injection writes, one renderer per network stack, each
 * matching the NIC by its MAC (the guest's own interface names are unknown: eth0 on Firecracker,
 * ens3 or enp0s3 on QEMU). Pure functions of the NICs.
 */
import { createHash } from 'node:crypto';
import type { GuestNic } from './guest-network';

const HEADER =
  "# Written by nqvm before boot (guest_config mode inject); rewritten when the VM's addresses change.";

/** The name of nqvm's configuration of a NIC: file names, profile ids, logical interfaces. */
export function nicConfigName(nic: GuestNic): string {
  return `nqvm-${nic.name}`;
}

/**
 * ifupdown (Debian's, 0.8+): a MAC pattern brings the NIC up as logical interface nqvm-ethN.
 *
 * @example
 * ifupdownConfig(nics);
 * // 'auto mac/02:fc:00:00:00:01/=nqvm-eth0\niface nqvm-eth0 inet static\n    address 10.213.0.2/24\n...'
 */
export function ifupdownConfig(nics: readonly GuestNic[]): string {
  const stanzas = nics.map((n) => {
    const name = nicConfigName(n);
    const lines = [`auto mac/${n.mac}/=${name}`];
    if (n.address === null) lines.push(`iface ${name} inet dhcp`);
    else {
      lines.push(`iface ${name} inet static`, `    address ${n.address}`);
      if (n.gateway) lines.push(`    gateway ${n.gateway}`);
      // Read by resolvconf when the image has it; resolv.conf is written otherwise.
      if (n.dns.length) lines.push(`    dns-nameservers ${n.dns.join(' ')}`);
    }
    return lines.join('\n');
  });
  return `${HEADER}\n\n${stanzas.join('\n\n')}\n`;
}

/**
 * systemd-networkd: one `.network` file per NIC, matched by MAC on Ethernet links only (a
 * bridge or VLAN made on the NIC carries the same MAC).
 */
export function networkdConfig(nic: GuestNic): string {
  const network =
    nic.address === null
      ? ['DHCP=ipv4']
      : [
          `Address=${nic.address}`,
          ...(nic.gateway ? [`Gateway=${nic.gateway}`] : []),
          ...nic.dns.map((d) => `DNS=${d}`),
        ];
  return `${HEADER}\n[Match]\nMACAddress=${nic.mac}\nType=ether\n\n[Network]\n${network.join('\n')}\n`;
}

/** A stable UUID for the NIC's profile, from its MAC (NetworkManager wants one per profile). */
function profileUuid(nic: GuestNic): string {
  const h = createHash('sha256').update(`nqvm-nic:${nic.mac}`).digest('hex');
  const variant = ((Number.parseInt(h[16]!, 16) & 0x3) | 0x8).toString(16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-${variant}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

/** NetworkManager: a keyfile profile per NIC, bound to its MAC, not to an interface name. */
export function networkManagerConfig(nic: GuestNic): string {
  const ipv4 =
    nic.address === null
      ? ['method=auto']
      : [
          'method=manual',
          `address1=${nic.address}`,
          ...(nic.gateway ? [`gateway=${nic.gateway}`] : []),
          ...(nic.dns.length ? [`dns=${nic.dns.join(';')};`] : []),
        ];
  return [
    HEADER,
    '[connection]',
    `id=nqvm ${nic.name}`,
    `uuid=${profileUuid(nic)}`,
    'type=ethernet',
    'autoconnect=true',
    '',
    '[ethernet]',
    `mac-address=${nic.mac.toUpperCase()}`,
    '',
    '[ipv4]',
    ...ipv4,
    '',
    '[ipv6]',
    'method=auto',
    '',
  ].join('\n');
}

/** netplan: one file for all NICs, matched by MAC, without renaming them. */
export function netplanConfig(nics: readonly GuestNic[]): string {
  const lines = [HEADER, 'network:', '  version: 2', '  ethernets:'];
  for (const n of nics) {
    lines.push(`    ${nicConfigName(n)}:`, '      match:', `        macaddress: "${n.mac}"`);
    if (n.address === null) {
      lines.push('      dhcp4: true');
      continue;
    }
    lines.push('      dhcp4: false', `      addresses: ["${n.address}"]`);
    // `0.0.0.0/0` rather than `default`: netplan before 0.100 (Ubuntu 20.04) knows only the former.
    if (n.gateway) lines.push(`      routes: [{to: "0.0.0.0/0", via: "${n.gateway}"}]`);
    if (n.dns.length)
      lines.push(`      nameservers: {addresses: [${n.dns.map((d) => `"${d}"`).join(', ')}]}`);
  }
  return `${lines.join('\n')}\n`;
}

/** /etc/resolv.conf naming the static NICs' resolvers; null when they have none. */
export function resolvConf(nics: readonly GuestNic[]): string | null {
  const servers = [...new Set(nics.flatMap((n) => (n.address === null ? [] : n.dns)))];
  if (!servers.length) return null;
  return `# Written by nqvm before boot (guest_config mode inject).\n${servers.map((s) => `nameserver ${s}\n`).join('')}`;
}
