import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execIn, httpGet, NetnsLab, runIn } from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dnsmasqPids } from './dnsmasq';
import { HostNetwork } from './host-network';
import { hostRunner } from './host-runner';
import { listAddresses, listLinks, listRoutes } from './iproute';

/**
 * The module against real kernels objects in namespaces this test creates: "host" (where the
 * module works), "lan" (its upstream router, with a web server) and "guest" (a stand-in VM on
 * a veth plugged into the bridge: what crosses the bridge is the same as from a TAP). Tests
 * run in order and build on each other. Real guests on TAPs: host-network.guests.test.ts.
 */

const NAT_ID = '0b7d5a52-0000-4000-8000-00000000aa01';
const BRIDGED_ID = '0b7d5a52-0000-4000-8000-00000000aa02';
const VM_ID = '0b7d5a52-0000-4000-8000-00000000bb01';
const ISOLATED_ID = '0b7d5a52-0000-4000-8000-00000000aa03';

let lab: NetnsLab;
let host: string;
let lan: string;
let guest: string;
let guest2: string;
let stateDir: string;
let net: HostNetwork;
const commands: string[][] = [];

const natSpec = {
  id: NAT_ID,
  kind: 'nat' as const,
  cidr: '10.77.0.0/24',
  gateway: '10.77.0.1',
  dhcp: true,
  dns: true,
  dnsServers: ['192.168.77.1'],
};

async function nft(ns: string, ...args: string[]): Promise<string> {
  return execIn(ns, 'nft', args);
}

async function nftScript(ns: string, script: string): Promise<void> {
  const r = await runIn(ns, 'nft', ['-f', '-'], { input: script });
  if (r.code !== 0) throw new Error(`nft -f failed: ${r.stderr}`);
}

beforeAll(async () => {
  lab = new NetnsLab();
  host = await lab.namespace('host');
  lan = await lab.namespace('lan');
  guest = await lab.namespace('guest');
  guest2 = await lab.namespace('guest2');
  await lab.veth(
    { ns: host, name: 'up0', address: '192.168.77.2/24' },
    { ns: lan, name: 'lan0', address: '192.168.77.1/24' },
  );
  await execIn(host, 'ip', ['route', 'add', 'default', 'via', '192.168.77.1']);
  // The LAN has no route to any VM network: replies reach VMs only through masquerade.
  await lab.serveHttp(lan, 8080, { 'index.html': 'from the lan\n' });
  lab.spawn(lan, 'dnsmasq', [
    '--keep-in-foreground',
    '--conf-file=/dev/null',
    '--no-resolv',
    '--no-hosts',
    '--bind-interfaces',
    '--listen-address=192.168.77.1',
    '--address=/web.lan.test/192.168.77.1',
  ]);
  stateDir = await lab.tempDir();
  net = new HostNetwork({ stateDir, netns: host, onCommand: (argv) => commands.push([...argv]) });
});

afterAll(async () => {
  await lab?.cleanup();
});

