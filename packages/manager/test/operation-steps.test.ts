/**
 * A start's operation says where its time went: the boot steps the VM's host timed, in order,
 * once it succeeded; an operation that boots nothing (a stop) has none. On both datastores,
 * against a stand-in agent that reports steps as a real agent does.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Operation } from '@nqvm/api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerPathImage } from '../src/images/images';
import { client, DATASTORES, startManager, type TestManager } from './harness';
import { StandInAgent } from './stand-in-agent';

const STEPS = [
  { name: 'prepare-disk', ms: 12.5 },
  { name: 'boot-vmm', ms: 41.2 },
  { name: 'boot-vmm.spawn-vmm', ms: 30.1 },
  { name: 'persist-run-record', ms: 0.4 },
];

describe.each(DATASTORES)('operation steps on %s', (kind) => {
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
      `steps-${kind}`,
    );
    host.bootSteps = STEPS;
  });
  afterAll(async () => {
    await host?.close();
    await t?.close();
  });

  const settled = async (opId: string) => {
    for (;;) {
      const r = await api.get(`/api/v1/operations/${opId}?wait=10`);
      expect(r.status, r.text).toBe(200);
      const op = Operation.strict().parse(r.body);
      if (op.status !== 'queued' && op.status !== 'running') return op;
    }
  };

  it('a create, a stop and a start: the boots carry their steps, the stop none', async () => {
    const made = await api.post('/api/v1/vms', { name: 'steps-a', networks: [] });
    expect(made.status, made.text).toBe(202);
    expect(made.body.operation.steps).toEqual([]);
    const id = made.body.vm.id as string;
    const created = await settled(made.body.operation.id);
    expect(created).toMatchObject({ status: 'succeeded', steps: STEPS });

    const stop = await api.post(`/api/v1/vms/${id}/stop`, { force: true });
    expect(stop.status, stop.text).toBe(202);
    expect(await settled(stop.body.operation.id)).toMatchObject({ status: 'succeeded', steps: [] });

    const start = await api.post(`/api/v1/vms/${id}/start`);
    expect(start.status, start.text).toBe(202);
    expect(await settled(start.body.operation.id)).toMatchObject({ status: 'succeeded', steps: STEPS });
    const listed = await api.get(`/api/v1/operations?target_id=${id}&kind=vm.start`);
    expect(listed.body.items[0]).toMatchObject({ id: start.body.operation.id, steps: STEPS });
  });
});
