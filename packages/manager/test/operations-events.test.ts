/**
 * Operations (list, get, ?wait=, cancel) and the SSE event stream (payloads equal to GET,
 * ids, Last-Event-ID replay, role visibility) over HTTP on both datastores.
 */
import { randomUUID } from 'node:crypto';
import { Operation, User, Vm } from '@nqvm/api';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { client, DATASTORES, startManager, type TestManager, userWithRole } from './harness';
import { expectError, registerHost, type SseClient as Sse, SseClient, sleep } from './helpers';

const StrictOperation = Operation.strict();

// The datastores run side by side (a 2-core machine runs test files one at a time); every test
// within one datastore runs in order.
describe.concurrent.each(DATASTORES)('operations and events on %s', (kind) => {
  let t: TestManager;
  let api: ReturnType<typeof client>;
  let viewerToken: string;
  const streams: Sse[] = [];

  beforeAll(async () => {
    t = await startManager(kind);
    api = client(t.url, t.adminToken);
    viewerToken = await userWithRole(t, 'viewer');
  });
  afterEach(() => {
    for (const s of streams.splice(0)) s.close();
  });
  afterAll(async () => {
    await t?.close();
  });

  const open = async (token: string, headers: Record<string, string> = {}, query = '') => {
    const s = await SseClient.open(t.url, { authorization: `Bearer ${token}`, ...headers }, query);
    streams.push(s);
    return s;
  };
  const createVm = async (body: Record<string, unknown>) => {
    const r = await api.post('/api/v1/vms', body);
    expect(r.status, r.text).toBe(202);
    return r.body as { vm: Vm; operation: Operation };
  };

  describe.sequential('operations', () => {
    it('lists with filters and pages without duplicates; GET answers the same resource', async () => {
      const made: Operation[] = [];
      for (let i = 0; i < 5; i++)
        made.push((await createVm({ name: `op-list-${i}`, start: false })).operation);
      const byTarget = await api.get(`/api/v1/operations?target_id=${made[2]!.target.id}`);
      expect(byTarget.status).toBe(200);
      expect(byTarget.body.items.map((o: Operation) => o.id)).toEqual([made[2]!.id]);

      const seen: string[] = [];
      let cursor: string | null = null;
      do {
        const r = await api.get(
          `/api/v1/operations?kind=vm.define&status=succeeded&limit=2${cursor ? `&cursor=${cursor}` : ''}`,
        );
        expect(r.status, r.text).toBe(200);
        expect(r.body.items.length).toBeLessThanOrEqual(2);
        for (const o of r.body.items) {
          StrictOperation.parse(o);
          expect(o).toMatchObject({ kind: 'vm.define', status: 'succeeded' });
          seen.push(o.id);
        }
        cursor = r.body.next;
      } while (cursor);
      expect(new Set(seen).size).toBe(seen.length);
      for (const o of made) expect(seen).toContain(o.id);

      const got = await api.get(`/api/v1/operations/${made[0]!.id}`);
      expect(got.status).toBe(200);
      StrictOperation.parse(got.body);
      const listed = (await api.get(`/api/v1/operations?target_id=${made[0]!.target.id}`)).body.items[0];
      expect(got.body).toEqual(listed);
      expect(got.body).toMatchObject({ id: made[0]!.id, progress: { percent: 100 }, error: null });
    });

    it('lists newest first, pages by cursor without gaps or repeats; order=asc is oldest first', async () => {
      // Rows of their own kind at known times (one second apart), so the order is exact.
      const kindName = `test.order-${kind}`;
      const base = Date.parse('2030-01-01T00:00:00.000Z');
      const rows = Array.from({ length: 7 }, (_, i) => {
        const at = new Date(base + i * 1000).toISOString();
        return {
          id: randomUUID(),
          kind: kindName,
          target_type: 'vm',
          target_id: randomUUID(),
          status: 'succeeded' as const,
          progress_percent: 100,
          progress_message: 'done',
          error_code: null,
          error_message: null,
          params: '{}',
          created_by: 'admin',
          created_at: at,
          updated_at: at,
          finished_at: at,
        };
      });
      await t.manager.services.store.db.insertInto('operations').values(rows).execute();
      const newest = rows.map((r) => r.id).reverse();

      const first = await api.get(`/api/v1/operations?kind=${kindName}`);
      expect(first.body.items.map((o: Operation) => o.id)).toEqual(newest);
      const asc = await api.get(`/api/v1/operations?kind=${kindName}&order=asc`);
      expect(asc.body.items.map((o: Operation) => o.id)).toEqual([...newest].reverse());
      // Unfiltered, the first page starts with the newest operation of all.
      expect((await api.get('/api/v1/operations?limit=1')).body.items[0].id).toBe(newest[0]);

      const paged: string[] = [];
      let cursor: string | null = null;
      do {
        const r = await api.get(
          `/api/v1/operations?kind=${kindName}&limit=3${cursor ? `&cursor=${cursor}` : ''}`,
        );
        expect(r.status, r.text).toBe(200);
        expect(r.body.items.length).toBeLessThanOrEqual(3);
        paged.push(...r.body.items.map((o: Operation) => o.id));
        cursor = r.body.next;
      } while (cursor);
      expect(paged).toEqual(newest);
      expectError(await api.get('/api/v1/operations?order=up'), 400, 'VALIDATION_FAILED');
    });

    it('unknown and malformed ids, bad filters', async () => {
      expectError(await api.get(`/api/v1/operations/${randomUUID()}`), 404, 'OPERATION_NOT_FOUND');
      expectError(await api.get(`/api/v1/operations/${randomUUID()}?wait=1`), 404, 'OPERATION_NOT_FOUND');
      expectError(await api.post(`/api/v1/operations/${randomUUID()}/cancel`), 404, 'OPERATION_NOT_FOUND');
      expectError(await api.get('/api/v1/operations/nope'), 400, 'VALIDATION_FAILED');
      expectError(await api.get('/api/v1/operations?status=done'), 400, 'VALIDATION_FAILED');
      expectError(await api.get(`/api/v1/operations/${randomUUID()}?wait=61`), 400, 'VALIDATION_FAILED');
      expectError(await api.get(`/api/v1/operations/${randomUUID()}?wait=-1`), 400, 'VALIDATION_FAILED');
    });

    it('?wait=2 on an operation that stays queued answers after about 2 s, still queued', async () => {
      const { operation } = await createVm({ name: 'wait-queued' });
      const t0 = Date.now();
      const r = await api.get(`/api/v1/operations/${operation.id}?wait=2`);
      const elapsed = Date.now() - t0;
      expect(r.status, r.text).toBe(200);
      expect(r.body.status).toBe('queued');
      expect(elapsed).toBeGreaterThanOrEqual(1900);
      expect(elapsed).toBeLessThan(5000);
    });

    it('?wait= answers early when another request cancels the operation', async () => {
      const { operation } = await createVm({ name: 'wait-cancel' });
      const t0 = Date.now();
      const waiting = api.get(`/api/v1/operations/${operation.id}?wait=20`);
      await sleep(300);
      const c = await api.post(`/api/v1/operations/${operation.id}/cancel`);
      expect(c.status, c.text).toBe(200);
      const r = await waiting;
      expect(r.status).toBe(200);
      expect(r.body.status).toBe('cancelled');
      expect(Date.now() - t0).toBeLessThan(5000);
      expect(r.body).toEqual((await api.get(`/api/v1/operations/${operation.id}`)).body);
    });

    it('?wait= answers early when a stop supersedes the operation', async () => {
      const { vm, operation } = await createVm({ name: 'wait-stop' });
      const t0 = Date.now();
      const waiting = api.get(`/api/v1/operations/${operation.id}?wait=20`);
      await sleep(300);
      expect((await api.post(`/api/v1/vms/${vm.id}/stop`)).status).toBe(202);
      const r = await waiting;
      expect(r.body.status).toBe('cancelled');
      expect(Date.now() - t0).toBeLessThan(5000);
    });

    it('?wait= on a finished operation (create with start:false) answers at once', async () => {
      const { operation } = await createVm({ name: 'wait-done', start: false });
      const t0 = Date.now();
      const r = await api.get(`/api/v1/operations/${operation.id}?wait=20`);
      expect(r.body.status).toBe('succeeded');
      expect(Date.now() - t0).toBeLessThan(1000);
      const z = await api.get(`/api/v1/operations/${operation.id}?wait=0`);
      expect(z.body).toEqual(r.body);
    });

    it('cancel of a queued operation -> cancelled, the VM reverts; a second cancel -> 409', async () => {
      const { vm, operation } = await createVm({ name: 'cancel-me' });
      const r = await api.post(`/api/v1/operations/${operation.id}/cancel`);
      expect(r.status, r.text).toBe(200);
      StrictOperation.parse(r.body);
      expect(r.body).toMatchObject({ id: operation.id, status: 'cancelled' });
      expect((await api.get(`/api/v1/vms/${vm.id}`)).body).toMatchObject({
        state: 'stopped',
        desired_state: 'stopped',
      });
      const again = await api.post(`/api/v1/operations/${operation.id}/cancel`);
      expectError(again, 409, 'OPERATION_NOT_CANCELLABLE');
      expect(again.body.error.details).toEqual({ status: 'cancelled' });
      expect((await api.get(`/api/v1/operations/${operation.id}`)).body.status).toBe('cancelled');
    });

    it('cancel of a finished operation -> 409 OPERATION_NOT_CANCELLABLE', async () => {
      const { operation } = await createVm({ name: 'cancel-done', start: false });
      const r = await api.post(`/api/v1/operations/${operation.id}/cancel`);
      expectError(r, 409, 'OPERATION_NOT_CANCELLABLE');
      expect(r.body.error.details).toEqual({ status: 'succeeded' });
    });

    it('a running operation is cancellable only where the work can stop', async () => {
      const { vm } = await createVm({ name: 'cancel-running', start: false });
      await t.manager.services.vms.write(vm.id, { state: 'running', desired_state: 'running' });
      const pause = await api.post(`/api/v1/vms/${vm.id}/pause`);
      expect(pause.status).toBe(202);
      await t.manager.services.ops.update(pause.body.operation.id, { status: 'running', percent: 50 });
      expectError(
        await api.post(`/api/v1/operations/${pause.body.operation.id}/cancel`),
        409,
        'OPERATION_NOT_CANCELLABLE',
      );
      expect((await api.get(`/api/v1/operations/${pause.body.operation.id}`)).body.status).toBe('running');

      const { vm: other } = await createVm({ name: 'cancel-running-2', start: false });
      const start = await api.post(`/api/v1/vms/${other.id}/start`);
      await t.manager.services.ops.update(start.body.operation.id, { status: 'running', percent: 50 });
      const c = await api.post(`/api/v1/operations/${start.body.operation.id}/cancel`);
      expect(c.status, c.text).toBe(200);
      expect(c.body.status).toBe('cancelled');
      expect((await api.get(`/api/v1/vms/${other.id}`)).body.state).toBe('stopped');
    });

    it('a viewer reads operations but cannot cancel them', async () => {
      const { operation } = await createVm({ name: 'cancel-viewer' });
      const viewer = client(t.url, viewerToken);
      expect((await viewer.get(`/api/v1/operations/${operation.id}`)).status).toBe(200);
      expectError(await viewer.post(`/api/v1/operations/${operation.id}/cancel`), 403, 'FORBIDDEN');
      expect((await api.get(`/api/v1/operations/${operation.id}`)).body.status).toBe('queued');
    });
  });

  describe.sequential('events', () => {
    it('streams vm.created, vm.updated, operation.created with ids and payloads equal to GET', async () => {
      const s = await open(t.adminToken);
      expect(s.status).toBe(200);
      expect(s.headers.get('content-type')).toMatch(/^text\/event-stream/);
      const { vm, operation } = await createVm({ name: 'ev-1', start: false });

      const created = await s.waitFor((e) => e.event === 'vm.created' && e.data.id === vm.id);
      expect(created.data).toEqual((await api.get(`/api/v1/vms/${vm.id}`)).body);
      Vm.strict().parse(created.data);

      const opCreated = await s.waitFor((e) => e.event === 'operation.created' && e.data.id === operation.id);
      StrictOperation.parse(opCreated.data);
      expect(opCreated.data).toMatchObject({
        kind: 'vm.define',
        status: 'queued',
        target: { type: 'vm', id: vm.id },
      });
      const opDone = await s.waitFor((e) => e.event === 'operation.updated' && e.data.id === operation.id);
      expect(opDone.data).toEqual((await api.get(`/api/v1/operations/${operation.id}`)).body);

      const patch = await api.patch(`/api/v1/vms/${vm.id}`, { labels: { seen: 'yes' } });
      const updated = await s.waitFor((e) => e.event === 'vm.updated' && e.data.id === vm.id);
      expect(updated.data).toEqual(patch.body);
      expect(updated.data).toEqual((await api.get(`/api/v1/vms/${vm.id}`)).body);

      // A started VM: its operation is created queued and then only annotated while no host exists.
      const { vm: v2, operation: op2 } = await createVm({ name: 'ev-2' });
      const vmCreated = await s.waitFor((e) => e.event === 'vm.created' && e.data.id === v2.id);
      expect(vmCreated.data).toEqual(v2);
      const op2Created = await s.waitFor((e) => e.event === 'operation.created' && e.data.id === op2.id);
      expect(op2Created.data).toEqual(op2);
      await sleep(400);
      const lastOf = (id: string) => s.events.filter((e) => e.data?.id === id).at(-1)!.data;
      expect(lastOf(v2.id)).toEqual((await api.get(`/api/v1/vms/${v2.id}`)).body);
      expect(lastOf(op2.id)).toEqual((await api.get(`/api/v1/operations/${op2.id}`)).body);

      // Every event has a numeric id, strictly increasing.
      const ids = s.events.map((e) => Number(e.id));
      expect(ids.every((n) => Number.isInteger(n) && n > 0)).toBe(true);
      expect(ids).toEqual([...ids].sort((a, b) => a - b));
      expect(new Set(ids).size).toBe(ids.length);
    });

    it('concurrent changes all reach a connected client, in id order', async () => {
      const ids: string[] = [];
      for (let i = 0; i < 30; i++) ids.push((await createVm({ name: `ev-burst-${i}`, start: false })).vm.id);
      const s = await open(t.adminToken);
      const marker = await createVm({ name: 'ev-burst-marker', start: false });
      const first = await s.waitFor((e) => e.event === 'vm.created' && e.data.id === marker.vm.id);
      await Promise.all(ids.map((id, i) => api.patch(`/api/v1/vms/${id}`, { labels: { burst: String(i) } })));
      for (const id of ids)
        await s.waitFor(
          (e) => e.event === 'vm.updated' && e.data.id === id && e.data.labels.burst !== undefined,
        );
      const got = s.events.map((e) => Number(e.id)).filter((n) => n >= Number(first.id));
      const maxGot = Math.max(...got);
      const stored = await t.manager.services.store.db
        .selectFrom('events')
        .select('seq')
        .where('seq', '>=', Number(first.id))
        .where('seq', '<=', maxGot)
        .orderBy('seq')
        .execute();
      expect(got).toEqual(stored.map((r) => Number(r.seq)));
    });

    it('reconnecting with Last-Event-ID replays only the missed events', async () => {
      const first = await open(t.adminToken);
      const { vm: before } = await createVm({ name: 'ev-replay-0', start: false });
      const seenEvent = await first.waitFor((e) => e.event === 'vm.created' && e.data.id === before.id);
      await sleep(200);
      const lastId = Number(first.events.at(-1)!.id);
      expect(lastId).toBeGreaterThanOrEqual(Number(seenEvent.id));
      first.close();

      // Missed while disconnected:
      const { vm: missed } = await createVm({ name: 'ev-replay-1', start: false });
      await api.patch(`/api/v1/vms/${missed.id}`, { labels: { missed: 'yes' } });

      for (const how of ['header', 'query'] as const) {
        const again =
          how === 'header'
            ? await open(t.adminToken, { 'last-event-id': String(lastId) })
            : await open(t.adminToken, {}, `?last_event_id=${lastId}`);
        await again.waitFor(
          (e) => e.event === 'vm.updated' && e.data.id === missed.id && e.data.labels.missed === 'yes',
        );
        const got = again.events.map((e) => Number(e.id));
        expect(got.every((n) => n > lastId)).toBe(true);
        expect(again.events.some((e) => e.data.id === before.id && e.event === 'vm.created')).toBe(false);
        const maxGot = Math.max(...got);
        const stored = await t.manager.services.store.db
          .selectFrom('events')
          .select(['seq', 'type'])
          .where('seq', '>', lastId)
          .where('seq', '<=', maxGot)
          .orderBy('seq')
          .execute();
        // Exactly the missed events, in order, none twice.
        expect(got).toEqual(stored.map((r) => Number(r.seq)));
        expect(again.events.map((e) => e.event)).toEqual(stored.map((r) => r.type));
        expect(again.events.find((e) => e.event === 'vm.created')?.data.id).toBe(missed.id);
        again.close();
      }
    });

    it('a viewer does not receive admin-only events; an admin does', async () => {
      const admin = await open(t.adminToken);
      const viewer = await open(viewerToken);
      const username = `ev-user-${randomUUID().slice(0, 8)}`;
      const u = await api.post('/api/v1/users', { username, password: 'a-long-password', role: 'viewer' });
      expect(u.status).toBe(201);
      const adminTok = await api.post('/api/v1/tokens', { name: 'ev-admin-token' });
      const viewerTok = await client(t.url, viewerToken).post('/api/v1/tokens', { name: 'ev-viewer-token' });
      expect([adminTok.status, viewerTok.status]).toEqual([201, 201]);
      const { vm: marker } = await createVm({ name: 'ev-marker', start: false });

      const userEvent = await admin.waitFor((e) => e.event === 'user.created' && e.data.id === u.body.id);
      expect(userEvent.data).toEqual(u.body);
      User.strict().parse(userEvent.data);
      await admin.waitFor((e) => e.event === 'token.created' && e.data.id === viewerTok.body.id);
      await viewer.waitFor((e) => e.event === 'vm.created' && e.data.id === marker.id);
      await admin.waitFor((e) => e.event === 'vm.created' && e.data.id === marker.id);

      expect(viewer.events.filter((e) => e.event.startsWith('user.'))).toEqual([]);
      // Its own token's event, not the admin's.
      expect(viewer.events.filter((e) => e.event.startsWith('token.')).map((e) => e.data.id)).toEqual([
        viewerTok.body.id,
      ]);
      // Token events never carry the secret.
      for (const e of [...admin.events, ...viewer.events]) {
        for (const secret of [adminTok.body.token, viewerTok.body.token])
          expect(JSON.stringify(e.data)).not.toContain(secret);
      }

      // Replay keeps the same rule.
      const from = Math.min(...admin.events.map((e) => Number(e.id))) - 1;
      const replay = await open(viewerToken, { 'last-event-id': String(from) });
      await replay.waitFor((e) => e.event === 'vm.created' && e.data.id === marker.id);
      expect(replay.events.filter((e) => e.event.startsWith('user.'))).toEqual([]);
      expect(admin.events.filter((e) => e.event.startsWith('user.')).length).toBeGreaterThan(0);
    });

    it('the stream needs a user: anonymous -> 401, agent credential -> 403', async () => {
      const anon = await SseClient.open(t.url, {});
      expect(anon.status).toBe(401);
      const { credential } = await registerHost(t.url, t.adminToken, `ev-host-${kind}`);
      const host = await SseClient.open(t.url, { authorization: `Bearer ${credential}` });
      expect(host.status).toBe(403);
    });

    it('closing the manager ends open streams', async () => {
      const other = await startManager(kind);
      const s = await SseClient.open(other.url, { authorization: `Bearer ${other.adminToken}` });
      expect(s.status).toBe(200);
      const t0 = Date.now();
      await other.close();
      expect(Date.now() - t0).toBeLessThan(5000);
      await expect(s.waitFor(() => false, 5000)).rejects.toThrow(/ended/);
    });
  });
});
