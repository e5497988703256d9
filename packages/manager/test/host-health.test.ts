/**
 * A host that stops heartbeating, on both datastores: its VMs show `unknown` (never `stopped`),
 * and a VM deleted meanwhile stays `deleting` through the health sweeps, so the host deletes it
 * once it is back (the sweep used to turn `deleting` into `unknown`, and the next report into
 * `running`: the delete was lost and its operation never ended).
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerPathImage } from '../src/images/images';
import { client, DATASTORES, startManager, type TestManager } from './harness';
import { SseClient, until } from './helpers';
import { StandInAgent } from './stand-in-agent';

describe.concurrent.each(DATASTORES)('host health on %s', (kind) => {
  let t: TestManager;
  let api: ReturnType<typeof client>;
  let agent: StandInAgent;

  beforeAll(async () => {
    t = await startManager(kind, { NQVM_HEARTBEAT_INTERVAL_S: '1' });
    api = client(t.url, t.adminToken);
    const kernel = path.join(t.dataDir, 'vmlinux');
    fs.writeFileSync(kernel, Buffer.alloc(4096, 1));
    await registerPathImage(t.manager.services.store, {
      name: 'k',
      kind: 'kernel',
      path: kernel,
      isDefault: true,
    });
    agent = await StandInAgent.join(
      t.url,
      t.adminToken,
      t.manager.services.managerKey.publicKeyPem,
      `health-${kind}`,
    );
  });
  afterAll(async () => {
    await agent?.close();
    await t?.close();
  });

  const vm = async (id: string) => (await api.get(`/api/v1/vms/${id}`)).body;

  it('keeps a delete made while the host is away, and finishes it when the host is back', async () => {
    const r = await api.post('/api/v1/vms', { name: 'away-1', networks: [] });
    expect(r.status, r.text).toBe(202);
    const id = r.body.vm.id as string;
    await until('running', async () => (await vm(id)).state === 'running');

    const resume = await agent.silence();
    const del = await api.del(`/api/v1/vms/${id}?force=true`);
    expect(del.status, del.text).toBe(202);
    // The host goes quiet right after: its health sweep comes while the VM is deleting.
    await until(
      'the host unreachable',
      async () => (await api.get(`/api/v1/hosts/${agent.hostId}`)).body.status !== 'ready',
    );
    await new Promise((r) => setTimeout(r, 1_000));
    expect(await vm(id)).toMatchObject({ state: 'deleting' });

    resume();
    await until('the VM gone', async () => (await api.get(`/api/v1/vms/${id}`)).status === 404);
    const op = (await api.get(`/api/v1/operations/${del.body.operation.id}?wait=30`)).body;
    expect(op.status).toBe('succeeded');
    expect(agent.calls.some((c) => c.method === 'DELETE' && c.path === `/v1/vms/${id}`)).toBe(true);
  });
});

describe.concurrent.each(DATASTORES)('heartbeats on the event stream on %s', (kind) => {
  let t: TestManager;
  let agent: StandInAgent;

  beforeAll(async () => {
    t = await startManager(kind, { NQVM_HEARTBEAT_INTERVAL_S: '1' });
    agent = await StandInAgent.join(
      t.url,
      t.adminToken,
      t.manager.services.managerKey.publicKeyPem,
      `beat-${kind}`,
    );
  });
  afterAll(async () => {
    await agent?.close();
    await t?.close();
  });

  it('takes a force stop while a graceful shutdown is under way', async () => {
    const api = client(t.url, t.adminToken);
    const kernel = path.join(t.dataDir, 'vmlinux');
    fs.writeFileSync(kernel, Buffer.alloc(4096, 1));
    await registerPathImage(t.manager.services.store, {
      name: 'k',
      kind: 'kernel',
      path: kernel,
      isDefault: true,
    });
    const r = await api.post('/api/v1/vms', { name: 'slow-stop', networks: [] });
    expect(r.status, r.text).toBe(202);
    const id = r.body.vm.id as string;
    await until('running', async () => (await api.get(`/api/v1/vms/${id}`)).body.state === 'running');
    // As the host reports a guest that is taking its time to power off (no beat overwrites it).
    const resume = await agent.silence();
    await t.manager.services.vms.write(id, { state: 'stopping' });
    const force = await api.post(`/api/v1/vms/${id}/stop`, { force: true });
    resume();
    expect(force.status, force.text).toBe(202);
    const op = (await api.get(`/api/v1/operations/${force.body.operation.id}?wait=30`)).body;
    expect(op.status).toBe('succeeded');
    expect((await api.get(`/api/v1/vms/${id}`)).body.state).toBe('stopped');
  });

  it('publishes every heartbeat as host.updated with its time, so a UI needs no polling', async () => {
    const sse = await SseClient.open(t.url, { authorization: `Bearer ${t.adminToken}` });
    try {
      // No VM, same status and capacity: only the beats (every 500 ms) change the host.
      const beats = new Set<string>();
      await sse.waitFor((e) => {
        if (e.event === 'host.updated' && e.data.id === agent.hostId) beats.add(e.data.last_heartbeat_at);
        return beats.size >= 3;
      }, 5_000);
      expect([...beats].every((at) => !Number.isNaN(Date.parse(at)))).toBe(true);
    } finally {
      sse.close();
    }
  });
});
