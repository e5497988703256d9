import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { AgentNetwork, AgentNic } from '@nqvm/api';
import type { GuestAgentClient } from '@nqvm/guest-agent';
import {
  BOOT_MARKER,
  ensureContainerInit,
  ensureTestGuest,
  execIn,
  guestBootArgs,
  httpGet,
  NetnsLab,
  runIn,
  type TestGuest,
  writeBusyboxRootfs,
} from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectGuest, GUEST_CID, guestAgentToken } from '../agent/guest-channel';
import { readdressGuest } from '../agent/guest-readdress';
import { imageRef, vmCommand } from '../agent/testing';
import { containerBootArgs } from '../agent/vm-boot';
import { networkBootArgs } from '../agent/vm-network';
import { writeContainerDrive } from '../containers/container-run';
import { QemuDriver } from '../drivers/qemu/qemu-driver';
import type { QemuVm } from '../drivers/qemu/qemu-vm';
import type { DiskSpec } from '../drivers/types';
import { writeVfatImage } from '../guest-config/config-drive';
import { GUEST_TOKEN_DRIVE_FILE } from '../guest-config/guest-config';
import { dnsmasqFiles, parseLeases } from './dnsmasq';
import { type EnsuredTap, HostNetwork, nicSpec } from './host-network';

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
let stateDir: string;
let vmRoot: string;
const running = new Set<QemuVm>();
const figures: Record<string, string> = {};

/** As the manager sends its default network: no `dhcp` (nqvm serves the reservations anyway). */
const natSpec = {
  id: NAT,
  kind: 'nat' as const,
  cidr: '10.77.0.0/24',
  gateway: '10.77.0.1',
  dns: true,
  dnsServers: ['192.168.77.1'],
};
const isolatedSpec = { id: ISOLATED, kind: 'isolated' as const, cidr: '10.78.0.0/24', gateway: '10.78.0.1' };
const bridgedSpec = { id: BRIDGED, kind: 'bridged' as const, uplink: 'up1' };

interface BootOptions {
  disks?: DiskSpec[];
  /** The NIC index of each TAP; default: its place. */
  nicIndexes?: number[];
  /** Another guest (the container init) with its whole command line, and what it prints once up. */
  guest?: { kernel: string; initrd: string; bootArgs: string; marker: string | RegExp };
}

