import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { AgentGuestConfig } from '@nqvm/api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ext4Image,
  guestFile,
  guestMeta,
  ifquery,
  netplanGenerate,
  readNmKeyfile,
  type TreeEntry,
} from '../../test/support/guest-config';
import { injectGuestConfig } from './inject';

const MAC0 = '02:fc:00:00:00:01';
const MAC1 = '02:fc:00:00:00:02';

/** What the manager sends: a NAT NIC with its address, gateway and resolver; a bridged one on DHCP. */
const NETWORK = {
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

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'nqvm-inject-network-test-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function config(over: Partial<AgentGuestConfig> = {}): AgentGuestConfig {
  return {
    mode: 'inject',
    instance_id: 'i-1',
    hostname: 'net-test',
    username: null,
    password_hash: null,
    ssh_authorized_keys: [],
    user_data: null,
    network_config: NETWORK,
    ...over,
  };
}

const link = (to: string): TreeEntry => ({ link: to });
const folder: TreeEntry = { dir: true };
const WANTS = '/etc/systemd/system/multi-user.target.wants';

/** A merged-/usr Debian root with systemd (networkd installed, not enabled) and nothing else. */
const SYSTEMD_ROOT: Record<string, TreeEntry> = {
  '/bin': link('usr/bin'),
  '/sbin': link('usr/sbin'),
  '/lib': link('usr/lib'),
  '/usr/lib/systemd/systemd': '#!/bin/true\n',
  '/usr/lib/systemd/systemd-networkd': '#!/bin/true\n',
  '/etc/passwd': 'root:x:0:0:root:/root:/bin/sh\n',
  // Already named as the tests name it: only the network changes.
  '/etc/hostname': 'net-test\n',
  '/etc/hosts': '127.0.0.1\tlocalhost\n127.0.1.1\tnet-test\n',
  '/etc/systemd/network': folder,
  // debootstrap copies the build host's resolvers.
  '/etc/resolv.conf': 'nameserver 192.168.1.1\n',
};

const DEBIAN_ENI =
  '# interfaces(5) file used by ifup(8) and ifdown(8)\n# Include files from /etc/network/interfaces.d:\nsource /etc/network/interfaces.d/*\n';

/** Debian with ifupdown as its postinst leaves it: interfaces.d sourced, networking enabled. */
const IFUPDOWN_ROOT: Record<string, TreeEntry> = {
  ...SYSTEMD_ROOT,
  '/usr/sbin/ifup': '#!/bin/true\n',
  '/etc/network/interfaces': DEBIAN_ENI,
  '/etc/network/interfaces.d': folder,
  [`${WANTS}/networking.service`]: link('/lib/systemd/system/networking.service'),
};

const NETWORKD_ROOT: Record<string, TreeEntry> = {
  ...SYSTEMD_ROOT,
  [`${WANTS}/systemd-networkd.service`]: link('/lib/systemd/system/systemd-networkd.service'),
  [`${WANTS}/systemd-resolved.service`]: link('/lib/systemd/system/systemd-resolved.service'),
  '/etc/resolv.conf': link('../run/systemd/resolve/stub-resolv.conf'),
};

/** A desktop Debian: NetworkManager enabled beside ifupdown that only knows loopback. */
const NM_ROOT: Record<string, TreeEntry> = {
  ...IFUPDOWN_ROOT,
  '/usr/sbin/NetworkManager': '#!/bin/true\n',
  '/etc/NetworkManager/NetworkManager.conf': '[main]\nplugins=ifupdown,keyfile\n',
  '/etc/network/interfaces': `${DEBIAN_ENI}\nauto lo\niface lo inet loopback\n`,
  [`${WANTS}/NetworkManager.service`]: link('/lib/systemd/system/NetworkManager.service'),
};

const NETPLAN_ROOT: Record<string, TreeEntry> = {
  ...SYSTEMD_ROOT,
  '/usr/share/netplan/netplan.script': '#!/bin/true\n',
  '/usr/sbin/netplan': link('../share/netplan/netplan.script'),
  '/etc/netplan': folder,
  [`${WANTS}/systemd-networkd.service`]: link('/lib/systemd/system/systemd-networkd.service'),
};

async function sha(img: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(img))
    .digest('hex');
}

