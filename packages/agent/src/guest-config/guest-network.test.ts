import type { AgentGuestConfig } from '@nqvm/api';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { cloudInitRender, ifquery, netplanGenerate, readNmKeyfile } from '../../test/support/guest-config';
import { cloudInitData } from './cloud-config';
import { guestNics } from './guest-network';
import { GuestConfigError } from './guest-values';

const MAC0 = '02:fc:00:00:00:01';
const MAC1 = '02:fc:00:00:00:02';
const MAC2 = '02:fc:00:00:00:03';

/** What the manager sends (agent-networking.ts): a NAT NIC with its address, a bridged one on DHCP. */
const MANAGER_V2 = {
  version: 2,
  ethernets: {
    eth0: {
      match: { macaddress: MAC0 },
      'set-name': 'eth0',
      dhcp4: false,
      addresses: ['10.213.0.2/24'],
      routes: [{ to: '0.0.0.0/0', via: '10.213.0.1' }],
      nameservers: { addresses: ['10.213.0.1'] },
    },
    eth1: { match: { macaddress: MAC1 }, 'set-name': 'eth1', dhcp4: true },
  },
};

function config(network_config: Record<string, unknown> | null): AgentGuestConfig {
  return {
    mode: 'cloud-init',
    instance_id: 'i-1',
    hostname: 'net-test',
    username: null,
    password_hash: null,
    ssh_authorized_keys: [],
    user_data: null,
    network_config,
  };
}

/** The network-config document nqvm puts on the config drive for `v2`. */
function driveDocument(v2: Record<string, unknown>): string {
  return cloudInitData(config(v2)).networkConfig!;
}

/** The iface stanza of `name` in an interfaces(5) text, up to the next stanza. */
function stanza(text: string, name: string): string {
  const start = text.search(new RegExp(`^iface ${name} `, 'm'));
  expect(start, `iface ${name} in\n${text}`).toBeGreaterThanOrEqual(0);
  const rest = text.slice(start);
  const end = rest.slice(1).search(/^(auto|iface|allow-|source|mapping) /m);
  return end < 0 ? rest : rest.slice(0, end + 1);
}

/** Sections of a networkd file: name -> its Key=Value lines. */
function sections(text: string): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  let current = '';
  for (const line of text.split('\n').map((l) => l.trim())) {
    if (line === '' || line.startsWith('#')) continue;
    const head = /^\[(.+)\]$/.exec(line);
    if (head) current = head[1]!;
    else out[current] = [...(out[current] ?? []), line];
  }
  return out;
}

describe('network-config read from the manager', () => {
  it('reads each NIC: MAC, name, address or DHCP, gateway, resolvers', () => {
    expect(guestNics(MANAGER_V2)).toEqual([
      {
        index: 0,
        name: 'eth0',
        mac: MAC0,
        address: '10.213.0.2/24',
        gateway: '10.213.0.1',
        dns: ['10.213.0.1'],
      },
      { index: 1, name: 'eth1', mac: MAC1, address: null, gateway: null, dns: [] },
    ]);
  });

  it('keeps one default route: the first NIC with a gateway', () => {
    const two = structuredClone(MANAGER_V2) as typeof MANAGER_V2 & { ethernets: Record<string, unknown> };
    two.ethernets.eth2 = {
      match: { macaddress: MAC2 },
      'set-name': 'eth2',
      dhcp4: false,
      addresses: ['10.214.0.2/24'],
      gateway4: '10.214.0.1',
    };
    expect(guestNics(two).map((n) => n.gateway)).toEqual(['10.213.0.1', null, null]);
  });

  it('refuses what it does not understand, and values that would break a guest file', () => {
    const eth = MANAGER_V2.ethernets.eth0;
    const bad: Array<Record<string, unknown>> = [
      { ...eth, match: { macaddress: `${MAC0}\nauto lo` } },
      { ...eth, match: { name: 'en*' } },
      { ...eth, addresses: ['10.213.0.2/24\n    up rm -rf /'] },
      { ...eth, addresses: ['fd00::2/64'] },
      { ...eth, routes: [{ to: '10.0.0.0/8', via: '10.213.0.1' }] },
      { ...eth, routes: [{ to: '0.0.0.0/0', via: '10.213.0.1 x' }] },
      { ...eth, nameservers: { addresses: ['10.213.0.1;rm'] } },
      { ...eth, 'set-name': 'eth0 x' },
      { ...eth, mtu: 9000 },
      { ...eth, dhcp4: true },
    ];
    for (const eth0 of bad) {
      expect(() => guestNics({ version: 2, ethernets: { eth0 } }), JSON.stringify(eth0)).toThrow(
        GuestConfigError,
      );
    }
    expect(() => guestNics({ version: 2, bonds: {} })).toThrow(/bonds/);
  });

  it('puts a v2 document it does not understand on the drive as it is', () => {
    const v2 = { version: 2, ethernets: { eth0: { match: { macaddress: MAC0 }, dhcp4: true, mtu: 9000 } } };
    expect(parse(driveDocument(v2))).toEqual(v2);
  });
});