describe('HostNetwork in network namespaces', () => {
  it('refuses hostile or malformed input before running any command', async () => {
    const before = await execIn(host, 'ip', ['-json', 'link', 'show']);
    commands.length = 0;
    const bad = [
      () => net.ensureNetwork({ ...natSpec, id: 'x;reboot' }),
      () => net.ensureNetwork({ ...natSpec, kind: 'nat', uplink: 'eth0$(id)' }),
      () => net.ensureNetwork({ id: NAT_ID, kind: 'bridged', bridge: 'a'.repeat(16) }),
      () => net.ensureNetwork({ id: NAT_ID, kind: 'bridged', uplink: 'up0 type' }),
      () => net.ensureNetwork({ ...natSpec, cidr: '10.77.0.1/24' }),
      () => net.ensureNetwork({ ...natSpec, gateway: '10.78.0.1' }),
      () => net.ensureTap({ vmId: '../../etc', nicIndex: 0, networkId: NAT_ID }),
      () => net.ensureTap({ vmId: VM_ID, nicIndex: 0, networkId: NAT_ID, mac: '03:00:00:00:00:01' }),
      () =>
        net.ensurePortForward({
          id: 'pf`x`',
          proto: 'tcp',
          hostPort: 80,
          guestIp: '10.77.0.10',
          guestPort: 80,
        }),
      () =>
        net.ensurePortForward({
          id: 'pf',
          proto: 'sctp' as 'tcp',
          hostPort: 80,
          guestIp: '10.77.0.10',
          guestPort: 80,
        }),
      () => net.removeNetwork('a b'),
      () => net.reconcile({ networks: [natSpec, natSpec], taps: [], portForwards: [] }),
    ];
    for (const call of bad) {
      await expect(Promise.resolve().then(call)).rejects.toMatchObject({ code: 'VALIDATION_FAILED' });
    }
    expect(commands).toEqual([]);
    expect(await execIn(host, 'ip', ['-json', 'link', 'show'])).toBe(before);
  });

  it('creates a nat network once; the second run changes nothing', async () => {
    // A new namespace inherits the machine's IPv4 settings, forwarding too: start from off.
    await execIn(host, 'sysctl', ['-q', '-w', 'net/ipv4/ip_forward=0']);
    const first = await net.ensureNetwork(natSpec);
    expect(first.bridge).toMatch(/^nqb[a-z2-7]{8}$/);
    expect(first.actions).toEqual(
      expect.arrayContaining([
        `created bridge ${first.bridge}`,
        `set 10.77.0.1/24 on ${first.bridge}`,
        'set net/ipv4/ip_forward=1',
        `started dnsmasq on ${first.bridge}`,
        'applied the nqvm nftables ruleset',
      ]),
    );
    const second = await net.ensureNetwork(natSpec);
    expect(second).toEqual({ bridge: first.bridge, actions: [], warnings: [] });

    const runner = hostRunner({ netns: host });
    const link = (await listLinks(runner)).get(first.bridge);
    expect(link).toMatchObject({ kind: 'bridge', up: true, alias: `nqvm:nq:network:${NAT_ID}` });
    expect(await listAddresses(runner, first.bridge)).toEqual([{ local: '10.77.0.1', prefixlen: 24 }]);
    expect(
      (await execIn(host, 'cat', [`/proc/sys/net/ipv4/conf/${first.bridge}/route_localnet`])).trim(),
    ).toBe('1');
    // Only in the test's namespace: the machine's own forwarding setting is not touched.
    const conf = path.join(stateDir, 'network', 'networks', NAT_ID, 'dnsmasq.conf');
    expect(await dnsmasqPids(conf)).toHaveLength(1);
    expect(await nft(host, 'list', 'tables')).toBe('table inet nqvm\ntable bridge nqvm\n');
  });

  it('masquerades a VM out of the host: the LAN answers without a route back', async () => {
    const bridge = (await net.ensureNetwork(natSpec)).bridge;
    await lab.veth({ ns: guest, name: 'eth0', address: '10.77.0.10/24' }, { ns: host, name: 'gv0' });
    await execIn(host, 'ip', ['link', 'set', 'dev', 'gv0', 'master', bridge]);
    await execIn(guest, 'ip', ['route', 'add', 'default', 'via', '10.77.0.1']);
    expect(await httpGet(guest, 'http://192.168.77.1:8080/')).toBe('from the lan\n');
    // The gateway answers DNS, forwarding to the upstream the network names (the LAN's).
    const dns = await runIn(guest, 'busybox', ['nslookup', 'web.lan.test', '10.77.0.1']);
    expect(dns.stdout).toMatch(/Address:\s+192\.168\.77\.1$/m);
  });

  it('forwards a host port to the VM, from the LAN and from the host itself', async () => {
    await lab.serveHttp(guest, 80, { 'index.html': 'from the vm\n' });
    const r = await net.ensurePortForward({
      id: 'pf-web',
      proto: 'tcp',
      hostPort: 8080,
      guestIp: '10.77.0.10',
      guestPort: 80,
    });
    expect(r.actions).toEqual(['applied the nqvm nftables ruleset']);
    expect(await httpGet(lan, 'http://192.168.77.2:8080/')).toBe('from the vm\n');
    expect(await httpGet(host, 'http://192.168.77.2:8080/')).toBe('from the vm\n');
    expect(await httpGet(host, 'http://127.0.0.1:8080/')).toBe('from the vm\n');
    // Another VM of the network, through the gateway and through the host's LAN address.
    await lab.veth({ ns: guest2, name: 'eth0', address: '10.77.0.11/24' }, { ns: host, name: 'gv1' });
    await execIn(host, 'ip', [
      'link',
      'set',
      'dev',
      'gv1',
      'master',
      (await net.ensureNetwork(natSpec)).bridge,
    ]);
    await execIn(guest2, 'ip', ['route', 'add', 'default', 'via', '10.77.0.1']);
    expect(await httpGet(guest2, 'http://10.77.0.1:8080/')).toBe('from the vm\n');
    expect(await httpGet(guest2, 'http://192.168.77.2:8080/')).toBe('from the vm\n');
    // route_localnet lets 127.0.0.0/8 through the bridge; a VM sending there must still be dropped.
    await lab.serveHttp(host, 8181, { 'index.html': 'host loopback only\n' });
    await execIn(guest, 'ip', ['route', 'del', 'table', 'local', '127.0.0.0/8', 'dev', 'lo']);
    await execIn(guest, 'sysctl', ['-q', '-w', 'net/ipv4/conf/eth0/route_localnet=1']);
    await execIn(guest, 'ip', ['route', 'add', '127.1.0.0/16', 'via', '10.77.0.1', 'dev', 'eth0']);
    expect(await httpGet(guest, 'http://127.1.0.1:8181/', 1_000)).toBeNull();
    await execIn(host, 'nft', ['delete', 'chain', 'inet', 'nqvm', 'guard']);
    expect(await httpGet(guest, 'http://127.1.0.1:8181/', 2_000)).toBe('host loopback only\n');
    await net.reconcile();
    expect(await httpGet(guest, 'http://127.1.0.1:8181/', 1_000)).toBeNull();
  });

  it('rejects a port that is already forwarded or that the host listens on', async () => {
    await expect(
      net.ensurePortForward({
        id: 'pf-other',
        proto: 'tcp',
        hostPort: 8080,
        guestIp: '10.77.0.11',
        guestPort: 80,
      }),
    ).rejects.toMatchObject({ code: 'CONFLICT', details: { portForwardId: 'pf-web' } });
    await expect(
      net.ensurePortForward({
        id: 'pf-other',
        proto: 'tcp',
        hostPort: 8181,
        guestIp: '10.77.0.11',
        guestPort: 80,
      }),
    ).rejects.toMatchObject({ code: 'CONFLICT', message: 'the host already listens on tcp port 8181' });
    // The same forward again is no conflict, and no change.
    await expect(
      net.ensurePortForward({
        id: 'pf-web',
        proto: 'tcp',
        hostPort: 8080,
        guestIp: '10.77.0.10',
        guestPort: 80,
      }),
    ).resolves.toEqual({ actions: [], warnings: [] });
  });

  it('refuses a subnet that overlaps a host route, creating nothing', async () => {
    const before = await execIn(host, 'ip', ['-json', 'link', 'show']);
    await expect(
      net.ensureNetwork({ id: 'overlap', kind: 'isolated', cidr: '192.168.77.0/25' }),
    ).rejects.toMatchObject({ code: 'CONFLICT', details: { route: '192.168.77.0/24', dev: 'up0' } });
    await expect(
      net.ensureNetwork({ id: 'overlap', kind: 'isolated', cidr: '10.77.0.128/25' }),
    ).rejects.toMatchObject({ code: 'CONFLICT', details: { networkId: NAT_ID } });
    expect(await execIn(host, 'ip', ['-json', 'link', 'show'])).toBe(before);
  });

  it('reports a forward-blocking policy of another firewall and leaves that table alone', async () => {
    const bridge = (await net.ensureNetwork(natSpec)).bridge;
    await nftScript(
      host,
      'add table ip filter\nadd chain ip filter FORWARD { type filter hook forward priority 0; policy drop; }\n',
    );
    const foreign = await nft(host, 'list', 'table', 'ip', 'filter');
    expect(await httpGet(guest, 'http://192.168.77.1:8080/', 1_000)).toBeNull();
    const warnings = await net.inspectFirewall();
    expect(warnings).toEqual([
      expect.objectContaining({
        code: 'FORWARD_BLOCKED',
        blocking: { family: 'ip', table: 'filter', chain: 'FORWARD', hook: 'forward', how: 'policy' },
        bridges: [bridge],
      }),
    ]);
    expect((await net.ensureNetwork(natSpec)).warnings).toEqual(warnings);
    expect(await nft(host, 'list', 'table', 'ip', 'filter')).toBe(foreign);
    // What the warning suggests is enough.
    await nftScript(host, warnings[0]!.suggestedRules.map((r) => r.replace(/^nft /, '')).join('\n'));
    expect(await httpGet(guest, 'http://192.168.77.1:8080/')).toBe('from the lan\n');
    await execIn(host, 'nft', ['delete', 'table', 'ip', 'filter']);
  });

  it('names TAPs from ids, steps around a foreign interface holding the name, and removes them', async () => {
    const runner = hostRunner({ netns: host });
    const expected = net.names.tap(VM_ID, 0);
    await execIn(host, 'ip', ['link', 'add', 'name', expected, 'type', 'bridge']);
    const tap = await net.ensureTap({ vmId: VM_ID, nicIndex: 0, networkId: NAT_ID, ip: '10.77.0.20' });
    expect(tap.tap).toBe(net.names.tap(VM_ID, 0, 1));
    expect(tap.mac).toMatch(/^02(:[0-9a-f]{2}){5}$/);
    const link = (await listLinks(runner)).get(tap.tap);
    expect(link).toMatchObject({ kind: 'tun', tunType: 'tap', tunUser: 'root', master: tap.bridge });
    expect(await nft(host, 'list', 'chain', 'bridge', 'nqvm', `from_${tap.tap}`)).toContain(
      `ether saddr != ${tap.mac} drop`,
    );
    const conf = await readFile(path.join(stateDir, 'network', 'networks', NAT_ID, 'dnsmasq.conf'), 'utf8');
    expect(conf).toContain(`dhcp-host=${tap.mac},10.77.0.20`);
    expect(
      (await net.ensureTap({ vmId: VM_ID, nicIndex: 0, networkId: NAT_ID, ip: '10.77.0.20' })).actions,
    ).toEqual([]);
    await expect(net.removeNetwork(NAT_ID)).rejects.toMatchObject({ code: 'CONFLICT' });
    await expect(
      net.ensureTap({ vmId: `${VM_ID.slice(0, -1)}2`, nicIndex: 0, networkId: NAT_ID, ip: '10.77.0.20' }),
    ).rejects.toMatchObject({ code: 'CONFLICT' });
    const removed = await net.removeTap(VM_ID, 0);
    expect(removed.actions).toContain(`deleted TAP ${tap.tap}`);
    expect((await listLinks(runner)).has(tap.tap)).toBe(false);
    expect((await listLinks(runner)).get(expected)).toMatchObject({ kind: 'bridge', alias: null });
    await execIn(host, 'ip', ['link', 'del', expected]);
  });

  it('reconcile restores a bridge and rules deleted by hand', async () => {
    const bridge = (await net.ensureNetwork(natSpec)).bridge;
    await net.ensureTap({ vmId: VM_ID, nicIndex: 0, networkId: NAT_ID, ip: '10.77.0.20' });
    await execIn(host, 'ip', ['link', 'del', bridge]);
    await execIn(host, 'nft', ['delete', 'table', 'inet', 'nqvm']);
    const report = await net.reconcile();
    expect(report.failures).toEqual([]);
    expect(report.actions).toEqual(
      expect.arrayContaining([
        `created bridge ${bridge}`,
        expect.stringMatching(new RegExp(`^attached nqt[a-z2-7]{8} to ${bridge}$`)),
        'applied the nqvm nftables ruleset',
      ]),
    );
    for (const port of ['gv0', 'gv1'])
      await execIn(host, 'ip', ['link', 'set', 'dev', port, 'master', bridge]);
    expect(await httpGet(lan, 'http://192.168.77.2:8080/')).toBe('from the vm\n');
    expect(await httpGet(guest, 'http://192.168.77.1:8080/')).toBe('from the lan\n');
  });

  it('serves DHCP on an isolated network without `dhcp`: each NIC gets its reserved address, no router, no DNS', async () => {
    // As the manager sends networks by default (dhcp off): a guest that only runs a DHCP
    // client still gets the address nqvm assigned to its MAC, and nothing for other MACs.
    const isolated = {
      id: ISOLATED_ID,
      kind: 'isolated' as const,
      cidr: '10.79.0.0/24',
      gateway: '10.79.0.1',
    };
    const { bridge } = await net.ensureNetwork(isolated);
    const tap = await net.ensureTap({ vmId: VM_ID, nicIndex: 1, networkId: ISOLATED_ID, ip: '10.79.0.10' });
    const guest3 = await lab.namespace('guest3');
    await lab.veth({ ns: guest3, name: 'eth0' }, { ns: host, name: 'gv3' });
    await execIn(host, 'ip', ['link', 'set', 'dev', 'gv3', 'master', bridge, 'up']);
    const script = path.join(await lab.tempDir(), 'udhcpc.sh');
    await writeFile(
      script,
      '#!/bin/sh\n[ "$1" = bound ] && echo "LEASE ip=$ip mask=$mask router=$router dns=$dns"\nexit 0\n',
      {
        mode: 0o755,
      },
    );
    const udhcpc = () =>
      runIn(guest3, 'busybox', ['udhcpc', '-i', 'eth0', '-n', '-q', '-t', '3', '-T', '1', '-s', script], {
        timeoutMs: 30_000,
      });
    await execIn(guest3, 'ip', ['link', 'set', 'dev', 'eth0', 'up']);
    const stranger = await udhcpc();
    expect(stranger.stdout).not.toContain('LEASE');
    await execIn(guest3, 'ip', ['link', 'set', 'dev', 'eth0', 'address', tap.mac]);
    const reserved = await udhcpc();
    expect(reserved.stdout).toContain('LEASE ip=10.79.0.10 mask=24 router= dns=\n');
    await execIn(host, 'ip', ['link', 'del', 'gv3']);
    await net.removeTap(VM_ID, 1);
    await net.removeNetwork(ISOLATED_ID);
  });

  it('moves an uplink under a bridged network and gives it back on removal', async () => {
    await lab.veth(
      { ns: host, name: 'up1', address: '192.168.79.2/24' },
      { ns: lan, name: 'lan1', address: '192.168.79.1/24' },
    );
    await execIn(host, 'ip', ['route', 'add', '10.99.0.0/16', 'via', '192.168.79.1', 'metric', '50']);
    const runner = hostRunner({ netns: host });
    const r = await net.ensureNetwork({ id: BRIDGED_ID, kind: 'bridged', uplink: 'up1' });
    expect((await listLinks(runner)).get('up1')?.master).toBe(r.bridge);
    expect(await listAddresses(runner, 'up1')).toEqual([]);
    expect(await listAddresses(runner, r.bridge)).toEqual([{ local: '192.168.79.2', prefixlen: 24 }]);
    expect(await listRoutes(runner, r.bridge)).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ dst: '10.99.0.0/16', gateway: '192.168.79.1', metric: 50 }),
      ]),
    );
    expect((await runIn(host, 'busybox', ['ping', '-c', '1', '-W', '2', '192.168.79.1'])).code).toBe(0);
    expect((await net.ensureNetwork({ id: BRIDGED_ID, kind: 'bridged', uplink: 'up1' })).actions).toEqual([]);

    const removed = await net.removeNetwork(BRIDGED_ID);
    expect(removed.actions).toEqual(expect.arrayContaining([`deleted bridge ${r.bridge}`]));
    expect((await listLinks(runner)).get('up1')?.master).toBeNull();
    expect(await listAddresses(runner, 'up1')).toEqual([{ local: '192.168.79.2', prefixlen: 24 }]);
    expect(await listRoutes(runner, 'up1')).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ dst: '10.99.0.0/16', gateway: '192.168.79.1', metric: 50 }),
      ]),
    );
  });

  it('reconcile to nothing removes every nqvm object, leftovers included, and only those', async () => {
    await execIn(host, 'ip', ['link', 'add', 'name', 'nqbleftover', 'type', 'bridge']);
    await execIn(host, 'ip', ['link', 'set', 'dev', 'nqbleftover', 'alias', 'nqvm:nq:network:gone']);
    await execIn(host, 'ip', ['link', 'add', 'name', 'nqbaaaaaaaa', 'type', 'bridge']);
    const report = await net.reconcile({ networks: [], taps: [], portForwards: [] });
    expect(report.failures).toEqual([]);
    const runner = hostRunner({ netns: host });
    const names = [...(await listLinks(runner)).keys()].sort();
    // Not tagged as ours, so kept even though it looks like an nqvm name.
    expect(names).toEqual(['gv0', 'gv1', 'lo', 'nqbaaaaaaaa', 'up0', 'up1']);
    expect(await nft(host, 'list', 'tables')).toBe('');
    const conf = path.join(stateDir, 'network', 'networks', NAT_ID, 'dnsmasq.conf');
    expect(await dnsmasqPids(conf)).toEqual([]);
  });
});