describe('inject writes the network configuration of the stack the image runs', () => {
  it('ifupdown: both NICs matched by MAC in interfaces.d, as ifupdown reads them; resolv.conf', async () => {
    const img = await ext4Image(dir, IFUPDOWN_ROOT);
    const result = await injectGuestConfig(img, config());
    expect(result.networkStack).toBe('ifupdown');
    expect(result.notes).toEqual([]);
    expect(result.changed).toEqual(['/etc/network/interfaces.d/nqvm', '/etc/resolv.conf']);
    const eni = await guestFile(img, '/etc/network/interfaces.d/nqvm');
    expect(eni).toContain(`auto mac/${MAC0}/=nqvm-eth0\n`);
    expect(eni).toContain(`auto mac/${MAC1}/=nqvm-eth1\n`);
    expect(await ifquery(eni, 'nqvm-eth0')).toEqual({
      address: '10.213.0.2',
      netmask: '255.255.255.0',
      broadcast: '10.213.0.255',
      gateway: '10.213.0.1',
      'dns-nameservers': '10.213.0.1',
    });
    expect(eni).toMatch(/^iface nqvm-eth1 inet dhcp$/m);
    expect(await guestMeta(img, '/etc/network/interfaces.d/nqvm')).toEqual({ mode: 0o644, uid: 0, gid: 0 });
    // Debian's own interfaces file already reads interfaces.d: left as it is.
    expect(await guestFile(img, '/etc/network/interfaces')).toBe(DEBIAN_ENI);
    // No resolvconf in the image: ifupdown would not pass dns-nameservers on.
    expect(await guestFile(img, '/etc/resolv.conf')).toMatch(/^nameserver 10\.213\.0\.1$/m);
    expect(await guestFile(img, '/etc/resolv.conf')).not.toContain('192.168.1.1');

    // The same settings again change nothing.
    const before = await sha(img);
    expect((await injectGuestConfig(img, config())).changed).toEqual([]);
    expect(await sha(img)).toBe(before);
  });

  it('ifupdown without interfaces.d: the interfaces file gains one source line, keeping its mode', async () => {
    const { '/etc/network/interfaces.d': _none, ...withoutDir } = IFUPDOWN_ROOT;
    const img = await ext4Image(dir, {
      ...withoutDir,
      '/etc/network/interfaces': 'auto lo\niface lo inet loopback',
    });
    const before = await guestMeta(img, '/etc/network/interfaces');
    expect((await injectGuestConfig(img, config())).changed).toEqual([
      '/etc/network/interfaces',
      '/etc/network/interfaces.d',
      '/etc/network/interfaces.d/nqvm',
      '/etc/resolv.conf',
    ]);
    expect(await guestMeta(img, '/etc/network/interfaces')).toEqual(before);
    expect(await guestMeta(img, '/etc/network/interfaces.d')).toEqual({ mode: 0o755, uid: 0, gid: 0 });
    const eni = await guestFile(img, '/etc/network/interfaces');
    expect(eni).toBe('auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/nqvm\n');
    expect(
      await ifquery(
        `${eni.replace(/^source .*$/m, '')}${await guestFile(img, '/etc/network/interfaces.d/nqvm')}`,
        'nqvm-eth0',
      ),
    ).toMatchObject({ gateway: '10.213.0.1' });
  });

  it('systemd-networkd: a .network file per NIC matched by MAC; resolved keeps resolv.conf', async () => {
    const img = await ext4Image(dir, NETWORKD_ROOT);
    const result = await injectGuestConfig(img, config());
    expect(result.networkStack).toBe('systemd-networkd');
    expect(result.changed).toEqual([
      '/etc/systemd/network/10-nqvm-eth0.network',
      '/etc/systemd/network/10-nqvm-eth1.network',
    ]);
    const eth0 = await guestFile(img, '/etc/systemd/network/10-nqvm-eth0.network');
    expect(eth0).toContain(`[Match]\nMACAddress=${MAC0}\nType=ether\n`);
    expect(eth0).toContain('[Network]\nAddress=10.213.0.2/24\nGateway=10.213.0.1\nDNS=10.213.0.1\n');
    expect(await guestFile(img, '/etc/systemd/network/10-nqvm-eth1.network')).toContain(
      `MACAddress=${MAC1}\nType=ether\n\n[Network]\nDHCP=ipv4\n`,
    );
    expect((await guestMeta(img, '/etc/resolv.conf'))?.mode).toBe(0o777);

    // A NIC gone: its file goes; a new address rewrites the other.
    const moved = structuredClone(NETWORK);
    moved.ethernets.eth0.addresses = ['10.213.0.9/24'];
    const { eth1: _gone, ...onlyEth0 } = moved.ethernets;
    const again = await injectGuestConfig(
      img,
      config({ network_config: { version: 2, ethernets: onlyEth0 } }),
    );
    expect(again.changed).toEqual([
      '/etc/systemd/network/10-nqvm-eth0.network',
      '/etc/systemd/network/10-nqvm-eth1.network',
    ]);
    expect(await guestFile(img, '/etc/systemd/network/10-nqvm-eth0.network')).toContain(
      'Address=10.213.0.9/24',
    );
    expect(await guestMeta(img, '/etc/systemd/network/10-nqvm-eth1.network')).toBeNull();
  });

  it('NetworkManager (beside a loopback-only ifupdown): private keyfiles NetworkManager reads', async () => {
    const img = await ext4Image(dir, NM_ROOT);
    const result = await injectGuestConfig(img, config());
    expect(result.networkStack).toBe('NetworkManager');
    const dirPath = '/etc/NetworkManager/system-connections';
    expect(result.changed).toEqual([
      dirPath,
      `${dirPath}/nqvm-eth0.nmconnection`,
      `${dirPath}/nqvm-eth1.nmconnection`,
    ]);
    expect(await guestMeta(img, `${dirPath}/nqvm-eth0.nmconnection`)).toEqual({
      mode: 0o600,
      uid: 0,
      gid: 0,
    });
    expect(await readNmKeyfile(await guestFile(img, `${dirPath}/nqvm-eth0.nmconnection`))).toEqual({
      id: 'nqvm eth0',
      type: '802-3-ethernet',
      mac: MAC0.toUpperCase(),
      interface: null,
      method: 'manual',
      addresses: ['10.213.0.2/24'],
      gateway: '10.213.0.1',
      dns: ['10.213.0.1'],
    });
    expect(await readNmKeyfile(await guestFile(img, `${dirPath}/nqvm-eth1.nmconnection`))).toMatchObject({
      mac: MAC1.toUpperCase(),
      method: 'auto',
      addresses: [],
      gateway: null,
    });
    // NetworkManager writes resolv.conf itself.
    expect(await guestFile(img, '/etc/resolv.conf')).toBe('nameserver 192.168.1.1\n');
  });

  it('netplan: one private file netplan accepts, matched by MAC, one default route', async () => {
    const img = await ext4Image(dir, NETPLAN_ROOT);
    const result = await injectGuestConfig(img, config());
    expect(result.networkStack).toBe('netplan');
    expect(result.changed).toEqual(['/etc/netplan/90-nqvm.yaml']);
    expect(await guestMeta(img, '/etc/netplan/90-nqvm.yaml')).toEqual({ mode: 0o600, uid: 0, gid: 0 });
    const { networkd, stderr } = await netplanGenerate({
      '90-nqvm.yaml': await guestFile(img, '/etc/netplan/90-nqvm.yaml'),
    });
    expect(stderr).toBe('');
    const eth0 = networkd['10-netplan-nqvm-eth0.network']!;
    expect(eth0).toContain(`[Match]\nPermanentMACAddress=${MAC0}\n`);
    expect(eth0).toMatch(/^Address=10\.213\.0\.2\/24$/m);
    expect(eth0).toMatch(/^DNS=10\.213\.0\.1$/m);
    expect(eth0).toMatch(/\[Route\]\nDestination=0\.0\.0\.0\/0\nGateway=10\.213\.0\.1\n/);
    expect(networkd['10-netplan-nqvm-eth1.network']).toMatch(/^DHCP=ipv4$/m);
    expect(Object.keys(networkd).filter((f) => f.endsWith('.link'))).toEqual([]);
  });
});