describe('network-config as the real cloud-init renders it (Debian cloud-init, offline)', () => {
  const doc = driveDocument(MANAGER_V2);

  it('ifupdown (eni): a gateway line, and no route command (net-tools is absent from most images)', async () => {
    const files = await cloudInitRender(doc, 'eni');
    const eni = files['etc/network/interfaces.d/50-cloud-init']!;
    expect(eni).not.toMatch(/\broute\b/);
    expect(stanza(eni, 'eth0')).toMatch(/^\s+gateway 10\.213\.0\.1$/m);
    expect(stanza(eni, 'eth1')).toMatch(/^iface eth1 inet dhcp/);
    // ifupdown reads it so: the address, the gateway and the resolvers on eth0.
    expect(await ifquery(eni, 'eth0')).toMatchObject({
      address: '10.213.0.2',
      netmask: '255.255.255.0',
      gateway: '10.213.0.1',
      'dns-nameservers': '10.213.0.1',
    });
    // The NICs are named by their MACs.
    expect(files['etc/udev/rules.d/70-persistent-net.rules']).toContain(
      `ATTR{address}=="${MAC0}", NAME="eth0"`,
    );
  });

  it('netplan: one default route that netplan accepts and hands to networkd', async () => {
    const files = await cloudInitRender(doc, 'netplan');
    const yaml = files['etc/netplan/50-cloud-init.yaml']!;
    const eth0 = parse(yaml).network.ethernets.eth0;
    // cloud-init 22.4 writes gateway4; later ones write a `to: default` route: either is one declaration.
    const defaults = [
      ...(eth0.gateway4 ? [eth0.gateway4] : []),
      ...(eth0.routes ?? [])
        .filter((r: { to: string }) => r.to === 'default' || r.to === '0.0.0.0/0')
        .map((r: { via: string }) => r.via),
    ];
    expect(defaults).toEqual(['10.213.0.1']);
    const { networkd, stderr } = await netplanGenerate({ '50-cloud-init.yaml': yaml });
    expect(stderr).not.toMatch(/conflict/i);
    const eth0Network = sections(networkd['10-netplan-eth0.network']!);
    expect(eth0Network.Match).toContain(`PermanentMACAddress=${MAC0}`);
    expect(eth0Network.Network).toEqual(expect.arrayContaining(['Address=10.213.0.2/24', 'DNS=10.213.0.1']));
    expect([...(eth0Network.Network ?? []), ...(eth0Network.Route ?? [])]).toContain('Gateway=10.213.0.1');
    expect(sections(networkd['10-netplan-eth1.network']!).Network).toContain('DHCP=ipv4');
  });

  it('systemd-networkd: Gateway= in the NIC file', async () => {
    const files = await cloudInitRender(doc, 'networkd');
    const eth0 = sections(files['etc/systemd/network/10-cloud-init-eth0.network']!);
    expect(eth0.Match).toEqual(expect.arrayContaining([`MACAddress=${MAC0}`]));
    expect([...(eth0.Route ?? []), ...(eth0.Network ?? [])]).toContain('Gateway=10.213.0.1');
    expect(eth0.Address ?? eth0.Network).toContain('Address=10.213.0.2/24');
    expect(sections(files['etc/systemd/network/10-cloud-init-eth1.network']!).Network).toContain('DHCP=ipv4');
  });

  it('NetworkManager: gateway= as NetworkManager itself reads the profile', async () => {
    const files = await cloudInitRender(doc, 'network-manager');
    const eth0 = await readNmKeyfile(
      files['etc/NetworkManager/system-connections/cloud-init-eth0.nmconnection']!,
    );
    expect(eth0).toMatchObject({
      mac: MAC0.toUpperCase(),
      method: 'manual',
      addresses: ['10.213.0.2/24'],
      gateway: '10.213.0.1',
      dns: ['10.213.0.1'],
    });
    const eth1 = await readNmKeyfile(
      files['etc/NetworkManager/system-connections/cloud-init-eth1.nmconnection']!,
    );
    expect(eth1).toMatchObject({ mac: MAC1.toUpperCase(), method: 'auto', gateway: null });
  });

  it('two NAT NICs: netplan gets one default route, not two that conflict', async () => {
    const two = structuredClone(MANAGER_V2) as typeof MANAGER_V2 & { ethernets: Record<string, unknown> };
    two.ethernets.eth2 = {
      match: { macaddress: MAC2 },
      'set-name': 'eth2',
      dhcp4: false,
      addresses: ['10.214.0.2/24'],
      routes: [{ to: '0.0.0.0/0', via: '10.214.0.1' }],
    };
    const files = await cloudInitRender(driveDocument(two), 'netplan');
    const { networkd } = await netplanGenerate({
      '50-cloud-init.yaml': files['etc/netplan/50-cloud-init.yaml']!,
    });
    const gateways = Object.values(networkd).flatMap((t) => t.match(/^Gateway=.*$/gm) ?? []);
    expect(gateways).toEqual(['Gateway=10.213.0.1']);
  });
});
