/**
 * End to end, containers on a NAT network inside network namespaces this test makes: a real
 * manager and a real `nqvm agent` whose VM networks and QEMU live in a "host" namespace routed
 * to a "lan" one. An OCI image (busybox httpd, built here, served by a real registry on
 * 127.0.0.1) runs as a container with a published port that answers from the LAN through the
 * host's address; it stops and starts again and answers again; a port already taken is refused;
 * a crashing container is restarted by `on-failure`; deleting leaves no VM, forward or TAP.
 */
import {
  buildImageFromEntries,
  busyboxLayer,
  execIn,
  httpGet,
  NetnsLab,
  type OciRegistry,
  pushImage,
  startOciRegistry,
} from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestManager } from '../../manager/test/harness';
import { type AgentProcess, killVmProcesses, startAgent, startStack, stopAgent, waitFor } from './stack';

describe('containers on a network (real guests in a network namespace)', () => {
  let lab: NetnsLab;
  let hostNs: string;
  let lanNs: string;
  let t: TestManager;
  let api: Awaited<ReturnType<typeof startStack>>['api'];
  let agent: AgentProcess;
  let registry: OciRegistry;
  let networkId: string;
  const created: string[] = [];

  const operation = async (id: string) => (await api.get(`/api/v1/operations/${id}?wait=60`)).body;
  const container = async (id: string) => (await api.get(`/api/v1/containers/${id}`)).body;
  const logs = async (id: string) =>
    (
      await fetch(`${t.url}/api/v1/containers/${id}/logs?timestamps=false`, {
        headers: { authorization: `Bearer ${t.adminToken}` },
      })
    ).text();

  beforeAll(async () => {
    lab = new NetnsLab();
    hostNs = await lab.namespace('host');
    lanNs = await lab.namespace('lan');
    await lab.veth(
      { ns: hostNs, name: 'up0', address: '192.168.77.2/24' },
      { ns: lanNs, name: 'lan0', address: '192.168.77.1/24' },
    );
    await execIn(hostNs, 'ip', ['route', 'add', 'default', 'via', '192.168.77.1']);
    registry = await startOciRegistry();
    const layer = {
      entries: [
        ...(await busyboxLayer()),
        { name: 'www/', type: 'directory' as const },
        { name: 'www/index.html', type: 'file' as const, content: 'hello from the container\n' },
      ],
      compression: 'gzip' as const,
    };
    await pushImage(
      { url: registry.url, repository: 'web' },
      'v1',
      await buildImageFromEntries({
        layers: [layer],
        config: {
          Cmd: ['httpd', '-f', '-v', '-p', '80', '-h', '/www'],
          Env: ['PATH=/bin:/sbin:/usr/bin:/usr/sbin'],
        },
      }),
    );
    await pushImage(
      { url: registry.url, repository: 'crasher' },
      'v1',
      await buildImageFromEntries({
        layers: [layer],
        config: { Cmd: ['/bin/sh', '-c', 'echo crashing; exit 2'] },
      }),
    );
    const s = await startStack({}, { containers: true });
    t = s.t;
    api = s.api;
    agent = await startAgent(t, 'ctr-net-host', { NQVM_AGENT_NETNS: hostNs });
    await agent.hostId();
    const net = await api.post('/api/v1/networks', { name: 'ctr-nat', kind: 'nat', cidr: '10.96.0.0/24' });
    expect(net.status, net.text).toBe(201);
    networkId = net.body.id;
  }, 600_000);

  afterAll(async () => {
    killVmProcesses(created);
    if (agent) await stopAgent(agent, 'SIGKILL');
    await lab?.cleanup();
    await t?.close();
    await registry?.stop();
  }, 60_000);

  it('publishes a port that answers from the LAN; stop and start; a taken port is refused; on-failure restarts', async () => {
    const r = await api.post('/api/v1/containers', {
      name: 'web',
      image: `${registry.host}/web:v1`,
      network_id: networkId,
      ports: [{ host_port: 8081, container_port: 80 }],
    });
    expect(r.status, r.text).toBe(202);
    const id = r.body.container.id as string;
    created.push(id);
    const op = await waitFor(
      async () => {
        const o = await operation(r.body.operation.id);
        return o.status === 'queued' || o.status === 'running' ? null : o;
      },
      180_000,
      () => agent.output(),
    );
    expect(op.status, JSON.stringify(op)).toBe('succeeded');
    const running = await container(id);
    expect(running).toMatchObject({ status: 'running', ports: [{ host_port: 8081, container_port: 80 }] });
    expect(running.ip).toMatch(/^10\.96\.0\./);
    const page = await waitFor(
      async () => httpGet(lanNs, 'http://192.168.77.2:8081/', 3_000),
      60_000,
      () => `the published port never answered:\n${agent.output()}`,
    );
    expect(page).toBe('hello from the container\n');
    // httpd -v logs each request on stderr: the container's logs show the LAN's request.
    await waitFor(
      async () => (await logs(id)).includes('192.168.77.1'),
      20_000,
      () => 'no request in the logs',
    );

    // A port another container forwards already: refused, nothing recorded.
    const taken = await api.post('/api/v1/containers', {
      name: 'web2',
      image: `${registry.host}/web:v1`,
      network_id: networkId,
      ports: [{ host_port: 8081, container_port: 80 }],
    });
    expect(taken.status, taken.text).toBe(409);
    expect(taken.body.error.code).toBe('PORT_IN_USE');
    expect((await api.get('/api/v1/containers?name=web2')).body.items).toEqual([]);

    // Stop (SIGTERM to httpd through the guest agent): exited; start again: it answers again.
    const stop = await api.post(`/api/v1/containers/${id}/stop`, { timeout_s: 10 });
    expect(stop.status, stop.text).toBe(202);
    expect((await operation(stop.body.operation.id)).status).toBe('succeeded');
    expect(await container(id)).toMatchObject({ status: 'exited' });
    expect(await httpGet(lanNs, 'http://192.168.77.2:8081/', 2_000)).toBeNull();
    const start = await api.post(`/api/v1/containers/${id}/start`);
    expect(start.status, start.text).toBe(202);
    expect((await operation(start.body.operation.id)).status).toBe('succeeded');
    expect(
      await waitFor(
        async () => httpGet(lanNs, 'http://192.168.77.2:8081/', 3_000),
        60_000,
        () => agent.output(),
      ),
    ).toBe('hello from the container\n');

    // on-failure: a process that exits 2 is started again, and again.
    const c = await api.post('/api/v1/containers', {
      name: 'crasher',
      image: `${registry.host}/crasher:v1`,
      network_id: networkId,
      restart_policy: 'on-failure',
    });
    expect(c.status, c.text).toBe(202);
    created.push(c.body.container.id);
    const restarted = await waitFor(
      async () => {
        const got = await container(c.body.container.id);
        return got.restart_count >= 2 ? got : null;
      },
      240_000,
      () => `no restarts:\n${agent.output()}`,
    );
    expect(restarted.exit_code === null || restarted.exit_code === 2).toBe(true);
    expect((await logs(c.body.container.id)).split('crashing').length - 1).toBeGreaterThanOrEqual(2);

    // Deleting takes the VMs, the forward and the TAPs.
    for (const cid of created)
      expect((await api.del(`/api/v1/containers/${cid}?force=true`)).status).toBe(202);
    for (const cid of created)
      await waitFor(
        async () => (await api.get(`/api/v1/vms/${cid}`)).status === 404,
        60_000,
        () => `container VM ${cid} not deleted:\n${agent.output()}`,
      );
    expect((await api.get('/api/v1/containers')).body.items).toEqual([]);
    expect(await httpGet(lanNs, 'http://192.168.77.2:8081/', 2_000)).toBeNull();
    const links = JSON.parse(await execIn(hostNs, 'ip', ['-json', 'link'])) as Array<{ ifname: string }>;
    expect(links.map((l) => l.ifname).filter((n) => n.startsWith('nqt'))).toEqual([]);
  }, 900_000);
});