async function boot(
  id: string,
  taps: Parameters<typeof nicSpec>[0][],
  cmdline: string,
  opts: BootOptions = {},
): Promise<QemuVm> {
  const t0 = performance.now();
  const vm = await driver.boot({
    id,
    generation: 1,
    vcpu: 1,
    memMib: 128,
    kernelPath: opts.guest?.kernel ?? guestImage.kernel,
    initrdPath: opts.guest?.initrd ?? guestImage.initrd,
    bootArgs: opts.guest?.bootArgs ?? guestBootArgs(cmdline),
    disks: opts.disks ?? [],
    nics: taps.map((t, i) => nicSpec(t, opts.nicIndexes?.[i] ?? i)),
    vmDir: path.join(vmRoot, id),
    ...(opts.disks ? { vsockCid: GUEST_CID } : {}),
  });
  running.add(vm);
  await vm.console.waitForOutput(opts.guest?.marker ?? BOOT_MARKER, BOOT_TIMEOUT_MS);
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

/** The guest's IPv4 addresses (with prefix) of the interface that has `mac`, and its name. */
async function addressesOf(vm: QemuVm, mac: string): Promise<{ dev: string; inet: string[] }> {
  const r = await sh(
    vm,
    `for d in /sys/class/net/*; do [ "$(cat $d/address)" = ${mac} ] && echo "DEV=\${d##*/}" && ip -4 addr show dev \${d##*/}; done`,
  );
  const dev = /DEV=(\w+)/.exec(r.out)?.[1] ?? '';
  return { dev, inet: [...r.out.matchAll(/inet (\d+\.\d+\.\d+\.\d+\/\d+)/g)].map((m) => m[1]!) };
}

async function natLeases(): Promise<Map<string, string>> {
  const file = dnsmasqFiles(path.join(stateDir, 'network', 'networks', NAT)).leases;
  return parseLeases(await readFile(file, 'utf8').catch(() => ''));
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
  stateDir = await lab.tempDir();
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

  it('two VMs on a nat network reach each other, the gateway, DNS and the LAN through masquerade; one running only a DHCP client gets its assigned address', async () => {
    await net.ensureNetwork(natSpec);
    const tapA = await net.ensureTap({ vmId: vmId(1), nicIndex: 0, networkId: NAT, ip: '10.77.0.10' });
    const tapB = await net.ensureTap({ vmId: vmId(2), nicIndex: 0, networkId: NAT, ip: '10.77.0.11' });
    a = await boot(vmId(1), [tapA], 'nqvm.ip=10.77.0.10/24 nqvm.gw=10.77.0.1 nqvm.dns=10.77.0.1');
    // B only runs a DHCP client: the network's dnsmasq hands out the address nqvm assigned to
    // its MAC, though the network does not ask for `dhcp` (nqvm up's default network does not).
    b = await boot(vmId(2), [tapB], 'nqvm.dhcp=1');
    expect((await natLeases()).get(tapB.mac)).toBe('10.77.0.11');
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

  it('isolated: a VM reaches its neighbour but not the LAN; one running only a DHCP client gets its assigned address and no route out', async () => {
    await net.ensureNetwork(isolatedSpec);
    const tapC = await net.ensureTap({ vmId: vmId(3), nicIndex: 0, networkId: ISOLATED, ip: '10.78.0.10' });
    const tapD = await net.ensureTap({ vmId: vmId(4), nicIndex: 0, networkId: ISOLATED, ip: '10.78.0.11' });
    const c = await boot(vmId(3), [tapC], 'nqvm.ip=10.78.0.10/24 nqvm.gw=10.78.0.1');
    const d = await boot(vmId(4), [tapD], 'nqvm.dhcp=1');
    expect((await sh(d, 'ip -4 addr show dev eth0')).out).toContain('inet 10.78.0.11/24');
    expect((await sh(d, 'ip route')).out).not.toContain('default');
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
  });

  describe('one VM on a nat, an isolated and a bridged network', () => {
    const id = vmId(6);
    let f: QemuVm;
    let taps: EnsuredTap[];
    let nics: AgentNic[];
    let guest: GuestAgentClient;

    const agentNetwork = (spec: typeof natSpec | typeof isolatedSpec | typeof bridgedSpec): AgentNetwork => ({
      dhcp: false,
      dns: false,
      ...spec,
    });

    it('configures each NIC the way its network says, from the agent’s boot arguments: the assigned address on nat and isolated, the LAN’s DHCP on bridged', async () => {
      await net.ensureNetwork(natSpec);
      await net.ensureNetwork(isolatedSpec);
      const { bridge } = await net.ensureNetwork(bridgedSpec);
      taps = [
        await net.ensureTap({ vmId: id, nicIndex: 0, networkId: NAT, ip: '10.77.0.20' }),
        await net.ensureTap({ vmId: id, nicIndex: 1, networkId: ISOLATED, ip: '10.78.0.20' }),
        await net.ensureTap({ vmId: id, nicIndex: 2, networkId: BRIDGED }),
      ];
      expect(taps[2]!.bridge).toBe(bridge);
      // What the manager sends for these NICs (vms/agent-networking.ts).
      nics = [
        {
          nic_index: 0,
          mac: taps[0]!.mac,
          ip: '10.77.0.20',
          prefix_len: 24,
          gateway: '10.77.0.1',
          dns: ['10.77.0.1'],
          network: agentNetwork(natSpec),
        },
        {
          nic_index: 1,
          mac: taps[1]!.mac,
          ip: '10.78.0.20',
          prefix_len: 24,
          gateway: null,
          dns: [],
          network: agentNetwork(isolatedSpec),
        },
        {
          nic_index: 2,
          mac: taps[2]!.mac,
          ip: null,
          prefix_len: null,
          gateway: null,
          dns: [],
          network: agentNetwork(bridgedSpec),
        },
      ];
      // A config drive with the guest agent's token, for the re-addressing below.
      const vmDir = path.join(vmRoot, id);
      const token = await guestAgentToken(vmDir);
      const cidata = path.join(vmDir, 'cidata.img');
      await writeVfatImage(cidata, 'CIDATA', [[GUEST_TOKEN_DRIVE_FILE, token]]);
      // The bridged NIC comes first on the bus: the guest finds each NIC by its MAC, not its place.
      f = await boot(id, [taps[2]!, taps[0]!, taps[1]!], networkBootArgs({ nics }), {
        nicIndexes: [2, 0, 1],
        disks: [{ id: 'cidata', path: cidata, format: 'raw', readOnly: true, isRoot: false }],
      });
      expect((await addressesOf(f, taps[0]!.mac)).inet).toEqual(['10.77.0.20/24']);
      expect((await addressesOf(f, taps[1]!.mac)).inet).toEqual(['10.78.0.20/24']);
      const onLan = (await addressesOf(f, taps[2]!.mac)).inet;
      expect(onLan).toEqual([expect.stringMatching(/^192\.168\.79\.\d+\/24$/)]);
      const shown = onLan[0]!.split('/')[0];
      expect(parseLeases(await readFile(lanLeases, 'utf8')).get(taps[2]!.mac)).toBe(shown);
      const found = await net.discoverAddresses(id, 2);
      expect(found.sources).toEqual(expect.arrayContaining([{ ip: shown, source: 'dhcp-snoop' }]));
      expect(found.addresses[0]).toBe(shown);
      // The way out is the nat NIC's gateway, the first NIC's.
      expect((await sh(f, 'ip route show default')).out).toContain('default via 10.77.0.1');
      expect(await ping(f, '10.77.0.1')).toBe(true);
      expect(await ping(f, '10.78.0.1')).toBe(true);
      expect(await ping(f, '192.168.79.1')).toBe(true);
      expect(await fetch(f, 'http://192.168.77.1:8080/')).toBe('from the lan');
      // The host kept its own address on the LAN, now on the bridge.
      expect((await runIn(host, 'busybox', ['ping', '-c', '1', '-W', '2', '192.168.79.1'])).code).toBe(0);
      guest = await connectGuest(f.record, token, BOOT_TIMEOUT_MS);
    });

    it('re-addressed as a clone, its DHCP clients ask again with the new MACs: their leases are the clone’s reservations', async () => {
      // A guest that takes its nat address by DHCP (as images without nqvm's init do).
      const natDev = (await addressesOf(f, taps[0]!.mac)).dev;
      await sh(
        f,
        `ip -4 addr flush dev ${natDev}; udhcpc -i ${natDev} -b -t 5 -T 1 -p /run/udhcpc.${natDev}.pid >/dev/null 2>&1`,
      );
      expect((await natLeases()).get(taps[0]!.mac)).toBe('10.77.0.20');
      // The clone's identity, as its host gives it before the restore: its TAPs admit only it.
      const clone = [
        { ...nics[0]!, mac: '02:c1:00:00:00:10', ip: '10.77.0.21' },
        { ...nics[1]!, mac: '02:c1:00:00:00:11', ip: '10.78.0.21' },
        { ...nics[2]!, mac: '02:c1:00:00:00:12' },
      ];
      for (const n of clone)
        await net.ensureTap({
          vmId: id,
          nicIndex: n.nic_index,
          networkId: n.network.id,
          mac: n.mac,
          ...(n.ip ? { ip: n.ip } : {}),
        });
      const t0 = performance.now();
      const steps = await readdressGuest(guest, nics, clone, 'clone-f');
      figures.readdressMs = (performance.now() - t0).toFixed(0);
      expect(steps.map((s) => s.to)).toEqual(clone.map((n) => ({ mac: n.mac, ip: n.ip })));
      expect((await addressesOf(f, clone[0]!.mac)).inet).toEqual(['10.77.0.21/24']);
      expect((await addressesOf(f, clone[1]!.mac)).inet).toEqual(['10.78.0.21/24']);
      // The restarted clients asked with the clone's MACs and got the clone's reservation
      // (nat) and a lease of the LAN's (bridged).
      expect((await natLeases()).get(clone[0]!.mac)).toBe('10.77.0.21');
      const lanLease = parseLeases(await readFile(lanLeases, 'utf8')).get(clone[2]!.mac);
      expect(lanLease).toMatch(/^192\.168\.79\.\d+$/);
      expect((await addressesOf(f, clone[2]!.mac)).inet).toEqual([`${lanLease}/24`]);
      expect(await ping(f, '10.77.0.1')).toBe(true);
      expect(await ping(f, '10.78.0.1')).toBe(true);
      expect(await ping(f, '192.168.79.1')).toBe(true);
      expect((await sh(f, 'hostname')).out).toContain('clone-f');
      guest.close();
      await stop(f);
      for (const n of clone) await net.removeTap(id, n.nic_index);
    });

    it('a container configures each NIC as well: the assigned address on nat, the LAN’s DHCP on bridged', async () => {
      const ctr = vmId(7);
      const ctrTaps = [
        await net.ensureTap({ vmId: ctr, nicIndex: 0, networkId: NAT, ip: '10.77.0.30' }),
        await net.ensureTap({ vmId: ctr, nicIndex: 1, networkId: BRIDGED }),
      ];
      const init = await ensureContainerInit();
      const vmDir = path.join(vmRoot, ctr);
      await mkdir(vmDir, { recursive: true });
      const rootfs = path.join(vmDir, 'rootfs.ext4');
      await writeBusyboxRootfs(rootfs);
      const report =
        'for d in /sys/class/net/eth*; do echo "NIC $(cat $d/address) $(ip -4 addr show dev $(basename $d) | grep -o "inet [0-9./]*")"; done; echo "DNS $(grep nameserver /etc/resolv.conf)"; echo CTR-NET-DONE';
      const spec = vmCommand(
        1,
        'running',
        { kernel: imageRef(init.kernel), initrd: imageRef(init.initrd), rootfs: imageRef(rootfs) },
        {
          spec: {
            name: 'ctr',
            nics: [
              { ...nics[0]!, mac: ctrTaps[0]!.mac, ip: '10.77.0.30' },
              { ...nics[2]!, nic_index: 1, mac: ctrTaps[1]!.mac },
            ],
            container: {
              argv: ['/bin/sh', '-c', `(${report}) > /dev/console; sleep 600`],
              env: ['PATH=/bin:/sbin:/usr/bin'],
              working_dir: null,
              user: null,
            },
          },
        },
      ).spec;
      const drive = await writeContainerDrive(vmDir, spec.container!, await guestAgentToken(vmDir));
      const c = await boot(ctr, ctrTaps, '', {
        disks: [
          { id: 'root', path: rootfs, format: 'raw', readOnly: false, isRoot: true },
          { id: 'ctr', path: drive, format: 'raw', readOnly: true, isRoot: false },
        ],
        guest: {
          kernel: init.kernel,
          initrd: init.initrd,
          bootArgs: containerBootArgs('qemu', spec),
          marker: 'CTR-NET-DONE',
        },
      });
      const out = c.console.tail(c.console.totalBytes).toString('latin1');
      expect(out).toContain(`NIC ${ctrTaps[0]!.mac} inet 10.77.0.30/24`);
      const lease = parseLeases(await readFile(lanLeases, 'utf8')).get(ctrTaps[1]!.mac);
      expect(lease).toMatch(/^192\.168\.79\.\d+$/);
      expect(out).toContain(`NIC ${ctrTaps[1]!.mac} inet ${lease}/24`);
      // The nat network's resolver, not the LAN's lease's.
      expect(out).toContain('DNS nameserver 10.77.0.1');
      await stop(c);
      for (const t of [0, 1]) await net.removeTap(ctr, t);
      await net.removeNetwork(ISOLATED);
      await net.removeNetwork(BRIDGED);
    });
  });
});