describe('inject leaves the network alone when it should, and says why', () => {
  it('an image that configures its interfaces itself keeps its configuration', async () => {
    const own = await ext4Image(dir, {
      ...IFUPDOWN_ROOT,
      '/etc/network/interfaces.d/eth0': 'allow-hotplug eth0\niface eth0 inet dhcp\n',
    });
    const result = await injectGuestConfig(own, config());
    expect(result.changed).toEqual([]);
    expect(result.notes).toEqual([
      'network not written: the image configures its interfaces itself (iface eth0)',
    ]);

    const netplan = await ext4Image(dir, {
      ...NETPLAN_ROOT,
      '/etc/netplan/50-cloud-init.yaml': 'network: {}\n',
    });
    expect((await injectGuestConfig(netplan, config())).notes).toEqual([
      'network not written: the image configures its interfaces itself (/etc/netplan/50-cloud-init.yaml)',
    ]);
  });

  it('auto leaves an image with cloud-init to cloud-init; no stack, or a config it cannot read, is a note', async () => {
    const cloud = await ext4Image(dir, { ...IFUPDOWN_ROOT, '/usr/bin/cloud-init': '#!/bin/true\n' });
    const auto = await injectGuestConfig(cloud, config({ mode: 'auto' }));
    expect(auto.changed).toEqual([]);
    expect(auto.notes).toEqual([
      'network not written: cloud-init in the image configures it from the config drive',
    ]);
    // Mode inject has no config drive: the files are written.
    expect((await injectGuestConfig(cloud, config())).changed).toContain('/etc/network/interfaces.d/nqvm');

    const bare = await ext4Image(dir, SYSTEMD_ROOT);
    expect((await injectGuestConfig(bare, config())).notes).toEqual([
      'network not written: no netplan, NetworkManager, systemd-networkd or ifupdown found in the image',
    ]);
    expect((await injectGuestConfig(bare, config({ network_config: null }))).notes).toEqual([]);

    const odd = await ext4Image(dir, IFUPDOWN_ROOT);
    const unread = await injectGuestConfig(
      odd,
      config({
        network_config: {
          version: 2,
          ethernets: { eth0: { match: { macaddress: MAC0 }, dhcp4: true, mtu: 9000 } },
        },
      }),
    );
    expect(unread.changed).toEqual([]);
    expect(unread.notes).toEqual(['network not written: network_config ethernets.eth0: mtu not understood']);
  });
});
