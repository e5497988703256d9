import { readFile } from 'node:fs/promises';
import path from 'node:path';
import {
  BOOT_MARKER,
  ensureTestGuest,
  execIn,
  guestBootArgs,
  httpGet,
  NetnsLab,
  runIn,
  type TestGuest,
} from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QemuDriver } from '../drivers/qemu/qemu-driver';
import type { QemuVm } from '../drivers/qemu/qemu-vm';
import { parseLeases } from './dnsmasq';
import { HostNetwork, nicSpec } from './host-network';

/**
 * Real guests (the testkit guest under QEMU/TCG) on TAPs made by the module, in namespaces
 * this test creates: "host" runs the module and the VMMs, "lan" is its upstream router with a
 * web server, a DNS server and a DHCP server for the bridged network. At most two guests run
 * at a time. Run under `flock /tmp/nqvm-vm.lock`.
 */

const BOOT_TIMEOUT_MS = 90_000;
const NAT = '6c1e0f3a-0000-4000-8000-0000000000a1';
const ISOLATED = '6c1e0f3a-0000-4000-8000-0000000000a2';
const BRIDGED = '6c1e0f3a-0000-4000-8000-0000000000a3';
const vmId = (n: number) => `6c1e0f3a-0000-4000-8000-0000000001${String(n).padStart(2, '0')}`;

let guestImage: TestGuest;
let lab: NetnsLab;
let host: string;
let lan: string;
let lanLeases: string;
let driver: QemuDriver;
let net: HostNetwork;
let vmRoot: string;
const running = new Set<QemuVm>();
const figures: Record<string, string> = {};

const natSpec = {
  id: NAT,
  kind: 'nat' as const,
  cidr: '10.77.0.0/24',
  gateway: '10.77.0.1',
  dhcp: true,
  dns: true,
  dnsServers: ['192.168.77.1'],
};

async function boot(id: string, taps: Parameters<typeof nicSpec>[0][], cmdline: string): Promise<QemuVm> {
  const t0 = performance.now();
  const vm = await driver.boot({
    id,
    generation: 1,
    vcpu: 1,
    memMib: 128,
    kernelPath: guestImage.kernel,
    initrdPath: guestImage.initrd,
    bootArgs: guestBootArgs(cmdline),
    disks: [],
    nics: taps.map((t, i) => nicSpec(t, i)),
    vmDir: path.join(vmRoot, id),
  });
  running.add(vm);
  await vm.console.waitForOutput(BOOT_MARKER, BOOT_TIMEOUT_MS);
  figures[`bootToMarkerMs ${id.slice(-3)}`] = (performance.now() - t0).toFixed(0);
  return vm;
}

async function stop(vm: QemuVm): Promise<void> {
  await driver.shutdown(vm, { graceful: false, timeoutMs: 0 });
  running.delete(vm);
}

let seq = 0;

/** Runs a shell command on the guest's console; answers its exit code and what it printed. */
async function sh(vm: QemuVm, command: string, timeoutMs = 20_000): Promise<{ code: number; out: string }> {
  const n = seq++;
  const from = vm.console.totalBytes;
  vm.console.write(`${command}; echo "@@${n}:$?@@"\n`);
  const marker = new RegExp(`@@${n}:(\\d+)@@`);
  const found = await vm.console.waitForOutput(marker, timeoutMs, from);
  const out = vm.console.tail(vm.console.totalBytes - from).toString('latin1');
  return { code: Number(marker.exec(found)?.[1]), out };
}

async function ping(vm: QemuVm, target: string, from?: string): Promise<boolean> {
  const src = from ? ` -I ${from}` : '';
  return (await sh(vm, `ping -c 1 -W 3${src} ${target} >/dev/null 2>&1`)).code === 0;
}

/** busybox wget in the guest; its own `-T` crashes busybox 1.35, so `timeout` bounds it. */
async function fetch(vm: QemuVm, url: string): Promise<string | null> {
  // The prefix is computed by the shell, so the echoed command line never holds it.
  const r = await sh(vm, `timeout 5 wget -q -O - ${url} | sed "s/^/R$((40+2)):/"`);
  const body = [...r.out.matchAll(/R42:(.*?)\r?$/gm)].map((m) => m[1]).join('\n');
  return body === '' ? null : body;
}

async function serveOnGuest(vm: QemuVm, text: string): Promise<void> {
  expect(
    (await sh(vm, `mkdir -p /www && echo '${text}' > /www/index.html && httpd -p 80 -h /www`)).code,
  ).toBe(0);
}

