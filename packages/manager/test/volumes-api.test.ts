/**
 * Volumes over HTTP on both datastores: CRUD, validation, attach at create, attach and detach
 * on stopped VMs, placement on the host a volume lives on, VM delete keeping or deleting the
 * volumes, and volume deletes carried out by the host's agent (a signature-checking stand-in).
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { type Operation, Vm, Volume } from '@nqvm/api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerPathImage } from '../src/images/images';
import { client, DATASTORES, startManager, type TestManager, userWithRole } from './harness';
import { expectError, failingFields, sleep, until } from './helpers';
import { StandInAgent } from './stand-in-agent';

const StrictVolume = Volume.strict();
const StrictVm = Vm.strict();

// The datastores run side by side; every test within one datastore runs in order.
describe.concurrent.each(DATASTORES)('volumes API on %s', (kind) => {
  let t: TestManager;
  let api: ReturnType<typeof client>;
  /** Host A offers more memory: the scheduler prefers it unless a volume says otherwise. */
  let hostA: StandInAgent;
  let hostB: StandInAgent;

  beforeAll(async () => {
    t = await startManager(kind);
    api = client(t.url, t.adminToken);
    const kernel = path.join(t.dataDir, 'vmlinux');
    fs.writeFileSync(kernel, Buffer.alloc(4096, 1));
    await registerPathImage(t.manager.services.store, {
      name: 'test-kernel',
      kind: 'kernel',
      path: kernel,
      isDefault: true,
    });
    const pem = t.manager.services.managerKey.publicKeyPem;
    hostA = await StandInAgent.join(t.url, t.adminToken, pem, `vol-a-${kind}`, 32_768);
    hostB = await StandInAgent.join(t.url, t.adminToken, pem, `vol-b-${kind}`, 16_384);
  });
  afterAll(async () => {
    await hostA?.close();
    await hostB?.close();
    await t?.close();
  });

  const db = () => t.manager.services.store.db;
  const volumeRow = (id: string) =>
    db().selectFrom('volumes').selectAll().where('id', '=', id).executeTakeFirst();
  const vmRow = (id: string) => db().selectFrom('vms').selectAll().where('id', '=', id).executeTakeFirst();
  const allVolumes = () => db().selectFrom('volumes').selectAll().orderBy('id').execute();
  const hostOf = (id: string) => (id === hostA.hostId ? hostA : hostB);

  const mkVolume = async (body: Record<string, unknown>): Promise<Volume> => {
    const r = await api.post('/api/v1/volumes', body);
    expect(r.status, r.text).toBe(201);
    return StrictVolume.parse(r.body);
  };
  const getVolume = async (id: string): Promise<Volume> => {
    const r = await api.get(`/api/v1/volumes/${id}`);
    expect(r.status, r.text).toBe(200);
    return StrictVolume.parse(r.body);
  };
  const createVm = async (body: Record<string, unknown>): Promise<{ vm: Vm; operation: Operation }> => {
    const r = await api.post('/api/v1/vms', body);
    expect(r.status, r.text).toBe(202);
    StrictVm.parse(r.body.vm);
    return r.body;
  };
  const waitVm = (id: string, state: string) =>
    until(`VM ${id} to be ${state}`, async () => {
      const r = await api.get(`/api/v1/vms/${id}`);
      return r.body?.state === state ? StrictVm.parse(r.body) : undefined;
    });
  const runningVm = async (body: Record<string, unknown>): Promise<Vm> =>
    waitVm((await createVm({ ...body, start: true })).vm.id, 'running');
  const stopVm = async (id: string): Promise<Vm> => {
    const r = await api.post(`/api/v1/vms/${id}/stop`, { force: true });
    expect(r.status, r.text).toBe(202);
    return waitVm(id, 'stopped');
  };
  const deleteVm = async (id: string, query = '') => {
    // A command still in flight would hold the delete back for the reconciler's resend window.
    await until(`VM ${id} to settle`, async () => {
      const row = await vmRow(id);
      return row && (row.host_id === null || row.observed_generation >= row.generation);
    });
    const r = await api.del(`/api/v1/vms/${id}${query}`);
    expect(r.status, r.text).toBe(202);
    await until(`VM ${id} to be gone`, async () => (await vmRow(id)) === undefined);
  };
  const eventsOf = async (id: string) =>
    (
      await db().selectFrom('events').select('type').where('resource_id', '=', id).orderBy('seq').execute()
    ).map((e) => e.type);
  const volumeCalls = (agent: StandInAgent, id: string) =>
    agent.calls.filter((c) => c.path === `/v1/volumes/${id}`).map((c) => c.method);

  describe.sequential('CRUD', () => {
    it('creates with defaults, gets, patches and deletes a volume no host holds', async () => {
      const v = await mkVolume({ name: 'crud-1', size_mib: 1024 });
      expect(v).toMatchObject({
        name: 'crud-1',
        size_mib: 1024,
        filesystem: 'ext4',
        host_id: null,
        vm_id: null,
        status: 'available',
        delete_with_vm: false,
      });
      expect(await getVolume(v.id)).toEqual(v);

      const p = await api.patch(`/api/v1/volumes/${v.id}`, {
        name: 'crud-1b',
        size_mib: 2048,
        delete_with_vm: true,
      });
      expect(p.status, p.text).toBe(200);
      expect(StrictVolume.parse(p.body)).toMatchObject({
        name: 'crud-1b',
        size_mib: 2048,
        delete_with_vm: true,
      });
      expect(await getVolume(v.id)).toEqual(p.body);

      const d = await api.del(`/api/v1/volumes/${v.id}`);
      expect(d.status, d.text).toBe(200);
      expect(d.body).toEqual({ id: v.id, deleted: true });
      expectError(await api.get(`/api/v1/volumes/${v.id}`), 404, 'VOLUME_NOT_FOUND');
      expectError(await api.del(`/api/v1/volumes/${v.id}`), 404, 'VOLUME_NOT_FOUND');
      expect(await volumeRow(v.id)).toBeUndefined();
      // No host held it: no agent was asked.
      expect([...volumeCalls(hostA, v.id), ...volumeCalls(hostB, v.id)]).toEqual([]);
      expect(await eventsOf(v.id)).toEqual(['volume.created', 'volume.updated', 'volume.deleted']);
    });

    it('takes filesystem none and the 4 TiB maximum', async () => {
      const v = await mkVolume({ name: 'crud-raw', size_mib: 4 * 1024 * 1024, filesystem: 'none' });
      expect(v).toMatchObject({ filesystem: 'none', size_mib: 4_194_304 });
      expect((await api.del(`/api/v1/volumes/${v.id}`)).status).toBe(200);
    });

    it('a taken name -> 409 NAME_TAKEN on create and rename, nothing changes', async () => {
      const a = await mkVolume({ name: 'dup-a', size_mib: 8 });
      const b = await mkVolume({ name: 'dup-b', size_mib: 8 });
      const before = await allVolumes();
      const r = await api.post('/api/v1/volumes', { name: 'dup-a', size_mib: 16 });
      expectError(r, 409, 'NAME_TAKEN');
      expect(r.body.error.details).toEqual({ field: 'name' });
      expectError(
        await api.patch(`/api/v1/volumes/${b.id}`, { name: 'dup-a', size_mib: 32 }),
        409,
        'NAME_TAKEN',
      );
      expect(await allVolumes()).toEqual(before);
      // Its own name is no conflict.
      expect((await api.patch(`/api/v1/volumes/${a.id}`, { name: 'dup-a' })).status).toBe(200);
    });

    it('volumes only grow: a smaller size -> 400 naming body.size_mib, nothing changes', async () => {
      const v = await mkVolume({ name: 'shrink', size_mib: 512 });
      const before = await volumeRow(v.id);
      const r = await api.patch(`/api/v1/volumes/${v.id}`, { size_mib: 256 });
      expectError(r, 400, 'VALIDATION_FAILED');
      expect(failingFields(r)).toEqual(['body.size_mib']);
      expect(await volumeRow(v.id)).toEqual(before);
      expect((await api.patch(`/api/v1/volumes/${v.id}`, { size_mib: 512 })).status).toBe(200);
    });

    const bad: Array<[string, string, unknown]> = [
      ['no name', 'body.name', { size_mib: 10 }],
      ['no size', 'body.size_mib', { name: 'v' }],
      ['size 0', 'body.size_mib', { name: 'v', size_mib: 0 }],
      ['size over 4 TiB', 'body.size_mib', { name: 'v', size_mib: 4 * 1024 * 1024 + 1 }],
      ['fractional size', 'body.size_mib', { name: 'v', size_mib: 1.5 }],
      ['size as text', 'body.size_mib', { name: 'v', size_mib: '10' }],
      ['unknown filesystem', 'body.filesystem', { name: 'v', size_mib: 10, filesystem: 'xfs' }],
      ['name with a slash', 'body.name', { name: 'a/b', size_mib: 10 }],
      ['name starting with a dot', 'body.name', { name: '.v', size_mib: 10 }],
      ['delete_with_vm as text', 'body.delete_with_vm', { name: 'v', size_mib: 10, delete_with_vm: 'yes' }],
      ['an unknown field', 'body', { name: 'v', size_mib: 10, host_id: randomUUID() }],
      ['not an object', 'body', [1]],
    ];
    it.each(bad)('POST /volumes with %s -> 400 naming %s, nothing created', async (_l, field, body) => {
      const before = await allVolumes();
      const r = await api.post('/api/v1/volumes', body);
      expectError(r, 400, 'VALIDATION_FAILED');
      expect(failingFields(r)).toContain(field);
      expect(await allVolumes()).toEqual(before);
    });

    it('bad PATCH bodies -> 400 naming the field, nothing changes', async () => {
      const v = await mkVolume({ name: 'bad-patch', size_mib: 64 });
      const before = await volumeRow(v.id);
      for (const [body, field] of [
        [{ size_mib: 0 }, 'body.size_mib'],
        [{ name: '' }, 'body.name'],
        [{ status: 'in-use' }, 'body'],
        [{ vm_id: randomUUID() }, 'body'],
      ] as const) {
        const r = await api.patch(`/api/v1/volumes/${v.id}`, body);
        expectError(r, 400, 'VALIDATION_FAILED');
        expect(failingFields(r)).toContain(field);
      }
      expect(await volumeRow(v.id)).toEqual(before);
    });

    it('unknown ids -> 404 VOLUME_NOT_FOUND; malformed ids -> 400 naming params.id', async () => {
      for (const [method, body] of [
        ['GET', undefined],
        ['PATCH', { name: 'x' }],
        ['DELETE', undefined],
      ] as const) {
        expectError(await api.call(method, `/api/v1/volumes/${randomUUID()}`, body), 404, 'VOLUME_NOT_FOUND');
        const r = await api.call(method, '/api/v1/volumes/not-a-uuid', body);
        expectError(r, 400, 'VALIDATION_FAILED');
        expect(failingFields(r)).toEqual(['params.id']);
      }
    });

    it('lists with cursor pagination, name prefix and status filters', async () => {
      const ids: string[] = [];
      for (let i = 0; i < 12; i++)
        ids.push((await mkVolume({ name: `lst-${String(i).padStart(2, '0')}`, size_mib: 1 })).id);
      const seen: string[] = [];
      const sizes: number[] = [];
      let cursor: string | null = null;
      do {
        const r = await api.get(`/api/v1/volumes?name=lst-&limit=5${cursor ? `&cursor=${cursor}` : ''}`);
        expect(r.status, r.text).toBe(200);
        for (const v of r.body.items) StrictVolume.parse(v);
        sizes.push(r.body.items.length);
        seen.push(...r.body.items.map((v: Volume) => v.id));
        cursor = r.body.next;
      } while (cursor);
      expect(sizes).toEqual([5, 5, 2]);
      expect(seen).toEqual(ids);
      expect((await api.get('/api/v1/volumes?name=lst-1&limit=500')).body.items).toHaveLength(2);
      const inUse = await api.get('/api/v1/volumes?name=lst-&status=in-use');
      expect(inUse.body.items).toEqual([]);
      for (const [q, field] of [
        ['vm_id=x', 'querystring.vm_id'],
        ['host_id=1', 'querystring.host_id'],
        ['status=free', 'querystring.status'],
        ['limit=0', 'querystring.limit'],
      ]) {
        const r = await api.get(`/api/v1/volumes?${q}`);
        expectError(r, 400, 'VALIDATION_FAILED');
        expect(failingFields(r)).toEqual([field]);
      }
      expectError(await api.get('/api/v1/volumes?cursor=garbage!'), 400, 'INVALID_CURSOR');
    });
  });

  describe.sequential('attach and detach', () => {
    it('attach at create: the VM shows its volumes, they are in-use and listed by vm_id', async () => {
      const v1 = await mkVolume({ name: 'ac-1', size_mib: 100 });
      const v2 = await mkVolume({ name: 'ac-2', size_mib: 200, filesystem: 'none' });
      const { vm } = await createVm({
        name: 'ac-vm',
        start: false,
        volumes: [{ volume_id: v1.id }, { volume_id: v2.id }],
      });
      const shown = [
        { id: v1.id, name: 'ac-1', size_mib: 100 },
        { id: v2.id, name: 'ac-2', size_mib: 200 },
      ];
      expect(vm.volumes).toEqual(shown);
      expect((await api.get(`/api/v1/vms/${vm.id}`)).body.volumes).toEqual(shown);
      const listed = (await api.get('/api/v1/vms?name=ac-vm')).body.items;
      expect(listed.map((x: Vm) => x.volumes)).toEqual([shown]);
      for (const v of [v1, v2]) {
        expect(await getVolume(v.id)).toMatchObject({ vm_id: vm.id, status: 'in-use', host_id: null });
        expect(await eventsOf(v.id)).toEqual(['volume.created', 'volume.updated']);
      }
      const byVm = await api.get(`/api/v1/volumes?vm_id=${vm.id}`);
      expect(byVm.body.items.map((v: Volume) => v.id)).toEqual([v1.id, v2.id]);
    });

    it('attach at create of a volume in use -> 409 VOLUME_IN_USE: no VM, the others untouched', async () => {
      const used = (await api.get('/api/v1/volumes?name=ac-1')).body.items[0] as Volume;
      const free = await mkVolume({ name: 'ac-free', size_mib: 10 });
      const before = await allVolumes();
      const r = await api.post('/api/v1/vms', {
        name: 'ac-refused',
        start: false,
        volumes: [{ volume_id: free.id }, { volume_id: used.id }],
      });
      expectError(r, 409, 'VOLUME_IN_USE');
      expect(r.body.error.details).toMatchObject({ volume_id: used.id, vm_id: used.vm_id });
      expect((await api.get('/api/v1/vms?name=ac-refused')).body.items).toEqual([]);
      expect(await allVolumes()).toEqual(before);
    });

    it('bad volume references at create -> 400 naming the entry, nothing changes', async () => {
      const free = (await api.get('/api/v1/volumes?name=ac-free')).body.items[0] as Volume;
      const before = await allVolumes();
      for (const [volumes, field] of [
        [[{ volume_id: randomUUID() }], 'body.volumes.0.volume_id'],
        [[{ volume_id: free.id }, { volume_id: 'x' }], 'body.volumes.1.volume_id'],
        [[{ volume_id: free.id }, { volume_id: free.id }], 'body.volumes'],
        [[{ volume_id: free.id, read_only: true }], 'body.volumes.0'],
        [[{ name: 'ac-free' }], 'body.volumes.0'],
        ['ac-free', 'body.volumes'],
      ] as const) {
        const r = await api.post('/api/v1/vms', { name: 'ac-bad', start: false, volumes });
        expectError(r, 400, 'VALIDATION_FAILED');
        expect(failingFields(r), r.text).toContain(field);
      }
      expect((await api.get('/api/v1/vms?name=ac-bad')).body.items).toEqual([]);
      expect(await allVolumes()).toEqual(before);
    });

    it('attach and detach on a VM stopped on a host: generation bumps, the host gets the spec', async () => {
      const v = await mkVolume({ name: 'ad-1', size_mib: 300 });
      const vm = await runningVm({ name: 'ad-vm' });
      const agent = hostOf(vm.host_id!);
      const stopped = await stopVm(vm.id);

      const a = await api.post(`/api/v1/vms/${vm.id}/volumes`, { volume_id: v.id });
      expect(a.status, a.text).toBe(200);
      expect(StrictVm.parse(a.body)).toMatchObject({
        volumes: [{ id: v.id, name: 'ad-1', size_mib: 300 }],
        generation: stopped.generation + 1,
        state: 'stopped',
      });
      // The VM's host makes the file, so the volume now lives there.
      expect(await getVolume(v.id)).toMatchObject({ vm_id: vm.id, status: 'in-use', host_id: vm.host_id });
      const spec = await until('the host to get the volume', async () =>
        agent.specs.get(vm.id)?.volumes.length ? agent.specs.get(vm.id) : undefined,
      );
      expect(spec.volumes).toEqual([
        { id: v.id, name: 'ad-1', size_mib: 300, filesystem: 'ext4', read_only: false },
      ]);

      const d = await api.del(`/api/v1/vms/${vm.id}/volumes/${v.id}`);
      expect(d.status, d.text).toBe(200);
      expect(StrictVm.parse(d.body)).toMatchObject({ volumes: [], generation: stopped.generation + 2 });
      expect(await getVolume(v.id)).toMatchObject({ vm_id: null, status: 'available', host_id: vm.host_id });
      await until('the host to drop the volume', async () => agent.specs.get(vm.id)?.volumes.length === 0);
      expect(await eventsOf(v.id)).toEqual(['volume.created', 'volume.updated', 'volume.updated']);
    });

    it('attach or detach while the VM is not stopped -> 409 VM_INVALID_STATE, nothing changes', async () => {
      const v = await mkVolume({ name: 'ad-busy', size_mib: 10 });
      const held = await mkVolume({ name: 'ad-held', size_mib: 10 });
      const vm = await runningVm({ name: 'ad-running', volumes: [{ volume_id: held.id }] });
      const before = { vm: await vmRow(vm.id), volumes: await allVolumes() };
      const a = await api.post(`/api/v1/vms/${vm.id}/volumes`, { volume_id: v.id });
      expectError(a, 409, 'VM_INVALID_STATE');
      expect(a.body.error.details).toEqual({ state: 'running' });
      expectError(await api.del(`/api/v1/vms/${vm.id}/volumes/${held.id}`), 409, 'VM_INVALID_STATE');
      expect({ vm: await vmRow(vm.id), volumes: await allVolumes() }).toEqual(before);
      await deleteVm(vm.id, '?force=true');
    });

    it('attach refusals: in use, unknown, not attached, bad body', async () => {
      const { vm: one } = await createVm({ name: 'ar-1', start: false });
      const { vm: two } = await createVm({ name: 'ar-2', start: false });
      const v = await mkVolume({ name: 'ar-v', size_mib: 10 });
      expect((await api.post(`/api/v1/vms/${one.id}/volumes`, { volume_id: v.id })).status).toBe(200);
      const before = await allVolumes();
      expectError(await api.post(`/api/v1/vms/${two.id}/volumes`, { volume_id: v.id }), 409, 'VOLUME_IN_USE');
      expectError(await api.post(`/api/v1/vms/${one.id}/volumes`, { volume_id: v.id }), 409, 'VOLUME_IN_USE');
      expectError(
        await api.post(`/api/v1/vms/${one.id}/volumes`, { volume_id: randomUUID() }),
        404,
        'VOLUME_NOT_FOUND',
      );
      expectError(
        await api.post(`/api/v1/vms/${randomUUID()}/volumes`, { volume_id: v.id }),
        404,
        'VM_NOT_FOUND',
      );
      expectError(await api.del(`/api/v1/vms/${two.id}/volumes/${v.id}`), 404, 'VOLUME_NOT_FOUND');
      for (const [body, field] of [
        [{}, 'body.volume_id'],
        [{ volume_id: 'ar-v' }, 'body.volume_id'],
        [{ volume_id: v.id, extra: 1 }, 'body'],
      ] as const) {
        const r = await api.post(`/api/v1/vms/${two.id}/volumes`, body);
        expectError(r, 400, 'VALIDATION_FAILED');
        expect(failingFields(r)).toContain(field);
      }
      const r = await api.del(`/api/v1/vms/${two.id}/volumes/not-a-uuid`);
      expectError(r, 400, 'VALIDATION_FAILED');
      expect(failingFields(r)).toEqual(['params.volume_id']);
      expect(await allVolumes()).toEqual(before);
    });

    it('an attached volume is neither deleted nor grown (409 VOLUME_IN_USE), but may be renamed', async () => {
      const v = (await api.get('/api/v1/volumes?name=ar-v')).body.items[0] as Volume;
      const before = await volumeRow(v.id);
      const d = await api.del(`/api/v1/volumes/${v.id}`);
      expectError(d, 409, 'VOLUME_IN_USE');
      expect(d.body.error.details).toEqual({ volume_id: v.id, vm_id: v.vm_id });
      expectError(await api.patch(`/api/v1/volumes/${v.id}`, { size_mib: 20 }), 409, 'VOLUME_IN_USE');
      expect(await volumeRow(v.id)).toEqual(before);
      const r = await api.patch(`/api/v1/volumes/${v.id}`, { name: 'ar-v2' });
      expect(r.status, r.text).toBe(200);
      expect((await api.get(`/api/v1/vms/${v.vm_id}`)).body.volumes).toEqual([
        { id: v.id, name: 'ar-v2', size_mib: 10 },
      ]);
    });
  });

  describe.sequential('placement', () => {
    let pinned: Volume;

    it('a VM goes to the host its volume lives on, and pins its volumes without a host there', async () => {
      // Only B takes VMs: the first placement puts the volume on B.
      expect((await api.post(`/api/v1/hosts/${hostA.hostId}/cordon`)).status).toBe(200);
      pinned = await mkVolume({ name: 'pl-data', size_mib: 50 });
      const first = await runningVm({ name: 'pl-first', volumes: [{ volume_id: pinned.id }] });
      expect(first.host_id).toBe(hostB.hostId);
      expect(await getVolume(pinned.id)).toMatchObject({ host_id: hostB.hostId, vm_id: first.id });
      expect(await eventsOf(pinned.id)).toEqual(['volume.created', 'volume.updated', 'volume.updated']);
      expect((await api.post(`/api/v1/hosts/${hostA.hostId}/uncordon`)).status).toBe(200);
      await stopVm(first.id);
      await deleteVm(first.id);

      // Host A has more free memory: a VM without volumes goes there...
      const free = await runningVm({ name: 'pl-free' });
      expect(free.host_id).toBe(hostA.hostId);
      // ...but the volume's VM goes to B, and takes its new volume there.
      const extra = await mkVolume({ name: 'pl-extra', size_mib: 60 });
      const second = await runningVm({
        name: 'pl-second',
        volumes: [{ volume_id: extra.id }, { volume_id: pinned.id }],
      });
      expect(second.host_id).toBe(hostB.hostId);
      expect(await getVolume(extra.id)).toMatchObject({ host_id: hostB.hostId, vm_id: second.id });
      expect(
        hostB.specs
          .get(second.id)
          ?.volumes.map((v) => v.id)
          .sort(),
      ).toEqual([pinned.id, extra.id].sort());
      expect(hostA.calls.some((c) => c.path === `/v1/vms/${second.id}`)).toBe(false);
      const onB = await api.get(`/api/v1/volumes?host_id=${hostB.hostId}&name=pl-`);
      expect(onB.body.items.map((v: Volume) => v.name)).toEqual(['pl-data', 'pl-extra']);
      await deleteVm(free.id, '?force=true');
      await deleteVm(second.id, '?force=true');
    });

    it('a volume on host B is not attached to a VM placed on host A -> 409 naming both', async () => {
      const onA = await runningVm({ name: 'pl-on-a' });
      expect(onA.host_id).toBe(hostA.hostId);
      await stopVm(onA.id);
      const before = await allVolumes();
      const r = await api.post(`/api/v1/vms/${onA.id}/volumes`, { volume_id: pinned.id });
      expectError(r, 409, 'CONFLICT');
      expect(r.body.error.message).toContain(`pl-data on host vol-b-${kind}`);
      expect(r.body.error.message).toContain(`VM pl-on-a on host vol-a-${kind}`);
      expect(await allVolumes()).toEqual(before);
      // Nor at create, together with a volume on another host.
      const other = await mkVolume({ name: 'pl-other', size_mib: 1 });
      expect((await api.post(`/api/v1/vms/${onA.id}/volumes`, { volume_id: other.id })).status).toBe(200);
      expect(await getVolume(other.id)).toMatchObject({ host_id: hostA.hostId });
      expect((await api.del(`/api/v1/vms/${onA.id}/volumes/${other.id}`)).status).toBe(200);
      const c = await api.post('/api/v1/vms', {
        name: 'pl-split',
        start: false,
        volumes: [{ volume_id: other.id }, { volume_id: pinned.id }],
      });
      expectError(c, 409, 'CONFLICT');
      expect((await api.get('/api/v1/vms?name=pl-split')).body.items).toEqual([]);
      await deleteVm(onA.id);
    });

    it("the volume's host is cordoned -> the create is refused at once naming the volume and the host; a start fails the same way", async () => {
      expect((await api.post(`/api/v1/hosts/${hostB.hostId}/cordon`)).status).toBe(200);
      try {
        const before = {
          vms: await db().selectFrom('vms').selectAll().execute(),
          volumes: await allVolumes(),
        };
        const r = await api.post('/api/v1/vms', { name: 'pl-stuck', volumes: [{ volume_id: pinned.id }] });
        expectError(r, 409, 'PINNED_HOST_UNAVAILABLE');
        expect(r.body.error.message).toBe(
          `volume pl-data lives on host vol-b-${kind}, which is cordoned: the VM can run only there; ` +
            `uncordon it (nqvm host uncordon vol-b-${kind})`,
        );
        expect(r.body.error.details).toEqual({
          volume_id: pinned.id,
          host_id: hostB.hostId,
          host_name: `vol-b-${kind}`,
          host_state: 'cordoned',
        });
        expect({
          vms: await db().selectFrom('vms').selectAll().execute(),
          volumes: await allVolumes(),
        }).toEqual(before);

        // Defined, then started: the start finds the same and fails with the same words.
        const { vm } = await createVm({
          name: 'pl-stuck',
          start: false,
          volumes: [{ volume_id: pinned.id }],
        });
        expect((await api.post(`/api/v1/vms/${vm.id}/start`)).status).toBe(202);
        const failed = await waitVm(vm.id, 'failed');
        expect(failed.host_id).toBeNull();
        expect(failed.last_error).toBe(r.body.error.message);
        const op = (await api.get(`/api/v1/operations?target_id=${vm.id}`)).body.items as Operation[];
        expect(op.find((o) => o.kind === 'vm.start')).toMatchObject({
          status: 'failed',
          error: { code: 'NO_CAPACITY' },
        });
        expect(hostA.calls.some((c) => c.path === `/v1/vms/${vm.id}`)).toBe(false);
        await deleteVm(vm.id);
      } finally {
        await api.post(`/api/v1/hosts/${hostB.hostId}/uncordon`);
      }
    });
  });

  describe.sequential('VM delete', () => {
    it('keeps the volumes by default: detached, available, still on their host', async () => {
      const v = await mkVolume({ name: 'vd-keep', size_mib: 10 });
      const vm = await runningVm({ name: 'vd-keep-vm', volumes: [{ volume_id: v.id }] });
      const agent = hostOf(vm.host_id!);
      await deleteVm(vm.id, '?force=true');
      expect(await getVolume(v.id)).toMatchObject({ vm_id: null, status: 'available', host_id: vm.host_id });
      expect(volumeCalls(agent, v.id)).toEqual([]);
    });

    it('?delete_volumes=true deletes them on their host after the host deleted the VM', async () => {
      const w1 = await mkVolume({ name: 'vd-w1', size_mib: 10 });
      const w2 = await mkVolume({ name: 'vd-w2', size_mib: 10 });
      const vm = await runningVm({
        name: 'vd-del-vm',
        volumes: [{ volume_id: w1.id }, { volume_id: w2.id }],
      });
      const agent = hostOf(vm.host_id!);
      const r = await api.del(`/api/v1/vms/${vm.id}?force=true&delete_volumes=true`);
      expect(r.status, r.text).toBe(202);
      expect(r.body.vm.volumes.map((v: { id: string }) => v.id)).toEqual([w1.id, w2.id]);
      for (const w of [w1, w2]) {
        await until(`volume ${w.name} to be deleted`, async () => (await volumeRow(w.id)) === undefined);
        expect(volumeCalls(agent, w.id)).toEqual(['DELETE']);
        const vmDelete = agent.calls.findIndex((c) => c.method === 'DELETE' && c.path === `/v1/vms/${vm.id}`);
        const volDelete = agent.calls.findIndex((c) => c.path === `/v1/volumes/${w.id}`);
        expect(vmDelete).toBeGreaterThanOrEqual(0);
        expect(volDelete).toBeGreaterThan(vmDelete);
        expect((await eventsOf(w.id)).at(-1)).toBe('volume.deleted');
      }
      expect(await vmRow(vm.id)).toBeUndefined();
    });

    it('delete_with_vm volumes go with the VM; the others stay', async () => {
      const gone = await mkVolume({ name: 'vd-with', size_mib: 10, delete_with_vm: true });
      const kept = await mkVolume({ name: 'vd-without', size_mib: 10 });
      const { vm } = await createVm({
        name: 'vd-with-vm',
        start: false,
        volumes: [{ volume_id: gone.id }, { volume_id: kept.id }],
      });
      await deleteVm(vm.id);
      await until('the delete_with_vm volume to go', async () => (await volumeRow(gone.id)) === undefined);
      expect(await getVolume(kept.id)).toMatchObject({ vm_id: null, status: 'available' });
    });

    it('a bad delete_volumes value -> 400, nothing changes', async () => {
      const v = await mkVolume({ name: 'vd-bad', size_mib: 10 });
      const { vm } = await createVm({ name: 'vd-bad-vm', start: false, volumes: [{ volume_id: v.id }] });
      const before = { vm: await vmRow(vm.id), volumes: await allVolumes() };
      const r = await api.del(`/api/v1/vms/${vm.id}?delete_volumes=yes`);
      expectError(r, 400, 'VALIDATION_FAILED');
      expect(failingFields(r)).toEqual(['querystring.delete_volumes']);
      // A refused delete (the VM runs) marks no volume for deletion either.
      await t.manager.services.vms.write(vm.id, { state: 'running' });
      const running = { vm: await vmRow(vm.id), volumes: await allVolumes() };
      expectError(await api.del(`/api/v1/vms/${vm.id}?delete_volumes=true`), 409, 'VM_INVALID_STATE');
      expect({ vm: await vmRow(vm.id), volumes: await allVolumes() }).toEqual(running);
      expect(running.volumes).toEqual(before.volumes);
    });
  });

  describe.sequential('volume delete on a host', () => {
    it("asks the volume's host to remove it: 503 while it does not answer, 409 while a VM there uses it", async () => {
      const v = await mkVolume({ name: 'hd-1', size_mib: 10 });
      const vm = await runningVm({ name: 'hd-vm', volumes: [{ volume_id: v.id }] });
      const agent = hostOf(vm.host_id!);
      await deleteVm(vm.id, '?force=true');
      const before = await volumeRow(v.id);
      expect(before).toMatchObject({ host_id: vm.host_id, status: 'available' });

      agent.volumeDeletes = 'down';
      expectError(await api.del(`/api/v1/volumes/${v.id}`), 503, 'HOST_UNAVAILABLE');
      expect(await volumeRow(v.id)).toEqual(before);

      agent.volumeDeletes = 'in-use';
      expectError(await api.del(`/api/v1/volumes/${v.id}`), 409, 'VOLUME_IN_USE');
      expect(await volumeRow(v.id)).toEqual(before);
      // The volume sweep leaves volumes that are not being deleted alone.
      await sleep(500);
      expect(await volumeRow(v.id)).toEqual(before);

      agent.volumeDeletes = 'removed';
      const calls = volumeCalls(agent, v.id).length;
      const r = await api.del(`/api/v1/volumes/${v.id}`);
      expect(r.status, r.text).toBe(200);
      expect(volumeCalls(agent, v.id).length).toBe(calls + 1);
      expect(await volumeRow(v.id)).toBeUndefined();
      expect((await eventsOf(v.id)).at(-1)).toBe('volume.deleted');
    });
  });

  describe.sequential('access and audit', () => {
    it('viewers read, operators change; every mutation is audited', async () => {
      const viewer = client(t.url, await userWithRole(t, 'viewer'));
      const operator = client(t.url, await userWithRole(t, 'operator'));
      const v = await operator.post('/api/v1/volumes', { name: 'acc-1', size_mib: 1 });
      expect(v.status, v.text).toBe(201);
      expect((await viewer.get(`/api/v1/volumes/${v.body.id}`)).status).toBe(200);
      expect((await viewer.get('/api/v1/volumes')).status).toBe(200);
      expectError(await viewer.post('/api/v1/volumes', { name: 'acc-2', size_mib: 1 }), 403, 'FORBIDDEN');
      expectError(await viewer.patch(`/api/v1/volumes/${v.body.id}`, { name: 'x' }), 403, 'FORBIDDEN');
      expectError(await viewer.del(`/api/v1/volumes/${v.body.id}`), 403, 'FORBIDDEN');
      expectError(await client(t.url).get('/api/v1/volumes'), 401, 'UNAUTHENTICATED');
      expect((await operator.patch(`/api/v1/volumes/${v.body.id}`, { size_mib: 2 })).status).toBe(200);
      expect((await operator.del(`/api/v1/volumes/${v.body.id}`)).status).toBe(200);
      const audit = await api.get(`/api/v1/audit?target_id=${v.body.id}&limit=50`);
      expect(audit.status, audit.text).toBe(200);
      const actions = audit.body.items.map((e: { action: string; result: string }) => [e.action, e.result]);
      expect(actions).toEqual(
        expect.arrayContaining([
          ['volume.create', 'success'],
          ['volume.update', 'failure'],
          ['volume.update', 'success'],
          ['volume.delete', 'success'],
        ]),
      );
    });
  });
});
