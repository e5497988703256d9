/**
 * End to end, networking through the whole stack: a real manager and a real `nqvm agent`
 * process whose VM networks and QEMU live in a network namespace this test makes ("host"),
 * routed to a "lan" namespace. A NAT network made through the API, two VMs on it with
 * addresses from the manager's IPAM; they ping each other and the gateway (a guest rootfs
 * variant pings from inittab and prints the results on the console), a port forward made
 * through the API reaches a web server in a guest from the LAN, and after the bridge is
 * deleted by hand and the agent restarted, the agent's reconcile brings it back.
 * Run under `flock /tmp/nqvm-vm.lock`.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { registerPathImage } from '@nqvm/manager/images/images';
import { execIn, httpGet, NetnsLab } from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestManager } from '../../manager/test/harness';
import {
  type AgentProcess,
  killVmProcesses,
  rootfsVariant,
  spawnAgent,
  startAgent,
  startStack,
  stopAgent,
  waitFor,
} from './stack';

const CIDR = '10.99.0.0/24';
const GATEWAY = '10.99.0.1';
const TARGETS = [GATEWAY, '10.99.0.2', '10.99.0.3'];
/** Pings every target every 2 s, and serves a page on port 80. */
const PINGER = [
  `::once:/bin/sh -c 'while true; do for t in ${TARGETS.join(' ')}; do if ping -c 1 -W 2 $t >/dev/null 2>&1; then echo PING-OK-$t; else echo PING-FAIL-$t; fi; done; sleep 2; done'`,
  `::once:/bin/sh -c 'mkdir -p /www && echo hello-from-guest > /www/index.html && httpd -p 80 -h /www'`,
];