beforeAll(async () => {
  guestImage = await ensureTestGuest();
  lab = new NetnsLab();
  host = await lab.namespace('host');
  lan = await lab.namespace('lan');
  await lab.veth(
    { ns: host, name: 'up0', address: '192.168.77.2/24' },
    { ns: lan, name: 'lan0', address: '192.168.77.1/24' },
  );
  await lab.veth(
    { ns: host, name: 'up1', address: '192.168.79.2/24' },
    { ns: lan, name: 'lan1', address: '192.168.79.1/24' },
  );
  await execIn(host, 'ip', ['route', 'add', 'default', 'via', '192.168.77.1']);
  // A way back to the isolated network: only nqvm's fence keeps its VMs from the LAN.
  await execIn(lan, 'ip', ['route', 'add', '10.78.0.0/24', 'via', '192.168.77.2']);
  await lab.serveHttp(lan, 8080, { 'index.html': 'from the lan\n' });
  const lanDir = await lab.tempDir();
  lanLeases = path.join(lanDir, 'leases');
  lab.spawn(lan, 'dnsmasq', [
    '--keep-in-foreground',
    '--conf-file=/dev/null',
    '--no-resolv',
    '--no-hosts',
    '--bind-interfaces',
    '--interface=lan0',
    '--interface=lan1',
    '--address=/web.lan.test/192.168.77.1',
    '--dhcp-range=lan1,192.168.79.100,192.168.79.150,255.255.255.0,1h',
    `--dhcp-leasefile=${lanLeases}`,
    '--user=root',
  ]);
  const stateDir = await lab.tempDir();
  vmRoot = await lab.tempDir();
  net = new HostNetwork({ stateDir, netns: host });
  driver = new QemuDriver({ netns: host, tcgTbSizeMib: 32 });
}, 600_000);

afterAll(async () => {
  for (const vm of running) await driver.shutdown(vm, { graceful: false, timeoutMs: 0 }).catch(() => {});
  await lab?.cleanup();
  console.info('network guest figures:', figures);
});

