/**
 * One source of truth for capacity, on both datastores against stand-in agents: the hosts API
 * reports what the scheduler places against (vCPU = cores x NQVM_VCPU_OVERCOMMIT, memory and
 * disk never overcommitted, each VM's whole disk counted, stopped VMs keeping their share); a
 * create no host can fit is refused at admission with 409 NO_CAPACITY naming what is short (the
 * same figures), and changes nothing; with no host taking VMs at all, a create still waits.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Host, type Operation, type Vm } from '@nqvm/api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerPathImage } from '../src/images/images';
import { client, DATASTORES, startManager, type TestManager } from './harness';
import { expectError, until } from './helpers';
import { StandInAgent } from './stand-in-agent';

const MiB = 1024 * 1024;
const StrictHost = Host.strict();

describe.each(DATASTORES)('capacity and admission on %s', (kind) => {
  let t: TestManager;
  let api: ReturnType<typeof client>;
  let hv: StandInAgent;

  beforeAll(async () => {
    t = await startManager(kind, { NQVM_VCPU_OVERCOMMIT: '2' });
    api = client(t.url, t.adminToken);
    for (const [image, bytes] of [
      ['kernel', 4096],
      // Sparse: a VM without disk_size_mib takes a disk of this size.
      ['rootfs', 300 * MiB],
    ] as const) {
      const file = path.join(t.dataDir, image);
      fs.closeSync(fs.openSync(file, 'w'));
      fs.truncateSync(file, bytes);
      await registerPathImage(t.manager.services.store, {
        name: image,
        kind: image,
        path: file,
        isDefault: true,
      });
    }
    hv = await StandInAgent.join(
      t.url,
      t.adminToken,
      t.manager.services.managerKey.publicKeyPem,
      `cap-${kind}`,
    );
    // Two cores, 4 GiB: with 2x overcommit the scheduler places up to 4 vCPU here.
    Object.assign(hv.capacity, { vcpu: 2, mem_mib: 4096, disk_mib: 100_000 });
    await hv.heartbeat();
  });
  afterAll(async () => {
    await hv?.close();
    await t?.close();
  });

  const db = () => t.manager.services.store.db;
  const host = async () => {
    const r = await api.get(`/api/v1/hosts/${hv.hostId}`);
    expect(r.status, r.text).toBe(200);
    return StrictHost.parse(r.body);
  };
  const waitOp = (id: string) =>
    until(`operation ${id} to finish`, async () => {
      const op = (await api.get(`/api/v1/operations/${id}`)).body as Operation;
      return ['succeeded', 'failed', 'cancelled'].includes(op.status) ? op : undefined;
    });
  const runningVm = async (name: string, body: Record<string, unknown> = {}): Promise<Vm> => {
    const r = await api.post('/api/v1/vms', { name, vcpu: 1, mem_mib: 256, networks: [], ...body });
    expect(r.status, r.text).toBe(202);
    expect((await waitOp(r.body.operation.id)).status).toBe('succeeded');
    return (await api.get(`/api/v1/vms/${r.body.vm.id}`)).body;
  };
  const act = async (id: string, action: string) => {
    const r = await api.post(`/api/v1/vms/${id}/${action}`, {});
    expect(r.status, r.text).toBe(202);
    return waitOp(r.body.operation.id);
  };
  const remove = async (id: string) => {
    const r = await api.del(`/api/v1/vms/${id}?force=true`);
    expect(r.status, r.text).toBe(202);
    expect((await waitOp(r.body.operation.id)).status).toBe('succeeded');
  };
  /** What a refused create must leave as it was. */
  const recorded = async () => ({
    vms: await db().selectFrom('vms').selectAll().orderBy('id').execute(),
    operations: await db().selectFrom('operations').selectAll().orderBy('id').execute(),
    hosts: await db()
      .selectFrom('hosts')
      .select(['id', 'alloc_vcpu', 'alloc_mem_mib', 'alloc_disk_mib'])
      .execute(),
  });
  /** "cap-sqlite: 1 vCPU, 3328 MiB, 99100 MiB disk free", from the hosts API's own figures. */
  const freeText = async () => {
    const r = (await host()).resources;
    return `cap-${kind}: ${r.vcpu.free} vCPU, ${r.mem_mib.free} MiB, ${r.disk_mib.free} MiB disk free`;
  };

  const vms: Vm[] = [];

  it("hosts show the scheduler's figures: cores x overcommit, every VM's disk, stopped VMs keeping their share", async () => {
    for (const name of ['c-1', 'c-2', 'c-3']) vms.push(await runningVm(name));
    expect((await host()).resources).toEqual({
      vcpu: { cores: 2, overcommit: 2, capacity: 4, allocated: 3, free: 1 },
      mem_mib: { capacity: 4096, allocated: 768, free: 3328 },
      // Each VM reserves its whole disk: the 300 MiB root image it starts from.
      disk_mib: { capacity: 100_000, allocated: 900, free: 99_100 },
    });
    // A stopped VM keeps its place (and its disk) on the host: its share stays reserved.
    expect((await act(vms[2]!.id, 'stop')).status).toBe('succeeded');
    expect((await host()).resources.vcpu).toEqual({
      cores: 2,
      overcommit: 2,
      capacity: 4,
      allocated: 3,
      free: 1,
    });
    const list = (await api.get('/api/v1/hosts')).body.items.find((h: Host) => h.id === hv.hostId);
    expect(list.resources).toEqual((await host()).resources);
  });

  it('a create no host can fit -> 409 NO_CAPACITY naming the short resource with the same figures; nothing changes', async () => {
    const cases: Array<[Record<string, unknown>, string[], string, string]> = [
      [{ vcpu: 2 }, ['vcpu'], '2 vCPU, 256 MiB memory, 300 MiB disk', 'vCPU'],
      [{ mem_mib: 4000 }, ['mem_mib'], '1 vCPU, 4000 MiB memory, 300 MiB disk', 'memory'],
      [{ disk_size_mib: 99_101 }, ['disk_mib'], '1 vCPU, 256 MiB memory, 99101 MiB disk', 'disk'],
      [
        { vcpu: 3, mem_mib: 4000 },
        ['vcpu', 'mem_mib'],
        '3 vCPU, 4000 MiB memory, 300 MiB disk',
        'vCPU and memory',
      ],
    ];
    const before = await recorded();
    for (const [body, short, figures, words] of cases) {
      const r = await api.post('/api/v1/vms', {
        name: 'too-big',
        vcpu: 1,
        mem_mib: 256,
        networks: [],
        ...body,
      });
      expectError(r, 409, 'NO_CAPACITY');
      expect(r.body.error.message).toBe(
        `no host has room for ${figures}: too little ${words} free on the host (${await freeText()})`,
      );
      expect(r.body.error.details).toMatchObject({ short });
    }
    expect(await recorded()).toEqual(before);
    // Defined only, it takes nothing yet: accepted, and refused only if started as it is.
    const defined = await api.post('/api/v1/vms', {
      name: 'defined-big',
      vcpu: 4,
      start: false,
      networks: [],
    });
    expect(defined.status, defined.text).toBe(202);
    expect(defined.body.vm.state).toBe('stopped');
    await remove(defined.body.vm.id);
  });

  it('deleting a stopped VM gives its share back; a VM that fits now is placed', async () => {
    await remove(vms.pop()!.id);
    expect((await host()).resources.vcpu).toMatchObject({ allocated: 2, free: 2 });
    vms.push(await runningVm('c-big', { vcpu: 2 }));
    expect((await host()).resources.vcpu).toMatchObject({ allocated: 4, free: 0 });
  });

  it('resizing a stopped VM moves its reservation on its host, and is refused when the host lacks the extra', async () => {
    const vm = vms[0]!;
    expect((await act(vm.id, 'stop')).status).toBe('succeeded');
    const grow = await api.patch(`/api/v1/vms/${vm.id}`, { vcpu: 2 });
    expectError(grow, 409, 'NO_CAPACITY');
    expect(grow.body.error.message).toBe(
      `a stopped VM keeps its place on its host: host cap-${kind} has 0 vCPU and 3328 MiB memory free, too little vCPU for the new size`,
    );
    expect(grow.body.error.details).toMatchObject({ short: ['vcpu'] });
    expect((await api.get(`/api/v1/vms/${vm.id}`)).body.vcpu).toBe(1);
    const shrink = await api.patch(`/api/v1/vms/${vm.id}`, { mem_mib: 128 });
    expect(shrink.status, shrink.text).toBe(200);
    expect((await host()).resources.mem_mib).toMatchObject({ allocated: 128 + 256 + 256 });
    expect((await host()).resources.vcpu).toMatchObject({ allocated: 4 });
  });

  it('with no host taking VMs, a create is accepted and waits for one, as before', async () => {
    expect((await api.post(`/api/v1/hosts/${hv.hostId}/cordon`)).status).toBe(200);
    let waiting: { vm: Vm; operation: Operation };
    try {
      const r = await api.post('/api/v1/vms', { name: 'waits', vcpu: 32, networks: [] });
      expect(r.status, r.text).toBe(202);
      waiting = r.body;
      await until('the create to wait for a host', async () => {
        const op = (await api.get(`/api/v1/operations/${waiting.operation.id}`)).body as Operation;
        return ['queued', 'running'].includes(op.status) && op.progress.message.startsWith('waiting')
          ? op
          : undefined;
      });
    } finally {
      await api.post(`/api/v1/hosts/${hv.hostId}/uncordon`);
    }
    // Once a host takes VMs again the scheduler says why this one does not fit.
    const op = await waitOp(waiting.operation.id);
    expect(op).toMatchObject({ status: 'failed', error: { code: 'NO_CAPACITY' } });
    expect(op.error!.message).toContain('too little vCPU free on the host');
    await remove(waiting.vm.id);
  });
});