describe('networking through the stack (real guests in a network namespace)', () => {
  let lab: NetnsLab;
  let hostNs: string;
  let lanNs: string;
  let t: TestManager;
  let api: Awaited<ReturnType<typeof startStack>>['api'];
  let agent: AgentProcess;
  let work: string;
  const created: string[] = [];

  const consoleOf = async (id: string) =>
    (
      await fetch(`${t.url}/api/v1/vms/${id}/console?tail=262144`, {
        headers: { authorization: `Bearer ${t.adminToken}` },
      })
    ).text();
  const count = (text: string, needle: string) => text.split(needle).length - 1;
  const bridges = async () =>
    (
      JSON.parse(await execIn(hostNs, 'ip', ['-json', 'link', 'show', 'type', 'bridge'])) as Array<{
        ifname: string;
      }>
    )
      .map((l) => l.ifname)
      .filter((n) => n.startsWith('nqb'));

  beforeAll(async () => {
    lab = new NetnsLab();
    hostNs = await lab.namespace('host');
    lanNs = await lab.namespace('lan');
    await lab.veth(
      { ns: hostNs, name: 'up0', address: '192.168.88.2/24' },
      { ns: lanNs, name: 'lan0', address: '192.168.88.1/24' },
    );
    await execIn(hostNs, 'ip', ['route', 'add', 'default', 'via', '192.168.88.1']);
    const s = await startStack();
    t = s.t;
    api = s.api;
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-e2e-net-'));
    const rootfs = rootfsVariant(s.guest.rootfs, path.join(work, 'pinger.ext4'), { inittab: PINGER });
    await registerPathImage(t.manager.services.store, { name: 'pinger', kind: 'rootfs', path: rootfs });
    agent = await startAgent(t, 'net-host', { NQVM_AGENT_NETNS: hostNs });
    await agent.hostId();
  }, 600_000);

  afterAll(async () => {
    killVmProcesses(created);
    if (agent) await stopAgent(agent, 'SIGKILL');
    await lab?.cleanup();
    await t?.close();
    if (agent) fs.rmSync(agent.stateDir, { recursive: true, force: true });
    if (work) fs.rmSync(work, { recursive: true, force: true });
  }, 60_000);

  it('two VMs on a NAT network ping each other and the gateway; a forward reaches a guest, a port the host listens on is refused at once; a lost bridge comes back; delete cleans up', async () => {
    const net = await api.post('/api/v1/networks', { name: 'e2e-nat', kind: 'nat', cidr: CIDR });
    expect(net.status, net.text).toBe(201);
    const image = (await api.get('/api/v1/images?limit=500')).body.items.find(
      (i: { name: string }) => i.name === 'pinger',
    );
    const vms: Array<{ id: string; ip: string }> = [];
    for (const name of ['net-a', 'net-b']) {
      const r = await api.post('/api/v1/vms', {
        name,
        mem_mib: 128,
        vmm: 'qemu',
        rootfs_image_id: image.id,
        networks: [{ network_id: net.body.id }],
      });
      expect(r.status, r.text).toBe(202);
      created.push(r.body.vm.id);
      vms.push({ id: r.body.vm.id, ip: r.body.vm.networks[0].ip });
    }
    expect(vms.map((v) => v.ip)).toEqual(['10.99.0.2', '10.99.0.3']);
    for (const vm of vms)
      await waitFor(
        async () => (await api.get(`/api/v1/vms/${vm.id}`)).body.state === 'running',
        120_000,
        () => `VM ${vm.id} not running:\n${agent.output()}`,
      );
    const started = Date.now();
    for (const [i, vm] of vms.entries()) {
      const other = vms[1 - i]!.ip;
      let text = '';
      await waitFor(
        async () => {
          text = await consoleOf(vm.id);
          return text.includes(`PING-OK-${GATEWAY}`) && text.includes(`PING-OK-${other}`);
        },
        120_000,
        () => `VM ${vm.ip} did not reach ${GATEWAY} and ${other}:\n${text.slice(0, 6000)}\n${agent.output()}`,
      );
    }
    console.log(`running to both VMs pinging: ${((Date.now() - started) / 1000).toFixed(1)} s`);

    const pf = await api.post(`/api/v1/vms/${vms[0]!.id}/port-forwards`, { host_port: 8080, guest_port: 80 });
    expect(pf.status, pf.text).toBe(201);
    const page = await waitFor(
      async () => httpGet(lanNs, 'http://192.168.88.2:8080/', 3_000),
      60_000,
      () => `the forward never answered:\n${agent.output()}`,
    );
    expect(page).toBe('hello-from-guest\n');

    // A port the host already listens on is refused when the forward is made: the manager asks
    // the VM's host (its agent reads the host's socket tables, here inside the host's namespace).
    await lab.serveHttp(hostNs, 9099, { 'index.html': 'the host own server\n' });
    const taken = await api.post(`/api/v1/vms/${vms[1]!.id}/port-forwards`, {
      host_port: 9099,
      guest_port: 80,
    });
    expect(taken.status, taken.text).toBe(409);
    expect(taken.body.error).toMatchObject({ code: 'PORT_IN_USE' });
    expect(taken.body.error.message).toContain('tcp port 9099 is taken on host net-host');
    expect((await api.get(`/api/v1/vms/${vms[1]!.id}/port-forwards`)).body.items).toEqual([]);
    expect(await httpGet(lanNs, 'http://192.168.88.2:9099/', 3_000)).toBe('the host own server\n');

    // The bridge deleted by hand: the agent restores it (and the TAPs on it) when it starts.
    const [bridge] = await bridges();
    expect(bridge).toBeDefined();
    await stopAgent(agent);
    await execIn(hostNs, 'ip', ['link', 'del', bridge!]);
    expect(await bridges()).toEqual([]);
    agent = spawnAgent(t, 'net-host', agent.stateDir, agent.bind, undefined, { NQVM_AGENT_NETNS: hostNs });
    await agent.hostId();
    expect(
      await waitFor(
        async () => ((await bridges()).length ? bridges() : null),
        30_000,
        () => agent.output(),
      ),
    ).toEqual([bridge]);
    const mark = `PING-OK-${vms[1]!.ip}`;
    const pings = count(await consoleOf(vms[0]!.id), mark);
    let text = '';
    await waitFor(
      async () => {
        text = await consoleOf(vms[0]!.id);
        return count(text, mark) > pings;
      },
      60_000,
      () =>
        `the VMs did not reach each other after the restore (${pings} pings before):\n${text.slice(-1500)}\n${agent.output()}`,
    );
    expect(await httpGet(lanNs, 'http://192.168.88.2:8080/', 3_000)).toBe('hello-from-guest\n');

    // Deleting the VMs takes their TAPs, the forward and (no VM left on it) the bridge.
    for (const vm of vms) expect((await api.del(`/api/v1/vms/${vm.id}?force=true`)).status).toBe(202);
    for (const vm of vms)
      await waitFor(
        async () => (await api.get(`/api/v1/vms/${vm.id}`)).status === 404,
        60_000,
        () => `VM ${vm.id} not deleted:\n${agent.output()}`,
      );
    expect(await bridges()).toEqual([]);
    const links = JSON.parse(await execIn(hostNs, 'ip', ['-json', 'link'])) as Array<{ ifname: string }>;
    expect(links.map((l) => l.ifname).filter((n) => n.startsWith('nqt'))).toEqual([]);
    expect(await httpGet(lanNs, 'http://192.168.88.2:8080/', 2_000)).toBeNull();
    expect((await api.del(`/api/v1/networks/${net.body.id}`)).status).toBe(200);
  }, 600_000);
});