describe('VMs on nqvm networks (real guests)', () => {
  let a: QemuVm;
  let b: QemuVm;

  it('two VMs on a nat network reach each other, the gateway, DNS and the LAN through masquerade', async () => {
    await net.ensureNetwork(natSpec);
    const tapA = await net.ensureTap({ vmId: vmId(1), nicIndex: 0, networkId: NAT, ip: '10.77.0.10' });
    const tapB = await net.ensureTap({ vmId: vmId(2), nicIndex: 0, networkId: NAT, ip: '10.77.0.11' });
    a = await boot(vmId(1), [tapA], 'nqvm.ip=10.77.0.10/24 nqvm.gw=10.77.0.1 nqvm.dns=10.77.0.1');
    // B asks DHCP: the network's dnsmasq hands out the address nqvm assigned to its MAC.
    b = await boot(vmId(2), [tapB], 'nqvm.dhcp=1');
    expect((await sh(b, 'ip -4 addr show dev eth0')).out).toContain('inet 10.77.0.11/24');
    expect((await sh(b, 'cat /etc/resolv.conf')).out).toContain('nameserver 10.77.0.1');
    expect(await ping(a, '10.77.0.11')).toBe(true);
    expect(await ping(a, '10.77.0.1')).toBe(true);
    expect(await ping(b, '10.77.0.10')).toBe(true);
    expect(await fetch(a, 'http://192.168.77.1:8080/')).toBe('from the lan');
    expect((await sh(a, 'nslookup web.lan.test')).out).toMatch(/Address:\s+192\.168\.77\.1/);
    const found = await net.discoverAddresses(vmId(1), 0);
    expect(found.addresses).toContain('10.77.0.10');
  });

  it('forwards a host port to a server in a VM: from the LAN, the host itself and the other VM', async () => {
    await serveOnGuest(a, 'from vm a');
    await net.ensurePortForward({
      id: 'web-a',
      proto: 'tcp',
      hostPort: 8080,
      guestIp: '10.77.0.10',
      guestPort: 80,
    });
    expect(await httpGet(lan, 'http://192.168.77.2:8080/')).toBe('from vm a\n');
    expect(await httpGet(host, 'http://127.0.0.1:8080/')).toBe('from vm a\n');
    expect(await httpGet(host, 'http://192.168.77.2:8080/')).toBe('from vm a\n');
    expect(await fetch(b, 'http://10.77.0.1:8080/')).toBe('from vm a');
    await net.removePortForward('web-a');
    expect(await httpGet(lan, 'http://192.168.77.2:8080/', 2_000)).toBeNull();
  });

  it('drops what a VM sends with an address or a MAC not its own', async () => {
    expect(await ping(a, '10.77.0.11', '10.77.0.10')).toBe(true);
    await sh(a, 'ip addr add 10.77.0.99/24 dev eth0');
    expect(await ping(a, '10.77.0.11', '10.77.0.99')).toBe(false);
    await sh(a, 'ip addr del 10.77.0.99/24 dev eth0');
    await sh(a, 'ip link set eth0 address 02:00:00:00:00:99');
    await sh(a, 'ip neigh flush dev eth0');
    expect(await ping(a, '10.77.0.11')).toBe(false);
    const tapA = await net.ensureTap({ vmId: vmId(1), nicIndex: 0, networkId: NAT, ip: '10.77.0.10' });
    await sh(a, `ip link set eth0 address ${tapA.mac}`);
    expect(await ping(a, '10.77.0.11')).toBe(true);
  });

  it('reconcile restores a bridge deleted by hand, and the VMs talk again', async () => {
    const { bridge } = await net.ensureNetwork(natSpec);
    await execIn(host, 'ip', ['link', 'del', bridge]);
    expect(await ping(a, '10.77.0.11')).toBe(false);
    const t0 = performance.now();
    const report = await net.reconcile();
    figures.reconcileMs = (performance.now() - t0).toFixed(0);
    expect(report.failures).toEqual([]);
    expect(report.actions).toContain(`created bridge ${bridge}`);
    expect(await ping(a, '10.77.0.11')).toBe(true);
    expect(await fetch(a, 'http://192.168.77.1:8080/')).toBe('from the lan');
  });

  it('reconcile re-creates a TAP deleted by hand', async () => {
    const tapB = await net.ensureTap({ vmId: vmId(2), nicIndex: 0, networkId: NAT, ip: '10.77.0.11' });
    await execIn(host, 'ip', ['link', 'del', tapB.tap]);
    const report = await net.reconcile();
    expect(report.actions).toEqual(expect.arrayContaining([`created TAP ${tapB.tap}`]));
    expect(report.createdTaps).toEqual([{ vmId: vmId(2), nicIndex: 0, tap: tapB.tap }]);
    const link = JSON.parse(await execIn(host, 'ip', ['-json', 'link', 'show', 'dev', tapB.tap]))[0];
    expect(link.master).toBe(tapB.bridge);
    // QEMU still holds the deleted device: a running VM needs a restart to use the new TAP.
    expect(await ping(a, '10.77.0.11')).toBe(false);
    await stop(a);
    await stop(b);
    await net.removeTap(vmId(1), 0);
    await net.removeTap(vmId(2), 0);
  });

  it('isolated: a VM reaches its neighbour but not the LAN', async () => {
    await net.ensureNetwork({ id: ISOLATED, kind: 'isolated', cidr: '10.78.0.0/24', gateway: '10.78.0.1' });
    const tapC = await net.ensureTap({ vmId: vmId(3), nicIndex: 0, networkId: ISOLATED, ip: '10.78.0.10' });
    const tapD = await net.ensureTap({ vmId: vmId(4), nicIndex: 0, networkId: ISOLATED, ip: '10.78.0.11' });
    const c = await boot(vmId(3), [tapC], 'nqvm.ip=10.78.0.10/24 nqvm.gw=10.78.0.1');
    const d = await boot(vmId(4), [tapD], 'nqvm.ip=10.78.0.11/24 nqvm.gw=10.78.0.1');
    expect(await ping(c, '10.78.0.11')).toBe(true);
    expect(await ping(d, '10.78.0.10')).toBe(true);
    expect(await ping(c, '192.168.77.1')).toBe(false);
    expect(await fetch(c, 'http://192.168.77.1:8080/')).toBeNull();
    // The fence is what stops it: the LAN has a route back, so without nqvm's rules it gets through.
    await execIn(host, 'nft', ['flush', 'chain', 'inet', 'nqvm', 'forward']);
    expect(await ping(c, '192.168.77.1')).toBe(true);
    await net.reconcile();
    expect(await ping(c, '192.168.77.1')).toBe(false);
    await stop(c);
    await stop(d);
    await net.removeTap(vmId(3), 0);
    await net.removeTap(vmId(4), 0);
    await net.removeNetwork(ISOLATED);
  });

  it('bridged: a VM gets its address from the LAN’s DHCP and nqvm finds it without asking the guest', async () => {
    const { bridge } = await net.ensureNetwork({ id: BRIDGED, kind: 'bridged', uplink: 'up1' });
    const tapE = await net.ensureTap({ vmId: vmId(5), nicIndex: 0, networkId: BRIDGED });
    expect(tapE.bridge).toBe(bridge);
    const e = await boot(vmId(5), [tapE], 'nqvm.dhcp=1');
    const shown = /inet (192\.168\.79\.\d+)\/24/.exec((await sh(e, 'ip -4 addr show dev eth0')).out)?.[1];
    expect(shown).toBeDefined();
    const leased = parseLeases(await readFile(lanLeases, 'utf8')).get(tapE.mac);
    expect(leased).toBe(shown);
    const found = await net.discoverAddresses(vmId(5), 0);
    expect(found.sources).toEqual(expect.arrayContaining([{ ip: shown, source: 'dhcp-snoop' }]));
    expect(found.addresses[0]).toBe(shown);
    expect(await ping(e, '192.168.79.1')).toBe(true);
    // The host kept its own address on the LAN, now on the bridge.
    expect((await runIn(host, 'busybox', ['ping', '-c', '1', '-W', '2', '192.168.79.1'])).code).toBe(0);
    await stop(e);
    await net.removeTap(vmId(5), 0);
    await net.removeNetwork(BRIDGED);
  });
});
