import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { chmod, mkdir, readlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import type { AgentGuestConfig } from '@nqvm/api';
import { execIn, NetnsLab, runIn } from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ext4Image, guestFile, type TreeEntry } from '../../test/support/guest-config';
import { injectGuestConfig } from './inject';

/**
 * The files injection writes, brought up by the real stacks in network namespaces this test
 * creates: Debian's ifupdown (`ifup -a`) and systemd-networkd, each in a "guest" namespace whose
 * NICs carry the VM's MACs under other names than nqvm's and in the other order (as on QEMU,
 * where the guest says ens3/ens4), joined by veths to a "lan" namespace holding the gateway.
 * Each stack runs in a private mount namespace (its own /run, the guest namespace's /sys), so
 * nothing of this machine's own network configuration is read or touched. Needs root.
 */

const run = promisify(execFile);
const NAT_MAC = '02:fc:00:00:00:01';
const ISOLATED_MAC = '02:fc:00:00:00:02';

/** NIC 0 on a NAT network (address, gateway, resolver), NIC 1 on an isolated one (no gateway). */
const NETWORK = {
  version: 2,
  ethernets: {
    eth0: {
      match: { macaddress: NAT_MAC },
      'set-name': 'eth0',
      dhcp4: false,
      addresses: ['10.213.0.2/24'],
      routes: [{ to: '0.0.0.0/0', via: '10.213.0.1' }],
      nameservers: { addresses: ['10.213.0.1'] },
    },
    eth1: {
      match: { macaddress: ISOLATED_MAC },
      'set-name': 'eth1',
      dhcp4: false,
      addresses: ['10.77.0.5/24'],
    },
  },
};

const CONFIG: AgentGuestConfig = {
  mode: 'inject',
  instance_id: 'i-1',
  hostname: 'netns-guest',
  username: null,
  password_hash: null,
  ssh_authorized_keys: [],
  user_data: null,
  network_config: NETWORK,
};

const link = (to: string): TreeEntry => ({ link: to });
const WANTS = '/etc/systemd/system/multi-user.target.wants';
const ROOT: Record<string, TreeEntry> = {
  '/sbin': link('usr/sbin'),
  '/lib': link('usr/lib'),
  '/usr/lib/systemd/systemd-networkd': '#!/bin/true\n',
  '/etc/passwd': 'root:x:0:0:root:/root:/bin/sh\n',
  '/etc/systemd/network': { dir: true },
};

let lab: NetnsLab;
const children: ChildProcess[] = [];

beforeAll(() => {
  lab = new NetnsLab();
});
afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  await lab?.cleanup();
});

/**
 * A guest namespace with the VM's two NICs (named ens3 = NIC 1 and ens4 = NIC 0) on veths to a
 * lan namespace that holds the NAT gateway 10.213.0.1.
 */
async function guestWithNics(label: string): Promise<string> {
  const guest = await lab.namespace(`${label}-guest`);
  const lan = await lab.namespace(`${label}-lan`);
  await lab.veth({ ns: guest, name: 'ens3' }, { ns: lan, name: 'iso0', address: '10.77.0.1/24' });
  await lab.veth({ ns: guest, name: 'ens4' }, { ns: lan, name: 'nat0', address: '10.213.0.1/24' });
  await execIn(guest, 'ip', ['link', 'set', 'dev', 'ens3', 'address', ISOLATED_MAC]);
  await execIn(guest, 'ip', ['link', 'set', 'dev', 'ens4', 'address', NAT_MAC]);
  return guest;
}

/**
 * A process in the guest's network namespace and a private mount namespace of its own; answers
 * its pid once it is in that mount namespace, for `nsenter -t PID -m -n`.
 */
async function mountNamespace(guest: string): Promise<number> {
  const holder = lab.spawn(guest, 'unshare', [
    '--mount',
    '--propagation',
    'private',
    '--',
    'sleep',
    'infinity',
  ]);
  const pid = holder.pid!;
  const own = await readlink('/proc/self/ns/mnt');
  for (let i = 0; i < 400; i++) {
    if ((await readlink(`/proc/${pid}/ns/mnt`).catch(() => own)) !== own) return pid;
    await sleep(25);
  }
  throw new Error('the mount namespace holder did not start');
}

async function inside(pid: number, cmd: string, args: readonly string[]): Promise<string> {
  const { stdout } = await run('nsenter', ['-t', String(pid), '-m', '-n', '--', cmd, ...args]);
  return stdout;
}

/** The guest's own /sys (its NICs, read only: networkd then takes udev as absent) and a private /run. */
async function privateSystem(pid: number): Promise<void> {
  await inside(pid, 'mount', ['-t', 'sysfs', '-o', 'ro', 'sysfs', '/sys']);
  await inside(pid, 'mount', ['-t', 'tmpfs', 'tmpfs', '/run']);
}

