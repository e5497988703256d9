/**
 * The interfaces an agent reports, against real kernel links in a namespace this test creates
 * (the agent's NQVM_AGENT_NETNS) and a real manager (SQLite): what the host has is reported
 * (loopback and nqvm's own links left out), the manager makes a bridged network available
 * where its uplink is and refuses one whose uplink no host has, and a link that appears later
 * reaches the manager with the next heartbeat.
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import path from 'node:path';
import type { HostInterface } from '@nqvm/api';
import { execIn, NetnsLab } from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { client, startManager, type TestManager } from '../../../manager/test/harness';
import { loadAgentConfig } from '../config';
import { type Agent, createAgent } from './agent';
import { FakeDriver } from './fake-driver';
import { silentLogger, tempDir } from './testing';

describe('host interfaces in the agent report', () => {
  let t: TestManager;
  let lab: NetnsLab;
  let ns: string;
  let peer: string;
  let agent: Agent;
  const dir = tempDir();

  const reported = async (): Promise<HostInterface[]> =>
    (await client(t.url, t.adminToken).get(`/api/v1/hosts/${agent.hostId}`)).body.capacity.interfaces;

  beforeAll(async () => {
    lab = new NetnsLab();
    ns = await lab.namespace('host');
    peer = await lab.namespace('lan');
    await lab.veth({ ns, name: 'upl0', address: '192.168.91.2/24' }, { ns: peer, name: 'lan0' });
    await execIn(ns, 'ip', ['link', 'add', 'lanbr0', 'type', 'bridge']);
    // Links nqvm made (a TAP named like this agent's, a bridge tagged by another agent) are not offered.
    await execIn(ns, 'ip', ['tuntap', 'add', 'dev', 'nqtaaaaaaaa', 'mode', 'tap']);
    await execIn(ns, 'ip', ['link', 'add', 'zzb1', 'type', 'bridge']);
    await execIn(ns, 'ip', ['link', 'set', 'dev', 'zzb1', 'alias', 'nqvm:zz:network:x']);
    t = await startManager('sqlite', { NQVM_HEARTBEAT_INTERVAL_S: '1' });
    const jt = await client(t.url, t.adminToken).post('/api/v1/join-tokens', { ttl_s: 600 });
    agent = await createAgent(
      loadAgentConfig({
        MANAGER_BASE: t.url,
        NQVM_JOIN_TOKEN: jt.body.token,
        AGENT_BIND: '127.0.0.1:0',
        FC_RUN_DIR: path.join(dir, 'state'),
        NQVM_AGENT_NAME: `ifs-${randomBytes(3).toString('hex')}`,
        NQVM_AGENT_NETNS: ns,
      }),
      { drivers: [new FakeDriver('qemu')], logger: silentLogger },
    );
  });

  afterAll(async () => {
    await agent?.close();
    await t?.close();
    await lab?.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  it('reports the links of its namespace at registration, without loopback and nqvm links', async () => {
    const ifs = await reported();
    expect(ifs).toEqual([
      { name: 'upl0', kind: 'veth', up: true },
      { name: 'lanbr0', kind: 'bridge', up: false },
    ]);
  });

  it('makes a bridged network available on the host with its uplink, and refuses one no host has', async () => {
    const api = client(t.url, t.adminToken);
    const lan = await api.post('/api/v1/networks', { name: 'lan', kind: 'bridged', uplink: 'upl0' });
    expect(lan.status, lan.text).toBe(201);
    expect(lan.body.available_on).toEqual([agent.hostId]);
    const joined = await api.post('/api/v1/networks', { name: 'lanj', kind: 'bridged', bridge: 'lanbr0' });
    expect(joined.status, joined.text).toBe(201);
    const missing = await api.post('/api/v1/networks', { name: 'wan', kind: 'bridged', uplink: 'upl1' });
    expect(missing.status, missing.text).toBe(422);
    expect(missing.body.error.code).toBe('NETWORK_INTERFACE_NOT_FOUND');
    expect(missing.body.error.message).toContain('upl0, lanbr0');

    // The interface appears on the host: the next heartbeat tells the manager.
    await lab.veth({ ns, name: 'upl1' }, { ns: peer, name: 'lan1' });
    await agent.heartbeat();
    expect(await reported()).toContainEqual({ name: 'upl1', kind: 'veth', up: true });
    const now = await api.post('/api/v1/networks', { name: 'wan', kind: 'bridged', uplink: 'upl1' });
    expect(now.status, now.text).toBe(201);
    expect(now.body.available_on).toEqual([agent.hostId]);
  });
});
