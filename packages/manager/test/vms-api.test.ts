/**
 * The VM resource over HTTP on both datastores: CRUD, pagination, filters, validation,
 * state-machine conflicts, operations of actions, and the transport-level errors.
 */
import { randomUUID } from 'node:crypto';
import { Operation, Vm } from '@nqvm/api';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { client, DATASTORES, startManager, type TestManager } from './harness';
import { expectError, failingFields, raw, registerHost, sleep, uniformErrorProblem } from './helpers';

const StrictVm = Vm.strict();
const StrictOperation = Operation.strict();

// The datastores run side by side (a 2-core machine runs test files one at a time); every test
// within one datastore runs in order.
describe.concurrent.each(DATASTORES)('VMs API on %s', (kind) => {
  let t: TestManager;
  let api: ReturnType<typeof client>;

  beforeAll(async () => {
    t = await startManager(kind);
    api = client(t.url, t.adminToken);
  });
  afterAll(async () => {
    await t?.close();
  });

  const create = async (body: Record<string, unknown>) => {
    const r = await api.post('/api/v1/vms', body);
    expect(r.status, r.text).toBe(202);
    StrictVm.parse(r.body.vm);
    StrictOperation.parse(r.body.operation);
    return r.body as { vm: Vm; operation: Operation };
  };
  const dbRow = (id: string) =>
    t.manager.services.store.db.selectFrom('vms').selectAll().where('id', '=', id).executeTakeFirst();
  const opsOf = async (id: string) => {
    const r = await api.get(`/api/v1/operations?target_id=${id}&limit=500&order=asc`);
    expect(r.status).toBe(200);
    return r.body.items as Operation[];
  };

  describe.sequential('CRUD', () => {
    it('creates a stopped VM with start:false, with a finished vm.define operation', async () => {
      const { vm, operation } = await create({
        name: 'crud-1',
        vcpu: 2,
        mem_mib: 512,
        labels: { env: 'dev' },
        start: false,
      });
      expect(vm).toMatchObject({
        name: 'crud-1',
        state: 'stopped',
        desired_state: 'stopped',
        vcpu: 2,
        mem_mib: 512,
        host_id: null,
        labels: { env: 'dev' },
      });
      expect(operation).toMatchObject({
        kind: 'vm.define',
        status: 'succeeded',
        target: { type: 'vm', id: vm.id },
      });
      const got = await api.get(`/api/v1/vms/${vm.id}`);
      expect(got.status).toBe(200);
      expect(got.body).toEqual(vm);
    });

    it('creates a VM that waits for placement by default, with defaults applied', async () => {
      const { vm, operation } = await create({ name: 'crud-2' });
      expect(vm).toMatchObject({
        state: 'creating',
        desired_state: 'running',
        vcpu: 1,
        mem_mib: 256,
        restart_policy: 'never',
        labels: {},
        networks: [],
      });
      expect(operation).toMatchObject({
        kind: 'vm.create',
        status: 'queued',
        target: { type: 'vm', id: vm.id },
      });
      const list = await api.get('/api/v1/vms?name=crud-');
      expect(list.body.items.map((v: Vm) => v.name)).toEqual(['crud-1', 'crud-2']);
    });

    it('PATCH changes name, labels and restart policy', async () => {
      const { vm } = await create({ name: 'patch-me', labels: { team: 'a' }, start: false });
      const r = await api.patch(`/api/v1/vms/${vm.id}`, {
        name: 'patched',
        labels: { team: 'b', tier: 'web' },
        restart_policy: 'always',
      });
      expect(r.status, r.text).toBe(200);
      StrictVm.parse(r.body);
      expect(r.body).toMatchObject({
        id: vm.id,
        name: 'patched',
        labels: { team: 'b', tier: 'web' },
        restart_policy: 'always',
      });
      expect((await api.get(`/api/v1/vms/${vm.id}`)).body).toEqual(r.body);
      // The label index follows the new labels.
      expect((await api.get('/api/v1/vms?label=team=a')).body.items).toEqual([]);
      expect((await api.get('/api/v1/vms?label=team=b')).body.items.map((v: Vm) => v.id)).toEqual([vm.id]);
    });

    it('PATCH vcpu/mem_mib works while stopped and bumps the generation', async () => {
      const { vm } = await create({ name: 'resize-ok', start: false });
      const r = await api.patch(`/api/v1/vms/${vm.id}`, { vcpu: 4, mem_mib: 1024 });
      expect(r.status, r.text).toBe(200);
      expect(r.body).toMatchObject({ vcpu: 4, mem_mib: 1024, generation: vm.generation + 1 });
    });

    it('PATCH vcpu while not stopped -> 409 VM_INVALID_STATE, row unchanged', async () => {
      const { vm } = await create({ name: 'resize-busy' });
      const before = await dbRow(vm.id);
      for (const body of [{ vcpu: 2 }, { mem_mib: 512 }, { name: 'resize-busy-2', vcpu: 2 }]) {
        const r = await api.patch(`/api/v1/vms/${vm.id}`, body);
        expectError(r, 409, 'VM_INVALID_STATE');
        expect(r.body.error.details).toMatchObject({ state: 'creating' });
      }
      expect(await dbRow(vm.id)).toEqual(before);
    });

    it('duplicate names -> 409 NAME_TAKEN on create and rename', async () => {
      const { vm: a } = await create({ name: 'dup-a', start: false });
      const { vm: b } = await create({ name: 'dup-b', start: false });
      const r = await api.post('/api/v1/vms', { name: 'dup-a' });
      expectError(r, 409, 'NAME_TAKEN');
      expect(r.body.error.details).toEqual({ field: 'name' });
      const before = await dbRow(b.id);
      expectError(
        await api.patch(`/api/v1/vms/${b.id}`, { name: 'dup-a', labels: { x: 'y' } }),
        409,
        'NAME_TAKEN',
      );
      expect(await dbRow(b.id)).toEqual(before);
      // Renaming to its own name is no conflict.
      expect((await api.patch(`/api/v1/vms/${a.id}`, { name: 'dup-a' })).status).toBe(200);
      expect((await api.get('/api/v1/vms?name=dup-')).body.items).toHaveLength(2);
    });

    it('DELETE of a VM without a host -> 202, then it is gone', async () => {
      const { vm } = await create({ name: 'delete-me', start: false });
      const r = await api.del(`/api/v1/vms/${vm.id}`);
      expect(r.status, r.text).toBe(202);
      expect(r.body.operation).toMatchObject({
        kind: 'vm.delete',
        status: 'succeeded',
        target: { type: 'vm', id: vm.id },
      });
      expectError(await api.get(`/api/v1/vms/${vm.id}`), 404, 'VM_NOT_FOUND');
      expect((await api.get('/api/v1/vms?name=delete-me')).body.items).toEqual([]);
      expect(await dbRow(vm.id)).toBeUndefined();
      expectError(await api.del(`/api/v1/vms/${vm.id}`), 404, 'VM_NOT_FOUND');
    });

    it('DELETE of a live VM -> 409 unless ?force=true', async () => {
      const { vm } = await create({ name: 'delete-live', start: false });
      await t.manager.services.vms.write(vm.id, { state: 'running', desired_state: 'running' });
      const before = await dbRow(vm.id);
      const r = await api.del(`/api/v1/vms/${vm.id}`);
      expectError(r, 409, 'VM_INVALID_STATE');
      expect(await dbRow(vm.id)).toEqual(before);
      expectError(await api.del(`/api/v1/vms/${vm.id}?force=yes`), 400, 'VALIDATION_FAILED');
      expect((await api.del(`/api/v1/vms/${vm.id}?force=true`)).status).toBe(202);
      expectError(await api.get(`/api/v1/vms/${vm.id}`), 404, 'VM_NOT_FOUND');
    });
  });

  describe.sequential('validation', () => {
    const cases: Array<[string, string, unknown]> = [
      ['missing name', 'body.name', {}],
      ['empty name', 'body.name', { name: '' }],
      ['name starting with a dash', 'body.name', { name: '-x' }],
      ['name with a slash', 'body.name', { name: 'a/b' }],
      ['name too long', 'body.name', { name: 'a'.repeat(64) }],
      ['vcpu zero', 'body.vcpu', { name: 'v', vcpu: 0 }],
      ['vcpu as text', 'body.vcpu', { name: 'v', vcpu: 'two' }],
      ['vcpu fractional', 'body.vcpu', { name: 'v', vcpu: 1.5 }],
      ['mem too small', 'body.mem_mib', { name: 'v', mem_mib: 1 }],
      ['bad label key', 'body.labels.UPPER', { name: 'v', labels: { UPPER: 'x' } }],
      ['bad restart policy', 'body.restart_policy', { name: 'v', restart_policy: 'sometimes' }],
      ['bad image id', 'body.kernel_image_id', { name: 'v', kernel_image_id: 'not-a-uuid' }],
      ['bad network id', 'body.networks.0.network_id', { name: 'v', networks: [{ network_id: 'x' }] }],
      ['empty guest password', 'body.guest_config.password', { name: 'v', guest_config: { password: '' } }],
      [
        'bad guest user name',
        'body.guest_config.username',
        { name: 'v', guest_config: { username: 'Root User' } },
      ],
      ['start as text', 'body.start', { name: 'v', start: 'yes' }],
      ['not an object', 'body', [1, 2]],
      ['null', 'body', null],
    ];
    it.each(cases)('POST /vms with %s -> 400 naming %s', async (_label, field, body) => {
      const r = await api.post('/api/v1/vms', body);
      expectError(r, 400, 'VALIDATION_FAILED');
      expect(failingFields(r)).toContain(field);
    });

    it('unknown fields are refused and named', async () => {
      const r = await api.post('/api/v1/vms', { name: 'v', colour: 'blue' });
      expectError(r, 400, 'VALIDATION_FAILED');
      expect(failingFields(r)).toContain('body');
      expect(r.text).toContain('colour');
      const g = await api.post('/api/v1/vms', { name: 'v', guest_config: { root: true } });
      expectError(g, 400, 'VALIDATION_FAILED');
      expect(failingFields(g)).toContain('body.guest_config');
    });

    it('invalid PATCH and stop bodies -> 400 naming the field, nothing changes', async () => {
      const { vm } = await create({ name: 'val-patch', start: false });
      const before = await dbRow(vm.id);
      for (const [body, field] of [
        [{ vcpu: 0 }, 'body.vcpu'],
        [{ name: 'bad name' }, 'body.name'],
        [{ state: 'running' }, 'body'],
        [{ labels: 'x' }, 'body.labels'],
      ] as const) {
        const r = await api.patch(`/api/v1/vms/${vm.id}`, body);
        expectError(r, 400, 'VALIDATION_FAILED');
        expect(failingFields(r)).toContain(field);
      }
      await t.manager.services.vms.write(vm.id, { state: 'running' });
      const running = await dbRow(vm.id);
      const s = await api.post(`/api/v1/vms/${vm.id}/stop`, { timeout_s: 0 });
      expectError(s, 400, 'VALIDATION_FAILED');
      expect(failingFields(s)).toContain('body.timeout_s');
      expect(await dbRow(vm.id)).toEqual(running);
      await t.manager.services.vms.write(vm.id, { state: before!.state });
    });

    const actions: Array<[string, string, unknown?]> = [
      ['GET', ''],
      ['PATCH', '', { name: 'x' }],
      ['DELETE', ''],
      ['POST', '/start'],
      ['POST', '/stop', {}],
      ['POST', '/pause'],
      ['POST', '/resume'],
      ['POST', '/reboot'],
      ['PATCH', '/pause'],
      ['PATCH', '/resume'],
    ];
    it.each(actions)('%s /vms/{unknown id}%s -> 404 VM_NOT_FOUND', async (method, suffix, body) => {
      expectError(await api.call(method, `/api/v1/vms/${randomUUID()}${suffix}`, body), 404, 'VM_NOT_FOUND');
    });
    it.each(actions)('%s /vms/{malformed id}%s -> 400 naming params.id', async (method, suffix, body) => {
      for (const id of ['not-a-uuid', '123', encodeURIComponent("1' OR '1'='1"), `${randomUUID()}x`]) {
        const r = await api.call(method, `/api/v1/vms/${id}${suffix}`, body);
        expectError(r, 400, 'VALIDATION_FAILED');
        expect(failingFields(r)).toEqual(['params.id']);
      }
    });
  });

  describe.sequential('state machine', () => {
    it('pause of a stopped VM -> 409 VM_INVALID_STATE, row and operations unchanged', async () => {
      const { vm } = await create({ name: 'sm-stopped', start: false });
      const before = await dbRow(vm.id);
      const opsBefore = await opsOf(vm.id);
      for (const [method, action] of [
        ['POST', 'pause'],
        ['PATCH', 'pause'],
        ['POST', 'resume'],
        ['PATCH', 'resume'],
        ['POST', 'reboot'],
        ['POST', 'stop'],
      ] as const) {
        const r = await api.call(method, `/api/v1/vms/${vm.id}/${action}`);
        expectError(r, 409, 'VM_INVALID_STATE');
        expect(r.body.error.details).toMatchObject({ state: 'stopped', action });
      }
      expect(await dbRow(vm.id)).toEqual(before);
      expect(await opsOf(vm.id)).toEqual(opsBefore);
    });

    it('start of a creating VM -> 409 VM_INVALID_STATE, row unchanged', async () => {
      const { vm } = await create({ name: 'sm-creating' });
      const before = await dbRow(vm.id);
      const r = await api.post(`/api/v1/vms/${vm.id}/start`);
      expectError(r, 409, 'VM_INVALID_STATE');
      expect(r.body.error.details).toMatchObject({ state: 'creating', action: 'start' });
      expect(await dbRow(vm.id)).toEqual(before);
      expect(await opsOf(vm.id)).toHaveLength(1);
    });

    it('start and stop record their intent and produce operations', async () => {
      const { vm } = await create({ name: 'sm-cycle', start: false });
      const start = await api.post(`/api/v1/vms/${vm.id}/start`);
      expect(start.status, start.text).toBe(202);
      StrictVm.parse(start.body.vm);
      StrictOperation.parse(start.body.operation);
      expect(start.body.vm).toMatchObject({
        state: 'starting',
        desired_state: 'running',
        generation: vm.generation + 1,
      });
      expect(start.body.operation).toMatchObject({
        kind: 'vm.start',
        status: 'queued',
        target: { type: 'vm', id: vm.id },
      });
      expect((await api.get(`/api/v1/vms/${vm.id}`)).body).toEqual(start.body.vm);

      const stop = await api.post(`/api/v1/vms/${vm.id}/stop`, { force: true });
      expect(stop.status, stop.text).toBe(202);
      // Not placed on a host: nothing to stop, the change is complete at once.
      expect(stop.body.vm).toMatchObject({
        state: 'stopped',
        desired_state: 'stopped',
        generation: vm.generation + 2,
      });
      expect(stop.body.operation).toMatchObject({ kind: 'vm.stop', status: 'succeeded' });

      const ops = await opsOf(vm.id);
      expect(ops.map((o) => [o.kind, o.status])).toEqual([
        ['vm.define', 'succeeded'],
        ['vm.start', 'cancelled'],
        ['vm.stop', 'succeeded'],
      ]);
      const got = await api.get(`/api/v1/operations/${start.body.operation.id}`);
      expect(got.body.progress.message).toContain('superseded');
    });

    it('stop without a body and from creating works', async () => {
      const { vm } = await create({ name: 'sm-stop-creating' });
      const r = await api.post(`/api/v1/vms/${vm.id}/stop`);
      expect(r.status, r.text).toBe(202);
      expect(r.body.vm.state).toBe('stopped');
      const ops = await opsOf(vm.id);
      expect(ops.map((o) => [o.kind, o.status])).toEqual([
        ['vm.create', 'cancelled'],
        ['vm.stop', 'succeeded'],
      ]);
    });

    it('the reference form PATCH /vms/{id}/pause and /resume', async () => {
      const { vm } = await create({ name: 'sm-ref', start: false });
      await t.manager.services.vms.write(vm.id, { state: 'running', desired_state: 'running' });
      const p = await api.patch(`/api/v1/vms/${vm.id}/pause`);
      expect(p.status, p.text).toBe(202);
      expect(p.body.vm).toMatchObject({ state: 'pausing', desired_state: 'paused' });
      expect(p.body.operation).toMatchObject({ kind: 'vm.pause', status: 'queued' });
      expectError(await api.patch(`/api/v1/vms/${vm.id}/pause`), 409, 'VM_INVALID_STATE');
      await t.manager.services.vms.write(vm.id, { state: 'paused' });
      const r = await api.patch(`/api/v1/vms/${vm.id}/resume`);
      expect(r.status, r.text).toBe(202);
      expect(r.body.vm).toMatchObject({ state: 'starting', desired_state: 'running' });
      expect(r.body.operation).toMatchObject({ kind: 'vm.resume', status: 'queued' });
      // The pause was still waiting: the resume supersedes it.
      const ops = await opsOf(vm.id);
      expect(ops.find((o) => o.kind === 'vm.pause')?.status).toBe('cancelled');
    });
  });

  describe.sequential('pagination', () => {
    let ids: string[];
    beforeAll(async () => {
      ids = [];
      for (let i = 0; i < 25; i++)
        ids.push((await create({ name: `pg-${String(i).padStart(2, '0')}`, start: false })).vm.id);
    });

    const walk = async (query: string, limit: number, onPage?: (n: number) => Promise<void>) => {
      const seen: string[] = [];
      const sizes: number[] = [];
      let cursor: string | null = null;
      for (let page = 0; page < 100; page++) {
        const r = await api.get(
          `/api/v1/vms?limit=${limit}${query}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
        );
        expect(r.status, r.text).toBe(200);
        sizes.push(r.body.items.length);
        seen.push(...r.body.items.map((v: Vm) => v.id));
        await onPage?.(page);
        cursor = r.body.next;
        if (!cursor) break;
      }
      return { seen, sizes };
    };

    it('pages with limit=10 through next cursors: no duplicates, no gaps', async () => {
      const { seen, sizes } = await walk('&name=pg-', 10);
      expect(sizes).toEqual([10, 10, 5]);
      expect(seen).toEqual(ids);
    });

    it('pages exactly at the boundary end with next = null', async () => {
      const { sizes } = await walk('&name=pg-', 5);
      expect(sizes).toEqual([5, 5, 5, 5, 5]);
    });

    it('a VM created while paging shows up once, later', async () => {
      let extra = '';
      const { seen } = await walk('&name=pg-', 10, async (page) => {
        if (page === 0) extra = (await create({ name: 'pg-99', start: false })).vm.id;
      });
      expect(seen).toEqual([...ids, extra]);
      expect(new Set(seen).size).toBe(seen.length);
      await api.del(`/api/v1/vms/${extra}`);
    });

    it('the whole list pages without duplicates', async () => {
      const { seen } = await walk('', 7);
      expect(new Set(seen).size).toBe(seen.length);
      const all = await t.manager.services.store.db.selectFrom('vms').select('id').execute();
      expect(new Set(seen)).toEqual(new Set(all.map((r) => r.id)));
    });

    it('invalid cursors -> 400 INVALID_CURSOR', async () => {
      const bad = [
        'garbage!',
        'x',
        Buffer.from('[1,2]').toString('base64url'),
        Buffer.from('{"a":1}').toString('base64url'),
        Buffer.from('["a"]').toString('base64url'),
        Buffer.from(JSON.stringify(['\u0000', 'x'])).toString('base64url'),
        Buffer.from(JSON.stringify(['2024-01-01T00:00:00.000Z', 'a\u0000b'])).toString('base64url'),
      ];
      for (const c of bad) {
        const r = await api.get(`/api/v1/vms?limit=10&cursor=${encodeURIComponent(c)}`);
        expectError(r, 400, 'INVALID_CURSOR');
      }
      expectError(await api.get(`/api/v1/vms?cursor=${'a'.repeat(600)}`), 400, 'VALIDATION_FAILED');
    });

    it('invalid limits -> 400 naming querystring.limit', async () => {
      for (const l of ['0', '501', 'abc', '-1', '2.5', '']) {
        const r = await api.get(`/api/v1/vms?limit=${l}`);
        expectError(r, 400, 'VALIDATION_FAILED');
        expect(failingFields(r)).toEqual(['querystring.limit']);
      }
    });
  });

  describe.sequential('filters', () => {
    let hostId: string;
    const made: Record<string, string> = {};
    beforeAll(async () => {
      ({ hostId } = await registerHost(t.url, t.adminToken, `flt-host-${kind}`));
      made.a1 = (await create({ name: 'flt-a1', labels: { env: 'prod', tier: 'web' }, start: false })).vm.id;
      // With a host that offers no VMM, a VM to start would fail placement: record the state directly.
      made.a2 = (await create({ name: 'flt-a2', labels: { env: 'dev' }, start: false })).vm.id;
      await t.manager.services.vms.write(made.a2!, { state: 'creating' });
      made.b1 = (await create({ name: 'flt-b1', labels: { env: 'prod', 'x.io/k': '' }, start: false })).vm.id;
      made.B2 = (await create({ name: 'Flt-B2', labels: { env: 'prod' }, start: false })).vm.id;
      // Placed and already reconciled (observed = generation): the reconciler leaves them alone.
      await t.manager.services.store.db
        .updateTable('vms')
        .set({ host_id: hostId, observed_generation: 1 })
        .where('id', 'in', [made.b1!, made.B2!])
        .execute();
    });
    const names = async (q: string) => {
      const r = await api.get(`/api/v1/vms?limit=500&${q}`);
      expect(r.status, r.text).toBe(200);
      return (r.body.items as Vm[]).map((v) => v.name).filter((n) => /^flt-/i.test(n));
    };
    /** The filtered VMs' rows, to explain a failure. */
    const states = async () =>
      JSON.stringify(
        await t.manager.services.store.db
          .selectFrom('vms')
          .select(['name', 'state', 'desired_state', 'host_id', 'last_error'])
          .where('name', 'like', '%lt-%')
          .execute(),
      );

    it('by name prefix (case-sensitive)', async () => {
      expect(await names('name=flt-a')).toEqual(['flt-a1', 'flt-a2']);
      expect(await names('name=flt-')).toEqual(['flt-a1', 'flt-a2', 'flt-b1']);
      expect(await names('name=Flt')).toEqual(['Flt-B2']);
      expect(await names('name=flt-a1')).toEqual(['flt-a1']);
      expect(await names('name=flt-a1x')).toEqual([]);
      expect(await names('name=%25')).toEqual([]);
      expect(await names('name=_')).toEqual([]);
    });

    it('by state', async () => {
      expect(await names('state=creating'), await states()).toEqual(['flt-a2']);
      expect(await names('state=stopped')).toEqual(['flt-a1', 'flt-b1', 'Flt-B2']);
      expect(await names('state=running')).toEqual([]);
    });

    it('by label k=v', async () => {
      expect(await names('label=env=prod')).toEqual(['flt-a1', 'flt-b1', 'Flt-B2']);
      expect(await names('label=env=dev')).toEqual(['flt-a2']);
      expect(await names('label=tier=web')).toEqual(['flt-a1']);
      expect(await names(`label=${encodeURIComponent('x.io/k=')}`)).toEqual(['flt-b1']);
      expect(await names('label=env=test')).toEqual([]);
    });

    it('by host_id', async () => {
      expect(await names(`host_id=${hostId}`)).toEqual(['flt-b1', 'Flt-B2']);
      expect(await names(`host_id=${randomUUID()}`)).toEqual([]);
    });

    it('combined, with pagination', async () => {
      expect(await names(`label=env=prod&state=stopped&host_id=${hostId}`), await states()).toEqual([
        'flt-b1',
        'Flt-B2',
      ]);
      const first = await api.get(`/api/v1/vms?label=env=prod&limit=1`);
      const second = await api.get(`/api/v1/vms?label=env=prod&limit=1&cursor=${first.body.next}`);
      expect([first.body.items[0].name, second.body.items[0].name]).toEqual(['flt-a1', 'flt-b1']);
    });

    it('invalid filter values -> 400 naming the parameter', async () => {
      for (const [q, field] of [
        ['state=sleeping', 'querystring.state'],
        ['host_id=host-1', 'querystring.host_id'],
        ['label=env', 'querystring.label'],
        ['label=ENV=x', 'querystring.label'],
        [`name=${'a'.repeat(64)}`, 'querystring.name'],
      ]) {
        const r = await api.get(`/api/v1/vms?${q}`);
        expectError(r, 400, 'VALIDATION_FAILED');
        expect(failingFields(r)).toEqual([field]);
      }
    });
  });

  describe.sequential('transport', () => {
    it('unknown route -> 404 ROUTE_NOT_FOUND with the error body, authenticated or not', async () => {
      for (const c of [api, client(t.url)]) {
        expectError(await c.get('/api/v1/nope'), 404, 'ROUTE_NOT_FOUND');
        expectError(await c.post('/api/v1/vms/x/y/z', {}), 404, 'ROUTE_NOT_FOUND');
        expectError(await c.call('PUT', '/api/v1/vms'), 404, 'ROUTE_NOT_FOUND');
      }
    });

    it('malformed URL escapes -> 400 with the error body', async () => {
      const r = await raw(t.url, 'GET', '/api/v1/vms/%E0%A4%A', {
        headers: { authorization: `Bearer ${t.adminToken}` },
      });
      expect(r.status).toBe(400);
      expect(uniformErrorProblem(r)).toBeNull();
    });

    it('a request line over the header limit -> 431 HEADERS_TOO_LARGE with the error body', async () => {
      const r = await raw(t.url, 'GET', `/api/v1/vms?name=${'a'.repeat(20_000)}`, {
        headers: { authorization: `Bearer ${t.adminToken}` },
      });
      expectError(r, 431, 'HEADERS_TOO_LARGE');
      expect((await api.get('/api/v1/vms?limit=1')).status).toBe(200);
    });

    it('the manager survives the datastore ending its idle connections', async () => {
      const db = t.manager.services.store.db;
      // Several concurrent reads leave several idle pooled connections behind.
      await Promise.all(Array.from({ length: 6 }, () => api.get('/api/v1/vms?limit=5')));
      if (kind === 'postgres') {
        const admin = new pg.Client({ connectionString: t.dbUrl });
        await admin.connect();
        const { rows } = await admin.query(
          'select pg_terminate_backend(pid) as ok from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()',
        );
        await admin.end();
        expect(rows.length).toBeGreaterThan(0);
        await sleep(200);
      }
      for (let i = 0; i < 5; i++) expect((await api.get('/api/v1/vms?limit=5')).status).toBe(200);
      expect((await db.selectFrom('users').select('id').execute()).length).toBeGreaterThan(0);
    });

    it('over-long path segments -> a 4xx with the error body', async () => {
      // Past the router's parameter length the web UI's fallback route answers: a JSON 404, never the SPA.
      const r = await api.get(`/api/v1/vms/${'a'.repeat(300)}`);
      expect([400, 404]).toContain(r.status);
      expect(uniformErrorProblem(r)).toBeNull();
    });

    it('NUL characters are refused alike on both datastores, naming the field', async () => {
      for (const [p, field] of [
        ['/api/v1/vms?name=a%00', 'querystring.name'],
        ['/api/v1/vms?label=a=%00', 'querystring.label'],
        ['/api/v1/operations?kind=%00', 'querystring.kind'],
        ['/api/v1/audit?action=x%00y', 'querystring.action'],
        [`/api/v1/vms/${randomUUID()}%00`, 'params.id'],
      ] as const) {
        const r = await api.get(p);
        expectError(r, 400, 'VALIDATION_FAILED');
        expect(failingFields(r)).toEqual([field]);
      }
      const body = await api.post('/api/v1/vms', { name: 'nul', labels: { k: 'v\u0000' }, start: false });
      expectError(body, 400, 'VALIDATION_FAILED');
      expect(failingFields(body)).toEqual(['body.labels.k']);
      const loginNul = await client(t.url).post('/api/v1/auth/login', {
        username: 'admin\u0000',
        password: 'x',
      });
      expectError(loginNul, 400, 'VALIDATION_FAILED');
      expect(failingFields(loginNul)).toEqual(['body.username']);
    });

    it('a deeply nested body -> 400, not a crash', async () => {
      const depth = 200_000;
      const r = await raw(t.url, 'POST', '/api/v1/vms', {
        headers: { authorization: `Bearer ${t.adminToken}`, 'content-type': 'application/json' },
        body: `{"name":"deep","labels":${'['.repeat(depth)}${']'.repeat(depth)}}`,
      });
      expectError(r, 400, 'VALIDATION_FAILED');
      expect(failingFields(r)).toEqual(['body.labels']);
    });

    it('body over 1 MiB -> 413 BODY_TOO_LARGE; just under is read', async () => {
      const big = JSON.stringify({ name: 'big', boot_args: 'x'.repeat(1024 * 1024) });
      const r = await raw(t.url, 'POST', '/api/v1/vms', {
        headers: { authorization: `Bearer ${t.adminToken}`, 'content-type': 'application/json' },
        body: big,
      });
      expectError(r, 413, 'BODY_TOO_LARGE');
      const under = await api.post('/api/v1/vms', { name: 'big', boot_args: 'x'.repeat(1000 * 1000) });
      expectError(under, 400, 'VALIDATION_FAILED');
      expect(failingFields(under)).toEqual(['body.boot_args']);
    });

    it('invalid JSON -> 400 INVALID_JSON', async () => {
      for (const body of ['{"name":', '{name: "x"}', "{'a':1}", ' ', '\u0000', 'null x']) {
        const r = await raw(t.url, 'POST', '/api/v1/vms', {
          headers: { authorization: `Bearer ${t.adminToken}`, 'content-type': 'application/json' },
          body,
        });
        expectError(r, 400, 'INVALID_JSON');
      }
    });

    it('an empty body with Content-Type: application/json is an empty object', async () => {
      const json = { authorization: `Bearer ${t.adminToken}`, 'content-type': 'application/json' };
      const { vm } = await create({ name: 'empty-body', start: false });
      await t.manager.services.vms.write(vm.id, { state: 'running', desired_state: 'running' });
      // The reconciler may move this host-less VM on at any moment, so each action is judged by
      // what the empty body decides: it parses as {} (never 400 INVALID_JSON), and the action runs.
      const action = async (method: string, verb: string) => {
        const r = await raw(t.url, method, `/api/v1/vms/${vm.id}/${verb}`, { headers: json, body: '' });
        expect(r.status, r.text).not.toBe(400);
        if (r.status !== 202) expect(r.body.error.code, r.text).toBe('VM_INVALID_STATE');
        return r;
      };
      const pause = await action('PATCH', 'pause');
      if (pause.status === 202) expect(pause.body.vm).toMatchObject({ desired_state: 'paused' });
      await t.manager.services.vms.write(vm.id, { state: 'paused' });
      await action('POST', 'resume');
      await t.manager.services.vms.write(vm.id, { state: 'running', desired_state: 'running' });
      await action('POST', 'stop');
      await t.manager.services.vms.write(vm.id, { state: 'stopped', desired_state: 'stopped' });
      const start = await action('POST', 'start');
      expect(start.status, start.text).toBe(202);
      expect(start.body.vm.desired_state).toBe('running');
      // A create with an empty body is the create with {}: the same answer either way.
      const [empty, braces] = await Promise.all(
        ['', '{}'].map((body) =>
          raw(t.url, 'POST', '/api/v1/vms', {
            headers: { ...json, 'content-type': 'application/json; charset=utf-8' },
            body,
          }),
        ),
      );
      expect(empty!.body?.error?.code).not.toBe('INVALID_JSON');
      expect([empty!.status, empty!.body?.error?.code]).toEqual([braces!.status, braces!.body?.error?.code]);
    });

    it('prototype-poisoning JSON is refused', async () => {
      const r = await raw(t.url, 'POST', '/api/v1/vms', {
        headers: { authorization: `Bearer ${t.adminToken}`, 'content-type': 'application/json' },
        body: '{"name":"proto","__proto__":{"start":false}}',
      });
      expect(r.status).toBe(400);
      expect(uniformErrorProblem(r)).toBeNull();
    });

    it('wrong content-type -> 415 UNSUPPORTED_MEDIA_TYPE, and nothing happens', async () => {
      const { vm } = await create({ name: 'ctype', start: false });
      const before = await dbRow(vm.id);
      for (const ctype of [
        'application/xml',
        'text/plain',
        'application/x-www-form-urlencoded',
        'multipart/form-data; boundary=x',
      ]) {
        const r = await raw(t.url, 'POST', '/api/v1/vms', {
          headers: { authorization: `Bearer ${t.adminToken}`, 'content-type': ctype },
          body: '{"name":"ctype-2"}',
        });
        expectError(r, 415, 'UNSUPPORTED_MEDIA_TYPE');
        const a = await raw(t.url, 'POST', `/api/v1/vms/${vm.id}/start`, {
          headers: { authorization: `Bearer ${t.adminToken}`, 'content-type': ctype },
          body: '{}',
        });
        expectError(a, 415, 'UNSUPPORTED_MEDIA_TYPE');
      }
      const none = await raw(t.url, 'POST', '/api/v1/vms', {
        headers: { authorization: `Bearer ${t.adminToken}` },
        body: new Uint8Array([123, 125]),
      });
      expectError(none, 415, 'UNSUPPORTED_MEDIA_TYPE');
      expect(await dbRow(vm.id)).toEqual(before);
      expect((await api.get('/api/v1/vms?name=ctype-2')).body.items).toEqual([]);
    });

    it('application/json with a charset is accepted', async () => {
      const r = await raw(t.url, 'POST', '/api/v1/vms', {
        headers: {
          authorization: `Bearer ${t.adminToken}`,
          'content-type': 'application/json; charset=utf-8',
        },
        body: '{"name":"charset","start":false}',
      });
      expect(r.status, r.text).toBe(202);
    });
  });
});