/** The guest's IPv4 addresses by interface, and its default route. */
async function addressing(
  guest: string,
): Promise<{ addresses: Record<string, string[]>; defaults: string[] }> {
  const links = JSON.parse(await execIn(guest, 'ip', ['-j', '-4', 'address', 'show'])) as Array<{
    ifname: string;
    addr_info: Array<{ local: string; prefixlen: number }>;
  }>;
  const routes = JSON.parse(await execIn(guest, 'ip', ['-j', '-4', 'route', 'show', 'default'])) as Array<{
    gateway: string;
    dev: string;
  }>;
  return {
    addresses: Object.fromEntries(
      links
        .filter((l) => l.ifname !== 'lo')
        .map((l) => [l.ifname, l.addr_info.map((a) => `${a.local}/${a.prefixlen}`)]),
    ),
    defaults: routes.map((r) => `via ${r.gateway} dev ${r.dev}`),
  };
}

const EXPECTED = {
  addresses: { ens3: ['10.77.0.5/24'], ens4: ['10.213.0.2/24'] },
  defaults: ['via 10.213.0.1 dev ens4'],
};

describe('injected network files, brought up by the real stacks', () => {
  it('ifupdown: ifup -a finds both NICs by MAC, sets their addresses and the one default route', async () => {
    const dir = await lab.tempDir();
    const img = await ext4Image(dir, {
      ...ROOT,
      '/usr/sbin/ifup': '#!/bin/true\n',
      '/etc/network/interfaces': 'auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n',
      '/etc/network/interfaces.d': { dir: true },
      [`${WANTS}/networking.service`]: link('/lib/systemd/system/networking.service'),
    });
    expect((await injectGuestConfig(img, CONFIG)).networkStack).toBe('ifupdown');
    const interfaces = path.join(dir, 'interfaces');
    await writeFile(interfaces, await guestFile(img, '/etc/network/interfaces.d/nqvm'));

    const guest = await guestWithNics('eni');
    const pid = await mountNamespace(guest);
    await privateSystem(pid);
    // --no-scripts: this machine's if-up.d hooks stay out of it.
    await inside(pid, 'ifup', ['-a', '-i', interfaces, '--state-dir', dir, '--no-scripts']);
    expect(await addressing(guest)).toEqual(EXPECTED);
    expect((await runIn(guest, 'busybox', ['ping', '-c', '1', '-W', '5', '10.213.0.1'])).code).toBe(0);
  });

  it('systemd-networkd: matches both NICs by MAC, sets their addresses and the one default route', async () => {
    const dir = await lab.tempDir();
    const img = await ext4Image(dir, {
      ...ROOT,
      [`${WANTS}/systemd-networkd.service`]: link('/lib/systemd/system/systemd-networkd.service'),
    });
    expect((await injectGuestConfig(img, CONFIG)).networkStack).toBe('systemd-networkd');
    // networkd reads its files as user systemd-network.
    const files = path.join(dir, 'network');
    await mkdir(files);
    await chmod(files, 0o755);
    for (const nic of ['eth0', 'eth1']) {
      const name = `10-nqvm-${nic}.network`;
      await writeFile(path.join(files, name), await guestFile(img, `/etc/systemd/network/${name}`), {
        mode: 0o644,
      });
    }

    const guest = await guestWithNics('networkd');
    const pid = await mountNamespace(guest);
    await privateSystem(pid);
    await inside(pid, 'mount', ['--bind', files, '/etc/systemd/network']);
    await inside(pid, 'mkdir', [
      '-p',
      '/run/systemd/netif/links',
      '/run/systemd/netif/leases',
      '/run/systemd/netif/lldp',
    ]);
    await inside(pid, 'chown', ['-R', 'systemd-network:systemd-network', '/run/systemd/netif']);
    const networkd = spawn(
      'nsenter',
      ['-t', String(pid), '-m', '-n', '--', '/lib/systemd/systemd-networkd'],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    children.push(networkd);
    let log = '';
    networkd.stderr!.on('data', (b: Buffer) => {
      log += b.toString();
    });
    // networkd configures links as they come: wait (generously) until it has done both.
    let seen = await addressing(guest);
    for (let i = 0; i < 400 && JSON.stringify(seen) !== JSON.stringify(EXPECTED); i++) {
      await sleep(50);
      seen = await addressing(guest);
    }
    expect(seen, log).toEqual(EXPECTED);
    expect(log).not.toMatch(/Unknown (key|section)|Failed to parse/);
    expect((await runIn(guest, 'busybox', ['ping', '-c', '1', '-W', '5', '10.213.0.1'])).code).toBe(0);
  });
});
