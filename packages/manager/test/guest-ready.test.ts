/**
 * A running VM is not the same as a guest that is up: the host reports when the guest came up
 * (its guest agent answered, or its console said so), the API shows it on the VM while it runs
 * and forgets it when the VM stops; on both datastores, against a stand-in agent.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Vm } from '@nqvm/api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerPathImage } from '../src/images/images';
import { client, DATASTORES, startManager, type TestManager } from './harness';
import { until } from './helpers';
import { StandInAgent } from './stand-in-agent';

describe.each(DATASTORES)('guest readiness on %s', (kind) => {
  let t: TestManager;
  let api: ReturnType<typeof client>;
  let host: StandInAgent;

  beforeAll(async () => {
    t = await startManager(kind);
    api = client(t.url, t.adminToken);
    const kernel = path.join(t.dataDir, 'vmlinux');
    fs.writeFileSync(kernel, Buffer.alloc(4096, 1));
    await registerPathImage(t.manager.services.store, {
      name: 'k',
      kind: 'kernel',
      path: kernel,
      isDefault: true,
    });
    host = await StandInAgent.join(
      t.url,
      t.adminToken,
      t.manager.services.managerKey.publicKeyPem,
      `ready-${kind}`,
    );
  });
  afterAll(async () => {
    await host?.close();
    await t?.close();
  });

  const vmOf = async (id: string) => Vm.strict().parse((await api.get(`/api/v1/vms/${id}`)).body);

  it('shows running without a guest first, then when and how the guest came up; a stop clears it', async () => {
    const r = await api.post('/api/v1/vms', { name: 'ready-a', networks: [] });
    expect(r.status, r.text).toBe(202);
    const id = r.body.vm.id as string;
    const running = await until('running', async () => {
      const v = await vmOf(id);
      return v.state === 'running' ? v : undefined;
    });
    expect(running).toMatchObject({ guest_ready_at: null, guest_ready_signal: null });

    const at = new Date().toISOString();
    host.vms.set(id, { ...host.vms.get(id)!, guest_ready: { at, signal: 'console' } });
    await host.heartbeat();
    const up = await until('the guest up', async () => {
      const v = await vmOf(id);
      return v.guest_ready_at ? v : undefined;
    });
    expect(up).toMatchObject({ state: 'running', guest_ready_at: at, guest_ready_signal: 'console' });

    const stop = await api.post(`/api/v1/vms/${id}/stop`, { force: true });
    expect(stop.status, stop.text).toBe(202);
    const stopped = await until('stopped', async () => {
      const v = await vmOf(id);
      return v.state === 'stopped' ? v : undefined;
    });
    expect(stopped).toMatchObject({ guest_ready_at: null, guest_ready_signal: null });
  });
});
