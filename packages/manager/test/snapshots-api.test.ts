/**
 * Snapshots over HTTP on both datastores, against signature-checking stand-in agents: taking
 * them (and the refusals that record nothing), a snapshot driven again after its manager
 * stopped, listing, restore in place, clones placed on the snapshot's host with their own
 * network identity, deletes that a Diff, a booting VM or the host can refuse, snapshots
 * outliving their VM, image delete refused while a snapshot needs the image, viewers kept from
 * mutating, events and OpenAPI.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { type Operation, Snapshot, SnapshotInstantiateResponse, Vm } from '@nqvm/api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerPathImage } from '../src/images/images';
import { client, DATASTORES, startManager, type TestManager, userWithRole } from './harness';
import { expectError, failingFields, rowsOf, until } from './helpers';
import { SNAPSHOT_SIZES, StandInAgent } from './stand-in-agent';

const StrictSnapshot = Snapshot.strict();
const StrictVm = Vm.strict();
const StrictInstantiated = SnapshotInstantiateResponse.strict();
const PASSWORD = 'snapshot-guest-pw-123';
const TOTAL_BYTES = SNAPSHOT_SIZES.state_bytes + SNAPSHOT_SIZES.memory_bytes + SNAPSHOT_SIZES.disk_bytes;
const FIRECRACKER = [
  {
    kind: 'firecracker' as const,
    available: true,
    version: '1.7.0',
    kvm: true,
    features: ['snapshot', 'diff-snapshot'],
  },
];

describe.concurrent.each(DATASTORES)('snapshots API on %s', (kind) => {
  let t: TestManager;
  let api: ReturnType<typeof client>;
  let kernelId: string;
  let rootfsId: string;
  let networkId: string;
  /** The scheduler prefers A (most memory), then B; F is the only Firecracker host. */
  let hostA: StandInAgent;
  let hostB: StandInAgent;
  let hostF: StandInAgent;

  beforeAll(async () => {
    t = await startManager(kind);
    api = client(t.url, t.adminToken);
    const store = t.manager.services.store;
    const file = (name: string) => {
      const p = path.join(t.dataDir, name);
      fs.writeFileSync(p, Buffer.alloc(4096, name.length));
      return p;
    };
    kernelId = await registerPathImage(store, {
      name: 'snap-kernel',
      kind: 'kernel',
      path: file('vmlinux'),
      isDefault: true,
    });
    rootfsId = await registerPathImage(store, {
      name: 'snap-rootfs',
      kind: 'rootfs',
      path: file('rootfs.ext4'),
    });
    const n = await api.post('/api/v1/networks', {
      name: 'snap-net',
      kind: 'isolated',
      cidr: '10.78.0.0/24',
    });
    expect(n.status, n.text).toBe(201);
    networkId = n.body.id;
    const pem = t.manager.services.managerKey.publicKeyPem;
    hostA = await StandInAgent.join(t.url, t.adminToken, pem, `snap-a-${kind}`, 32_768);
    hostB = await StandInAgent.join(t.url, t.adminToken, pem, `snap-b-${kind}`, 16_384);
    hostF = await StandInAgent.join(t.url, t.adminToken, pem, `snap-f-${kind}`, 8_192, FIRECRACKER);
  });
  afterAll(async () => {
    await hostA?.close();
    await hostB?.close();
    await hostF?.close();
    await t?.close();
  });

  const db = () => t.manager.services.store.db;
  const hostOf = (id: string | null) => [hostA, hostB, hostF].find((h) => h.hostId === id)!;
  const vmRow = (id: string) => db().selectFrom('vms').selectAll().where('id', '=', id).executeTakeFirst();
  const snapshotRow = (id: string) =>
    db().selectFrom('snapshots').selectAll().where('id', '=', id).executeTakeFirst();
  /** What a refused request must leave as it was. */
  const recorded = async () => ({
    snapshots: await db().selectFrom('snapshots').selectAll().orderBy('id').execute(),
    operations: await db().selectFrom('operations').selectAll().orderBy('id').execute(),
    vms: await db().selectFrom('vms').selectAll().orderBy('id').execute(),
  });
  const snapshotCalls = () =>
    [hostA, hostB, hostF].flatMap((h) => h.calls).filter((c) => c.path.includes('snapshots'));
  const eventsOf = async (id: string) =>
    (
      await db()
        .selectFrom('events')
        .select(['type', 'data'])
        .where('resource_id', '=', id)
        .orderBy('seq')
        .execute()
    ).map((e) => ({ type: e.type, data: JSON.parse(e.data) }));

  const createVm = async (body: Record<string, unknown>): Promise<Vm> => {
    const r = await api.post('/api/v1/vms', body);
    expect(r.status, r.text).toBe(202);
    return StrictVm.parse(r.body.vm);
  };
  const waitVm = (id: string, state: string) =>
    until(`VM ${id} to be ${state}`, async () => {
      const r = await api.get(`/api/v1/vms/${id}`);
      return r.body?.state === state ? StrictVm.parse(r.body) : undefined;
    });
  /** Creates a VM and waits until it runs and its operation is over (nothing changes after). */
  const runningVm = async (body: Record<string, unknown>): Promise<Vm> => {
    const r = await api.post('/api/v1/vms', { ...body, start: true });
    expect(r.status, r.text).toBe(202);
    expect((await waitOp(r.body.operation.id)).status).toBe('succeeded');
    return waitVm(r.body.vm.id, 'running');
  };
  /** Waits until the VM's host has acknowledged its generation. */
  const settled = (id: string) =>
    until(`VM ${id} to settle`, async () => {
      const row = await vmRow(id);
      return row && (row.host_id === null || row.observed_generation >= row.generation);
    });
  const vmNamed = async (name: string): Promise<Vm> =>
    StrictVm.parse((await api.get(`/api/v1/vms?name=${name}`)).body.items.find((v: Vm) => v.name === name));
  const deleteVm = async (id: string, query = '') => {
    // A command still in flight would hold the delete back for the reconciler's resend window.
    await settled(id);
    const r = await api.del(`/api/v1/vms/${id}${query}`);
    expect(r.status, r.text).toBe(202);
    expect((await waitOp(r.body.operation.id)).status).toBe('succeeded');
    await until(`VM ${id} to be gone`, async () => (await vmRow(id)) === undefined);
  };
  const waitOp = (id: string) =>
    until(`operation ${id} to finish`, async () => {
      const op = (await api.get(`/api/v1/operations/${id}`)).body as Operation;
      return ['succeeded', 'failed', 'cancelled'].includes(op.status) ? op : undefined;
    });
  const getSnapshot = async (id: string): Promise<Snapshot> => {
    const r = await api.get(`/api/v1/snapshots/${id}`);
    expect(r.status, r.text).toBe(200);
    return StrictSnapshot.parse(r.body);
  };
  /** Takes a snapshot and waits for its operation; answers the snapshot as GET shows it. */
  const take = async (vmId: string, body: Record<string, unknown>): Promise<Snapshot> => {
    const r = await api.post(`/api/v1/vms/${vmId}/snapshots`, body);
    expect(r.status, r.text).toBe(202);
    const op = await waitOp(r.body.operation.id);
    expect(op.status, JSON.stringify(op)).toBe('succeeded');
    return getSnapshot(r.body.snapshot.id);
  };
  const instantiate = async (id: string, body: Record<string, unknown>) => {
    const r = await api.post(`/api/v1/snapshots/${id}/instantiate`, body);
    expect(r.status, r.text).toBe(202);
    return StrictInstantiated.parse(r.body);
  };
  const cordoned = async <T>(hosts: StandInAgent[], fn: () => Promise<T>): Promise<T> => {
    for (const h of hosts) expect((await api.post(`/api/v1/hosts/${h.hostId}/cordon`)).status).toBe(200);
    try {
      return await fn();
    } finally {
      for (const h of hosts) await api.post(`/api/v1/hosts/${h.hostId}/uncordon`);
    }
  };

  describe.sequential('taking snapshots', () => {
    it("takes a snapshot: the host writes it, the operation succeeds, the row is ready with the host's sizes", async () => {
      const vm = await runningVm({
        name: 'take-src',
        vcpu: 2,
        mem_mib: 512,
        rootfs_image_id: rootfsId,
        networks: [{ network_id: networkId }],
        guest_config: { username: 'dev', password: PASSWORD },
        restart_policy: 'on-failure',
      });
      const r = await api.post(`/api/v1/vms/${vm.id}/snapshots`, {
        name: 'take-1',
        description: 'before upgrade',
      });
      expect(r.status, r.text).toBe(202);
      const created = StrictSnapshot.parse(r.body.snapshot);
      expect(created).toMatchObject({
        name: 'take-1',
        description: 'before upgrade',
        status: 'creating',
        vm_id: vm.id,
        vm_name: 'take-src',
        host_id: vm.host_id,
        snapshot_type: 'Full',
        vcpu: 2,
        mem_mib: 512,
        size_bytes: null,
        sizes: null,
        created_by: 'admin',
      });
      expect(r.body.operation).toMatchObject({
        kind: 'snapshot.create',
        target: { type: 'snapshot', id: created.id },
      });
      const op = await waitOp(r.body.operation.id);
      expect(op).toMatchObject({ status: 'succeeded', progress: { percent: 100 }, error: null });

      const snap = await getSnapshot(created.id);
      expect(snap).toMatchObject({
        status: 'ready',
        vmm: 'qemu',
        size_bytes: TOTAL_BYTES,
        sizes: SNAPSHOT_SIZES,
        guest_agent: false,
        parent_id: null,
        error: null,
      });
      const agent = hostOf(vm.host_id);
      expect(agent.calls.filter((c) => c.path.includes(created.id))).toEqual([
        { method: 'PUT', path: `/v1/vms/${vm.id}/snapshots/${created.id}`, body: { type: 'Full' } },
      ]);

      // What a clone needs is kept under the VM spec's names, the password only as its hash.
      const spec = JSON.parse((await snapshotRow(snap.id))!.spec);
      const vmSpec = JSON.parse((await vmRow(vm.id))!.spec);
      expect(spec).toMatchObject({
        source_vm_id: vm.id,
        name: 'take-src',
        vcpu: 2,
        mem_mib: 512,
        vmm: 'qemu',
        restart_policy: 'on-failure',
        // The default kernel the VM runs with, by id: a later default does not change the clone.
        kernel_image_id: kernelId,
        rootfs_image_id: rootfsId,
        initrd_image_id: null,
        networks: [{ network_id: networkId }],
        guest_config: { username: 'dev', password_hash: vmSpec.guest_config.password_hash },
      });
      expect(spec.guest_config.password_hash).toMatch(/^\$6\$/);
      for (const table of ['snapshots', 'operations', 'events'])
        expect(JSON.stringify(await rowsOf(t.manager.services.store, table))).not.toContain(PASSWORD);

      const events = await eventsOf(snap.id);
      expect(events.map((e) => e.type)).toEqual(['snapshot.created', 'snapshot.updated']);
      expect(events[0]!.data).toEqual(created);
      expect(events[1]!.data).toEqual(snap);
    });

    it('refusals record nothing: a VM not running, volumes attached, Diff where unsupported, a taken name', async () => {
      const running = await vmNamed('take-src');
      const stopped = await createVm({ name: 'ref-stopped', start: false });
      const vol = await api.post('/api/v1/volumes', { name: 'ref-vol', size_mib: 8 });
      expect(vol.status, vol.text).toBe(201);
      const withVolume = await runningVm({ name: 'ref-vol-vm', volumes: [{ volume_id: vol.body.id }] });
      const fc = await runningVm({ name: 'ref-fc', vmm: 'firecracker' });
      expect(fc.host_id).toBe(hostF.hostId);
      const before = await recorded();
      const callsBefore = snapshotCalls().length;

      const cases: Array<[string, Record<string, unknown>, number, string]> = [
        [stopped.id, { name: 'ref-1' }, 409, 'VM_INVALID_STATE'],
        [withVolume.id, { name: 'ref-2' }, 409, 'SNAPSHOT_UNSUPPORTED'],
        [running.id, { name: 'ref-3', snapshot_type: 'Diff' }, 400, 'SNAPSHOT_TYPE_UNSUPPORTED'],
        [running.id, { name: 'take-1' }, 409, 'NAME_TAKEN'],
        [randomUUID(), { name: 'ref-4' }, 404, 'VM_NOT_FOUND'],
      ];
      for (const [vmId, body, status, code] of cases) {
        const r = await api.post(`/api/v1/vms/${vmId}/snapshots`, body);
        expectError(r, status, code);
        if (code === 'SNAPSHOT_UNSUPPORTED')
          expect(r.body.error.message).toContain('volumes are not captured; detach them first');
        if (code === 'SNAPSHOT_TYPE_UNSUPPORTED') expect(r.body.error.message).toContain('firecracker');
      }
      for (const [body, field] of [
        [{ name: 'bad name' }, 'body.name'],
        [{ name: 'x', snapshot_type: 'Incremental' }, 'body.snapshot_type'],
        [{ name: 'x', host_id: randomUUID() }, 'body'],
        [{}, 'body.name'],
      ] as const) {
        const r = await api.post(`/api/v1/vms/${running.id}/snapshots`, body);
        expectError(r, 400, 'VALIDATION_FAILED');
        expect(failingFields(r)).toContain(field);
      }

      // Firecracker without dirty-page tracking on the host: no Diff either.
      const features = hostF.capacity.drivers[0]!.features;
      hostF.capacity.drivers[0]!.features = ['snapshot'];
      const reported = async (has: boolean) =>
        until(`host F to report diff-snapshot ${has}`, async () => {
          const h = (await api.get(`/api/v1/hosts/${hostF.hostId}`)).body;
          return h.capacity.drivers[0].features.includes('diff-snapshot') === has;
        });
      try {
        await reported(false);
        const r = await api.post(`/api/v1/vms/${fc.id}/snapshots`, { name: 'ref-5', snapshot_type: 'Diff' });
        expectError(r, 400, 'SNAPSHOT_TYPE_UNSUPPORTED');
        expect(r.body.error.message).toContain('diff snapshots');
      } finally {
        hostF.capacity.drivers[0]!.features = features;
      }
      await reported(true);

      const after = await recorded();
      expect(after.snapshots).toEqual(before.snapshots);
      expect(after.operations).toEqual(before.operations);
      expect(snapshotCalls().length).toBe(callsBefore);
      await deleteVm(withVolume.id, '?force=true');
    });

    it("the host's failure ends the snapshot failed and its operation failed SNAPSHOT_FAILED with the host's message", async () => {
      const vm = await vmNamed('take-src');
      const agent = hostOf(vm.host_id);
      agent.snapshotAnswer = {
        status: 'failed',
        error: 'disk full while writing memory',
        guest_agent: false,
      };
      try {
        const r = await api.post(`/api/v1/vms/${vm.id}/snapshots`, { name: 'fail-1' });
        expect(r.status, r.text).toBe(202);
        const op = await waitOp(r.body.operation.id);
        expect(op).toMatchObject({
          status: 'failed',
          error: {
            code: 'SNAPSHOT_FAILED',
            message: expect.stringContaining('disk full while writing memory'),
          },
        });
        expect(await getSnapshot(r.body.snapshot.id)).toMatchObject({
          status: 'failed',
          error: expect.stringContaining('disk full while writing memory'),
          sizes: null,
        });
      } finally {
        agent.snapshotAnswer = { status: 'ready', error: null, guest_agent: false };
      }

      // The host has no VMM for it (409 VM_INVALID_STATE there): that refusal is the error.
      const spec = agent.specs.get(vm.id)!;
      agent.specs.delete(vm.id);
      try {
        const r = await api.post(`/api/v1/vms/${vm.id}/snapshots`, { name: 'fail-2' });
        const op = await waitOp(r.body.operation.id);
        expect(op).toMatchObject({
          status: 'failed',
          error: { code: 'SNAPSHOT_FAILED', message: expect.stringContaining('has no running VMM here') },
        });
        expect((await getSnapshot(r.body.snapshot.id)).status).toBe('failed');
      } finally {
        agent.specs.set(vm.id, spec);
      }
    });

    it('while the host writes it: creating, its operation running with progress; nothing else may use it yet', async () => {
      const vm = await vmNamed('take-src');
      const agent = hostOf(vm.host_id);
      const release = agent.holdSnapshots();
      let id = '';
      let opId = '';
      try {
        const r = await api.post(`/api/v1/vms/${vm.id}/snapshots`, { name: 'held-1' });
        expect(r.status, r.text).toBe(202);
        id = r.body.snapshot.id;
        opId = r.body.operation.id;
        const op = await until('the operation to run', async () => {
          const o = (await api.get(`/api/v1/operations/${opId}`)).body as Operation;
          return o.status === 'running' ? o : undefined;
        });
        expect(op.progress.message).toBe(
          `pausing the VM and writing its memory and disk on host snap-a-${kind}`,
        );
        expect((await getSnapshot(id)).status).toBe('creating');
        expectError(await api.del(`/api/v1/snapshots/${id}`), 409, 'SNAPSHOT_NOT_READY');
        expectError(
          await api.post(`/api/v1/vms/${vm.id}/snapshots`, { name: 'held-2' }),
          409,
          'VM_INVALID_STATE',
        );
        expectError(
          await api.post(`/api/v1/snapshots/${id}/instantiate`, { name: 'held-clone' }),
          409,
          'SNAPSHOT_NOT_READY',
        );
        expectError(
          await api.post(`/api/v1/vms/${vm.id}/restore`, { snapshot_id: id }),
          409,
          'SNAPSHOT_NOT_READY',
        );
        expect(
          await db().selectFrom('snapshots').select('id').where('name', '=', 'held-2').execute(),
        ).toEqual([]);
      } finally {
        release();
      }
      expect((await waitOp(opId)).status).toBe('succeeded');
      expect((await getSnapshot(id)).status).toBe('ready');
    });

    it('a creating snapshot no manager is asking for is driven again; one whose host is gone ends failed', async () => {
      const vm = await vmNamed('take-src');
      const agent = hostOf(vm.host_id);
      const template = (await snapshotRow(
        (
          await api.get(`/api/v1/snapshots?vm_id=${vm.id}`)
        ).body.items[0].id,
      ))!;
      // As a manager that stopped mid-way left them: claims expired a minute ago.
      const at = new Date(Date.now() - 60_000).toISOString();
      const orphan = {
        ...template,
        id: randomUUID(),
        name: 'orphan-1',
        status: 'creating' as const,
        claimed_until: at,
      };
      const lost = { ...orphan, id: randomUUID(), name: 'orphan-2', host_id: null };
      for (const row of [orphan, lost]) {
        await db()
          .insertInto('snapshots')
          .values({ ...row, sizes: null, size_bytes: null, created_at: at, updated_at: at })
          .execute();
      }
      const ops = t.manager.services.ops;
      const [orphanOp, lostOp] = await Promise.all(
        [orphan, lost].map((s) =>
          ops.create({ kind: 'snapshot.create', target: { type: 'snapshot', id: s.id }, createdBy: 'admin' }),
        ),
      );
      expect((await waitOp(orphanOp!.id)).status).toBe('succeeded');
      expect(await getSnapshot(orphan.id)).toMatchObject({ status: 'ready', sizes: SNAPSHOT_SIZES });
      expect(agent.calls.filter((c) => c.path === `/v1/vms/${vm.id}/snapshots/${orphan.id}`)).toHaveLength(1);
      expect(await waitOp(lostOp!.id)).toMatchObject({
        status: 'failed',
        error: { code: 'SNAPSHOT_FAILED', message: expect.stringContaining('is gone') },
      });
      expect((await getSnapshot(lost.id)).status).toBe('failed');
      expect(snapshotCalls().some((c) => c.path.includes(lost.id))).toBe(false);
    });

    it('names are unique per VM: two VMs each take before-upgrade, the same VM twice is 409 naming it', async () => {
      const one = await vmNamed('take-src');
      const two = await runningVm({ name: 'name-2' });
      const a = await take(one.id, { name: 'before-upgrade' });
      const b = await take(two.id, { name: 'before-upgrade' });
      expect([a.vm_id, b.vm_id]).toEqual([one.id, two.id]);
      const before = await recorded();
      const again = await api.post(`/api/v1/vms/${two.id}/snapshots`, { name: 'before-upgrade' });
      expectError(again, 409, 'NAME_TAKEN');
      expect(again.body.error.message).toBe('VM name-2 has a snapshot named "before-upgrade"');
      expect(again.body.error.details).toEqual({ field: 'name', vm_id: two.id });
      expect(await recorded()).toEqual(before);
      const named = async (q: string) =>
        (await api.get(`/api/v1/snapshots?${q}`)).body.items.map((s: Snapshot) => s.id);
      expect(await named('name=before-upgrade')).toEqual([a.id, b.id]);
      expect(await named(`name=before-upgrade&vm_id=${two.id}`)).toEqual([b.id]);
      expectError(await api.get('/api/v1/snapshots?name=bad%20name'), 400, 'VALIDATION_FAILED');
      // A deleted VM's snapshots keep their names beside those of a new VM of the same name.
      await deleteVm(two.id, '?force=true');
      const three = await runningVm({ name: 'name-2' });
      const c = await take(three.id, { name: 'before-upgrade' });
      expect(await named('name=before-upgrade')).toEqual([a.id, b.id, c.id]);
      await deleteVm(three.id, '?force=true');
    });

    it('lists with filters and cursor pagination, also per VM', async () => {
      const vm = await runningVm({ name: 'list-vm' });
      const ids: string[] = [];
      for (let i = 0; i < 3; i++) ids.push((await take(vm.id, { name: `list-${i}` })).id);
      const seen: string[] = [];
      const sizes: number[] = [];
      let cursor: string | null = null;
      do {
        const r = await api.get(
          `/api/v1/snapshots?vm_id=${vm.id}&limit=2${cursor ? `&cursor=${cursor}` : ''}`,
        );
        expect(r.status, r.text).toBe(200);
        for (const s of r.body.items) StrictSnapshot.parse(s);
        sizes.push(r.body.items.length);
        seen.push(...r.body.items.map((s: Snapshot) => s.id));
        cursor = r.body.next;
      } while (cursor);
      expect(sizes).toEqual([2, 1]);
      expect(seen).toEqual(ids);
      const perVm = await api.get(`/api/v1/vms/${vm.id}/snapshots`);
      expect(perVm.status, perVm.text).toBe(200);
      expect(perVm.body.items.map((s: Snapshot) => s.id)).toEqual(ids);
      const first = await api.get(`/api/v1/vms/${vm.id}/snapshots?limit=1`);
      expect(first.body.items.map((s: Snapshot) => s.id)).toEqual([ids[0]]);
      expect(first.body.next).toEqual(expect.any(String));

      const idsOf = async (q: string) =>
        (await api.get(`/api/v1/snapshots?${q}&limit=500`)).body.items.map((s: Snapshot) => s.id);
      expect(await idsOf(`vm_id=${vm.id}&status=ready`)).toEqual(ids);
      expect(await idsOf(`vm_id=${vm.id}&status=failed`)).toEqual([]);
      expect(await idsOf(`host_id=${vm.host_id}&vm_id=${vm.id}`)).toEqual(ids);
      const elsewhere = [hostA, hostB, hostF].find((h) => h.hostId !== vm.host_id)!;
      expect(await idsOf(`host_id=${elsewhere.hostId}&vm_id=${vm.id}`)).toEqual([]);
      const failed = await idsOf('status=failed');
      expect(failed.length).toBeGreaterThanOrEqual(2);
      for (const s of (await api.get('/api/v1/snapshots?status=failed&limit=500')).body.items)
        expect(s.status).toBe('failed');

      for (const [q, field] of [
        ['vm_id=x', 'querystring.vm_id'],
        ['host_id=1', 'querystring.host_id'],
        ['status=done', 'querystring.status'],
        ['limit=0', 'querystring.limit'],
      ]) {
        const r = await api.get(`/api/v1/snapshots?${q}`);
        expectError(r, 400, 'VALIDATION_FAILED');
        expect(failingFields(r)).toEqual([field]);
      }
      expectError(await api.get('/api/v1/snapshots?cursor=garbage!'), 400, 'INVALID_CURSOR');
      expectError(await api.get(`/api/v1/vms/${randomUUID()}/snapshots`), 404, 'VM_NOT_FOUND');
      expectError(await api.get(`/api/v1/snapshots/${randomUUID()}`), 404, 'SNAPSHOT_NOT_FOUND');
      const bad = await api.get('/api/v1/snapshots/not-a-uuid');
      expectError(bad, 400, 'VALIDATION_FAILED');
      expect(failingFields(bad)).toEqual(['params.id']);
    });
  });

  describe.sequential('restore in place', () => {
    it('restores a running VM: a new generation whose command carries restore; the operation succeeds once it runs', async () => {
      const vm = await runningVm({ name: 'rs-vm' });
      const snap = await take(vm.id, { name: 'rs-1' });
      const agent = hostOf(vm.host_id);
      const before = (await vmRow(vm.id))!;
      const r = await api.post(`/api/v1/vms/${vm.id}/restore`, { snapshot_id: snap.id });
      expect(r.status, r.text).toBe(202);
      const generation = before.generation + 1;
      expect(StrictVm.parse(r.body.vm)).toMatchObject({
        generation,
        state: 'starting',
        desired_state: 'running',
      });
      expect(r.body.operation).toMatchObject({ kind: 'vm.restore', target: { type: 'vm', id: vm.id } });
      expect((await waitOp(r.body.operation.id)).status).toBe('succeeded');
      const commands = agent.commands.get(vm.id)!;
      const restoring = commands.filter((c) => c.generation === generation);
      expect(restoring.length).toBeGreaterThanOrEqual(1);
      for (const c of restoring)
        expect(c).toMatchObject({ desired: 'running', restore: { snapshot_id: snap.id } });
      expect(commands.filter((c) => c.generation < generation).every((c) => c.restore === null)).toBe(true);
      expect((await waitVm(vm.id, 'running')).generation).toBe(generation);

      // A stopped VM restores too; the generation after a restore boots nothing from a snapshot.
      expect((await api.post(`/api/v1/vms/${vm.id}/stop`, { force: true })).status).toBe(202);
      await waitVm(vm.id, 'stopped');
      const again = await api.post(`/api/v1/vms/${vm.id}/restore`, { snapshot_id: snap.id });
      expect(again.status, again.text).toBe(202);
      expect((await waitOp(again.body.operation.id)).status).toBe('succeeded');
      const restoredAt = again.body.vm.generation;
      expect(agent.commands.get(vm.id)!.find((c) => c.generation === restoredAt)?.restore).toEqual({
        snapshot_id: snap.id,
      });
      const paused = await api.post(`/api/v1/vms/${vm.id}/pause`);
      expect(paused.status, paused.text).toBe(202);
      expect((await waitOp(paused.body.operation.id)).status).toBe('succeeded');
      const pauseCmd = agent.commands.get(vm.id)!.find((c) => c.generation === paused.body.vm.generation);
      expect(pauseCmd).toMatchObject({ desired: 'paused', restore: null });
      // Paused restores as well.
      const fromPaused = await api.post(`/api/v1/vms/${vm.id}/restore`, { snapshot_id: snap.id });
      expect(fromPaused.status, fromPaused.text).toBe(202);
      expect((await waitOp(fromPaused.body.operation.id)).status).toBe('succeeded');
    });

    it("refusals change nothing: another VM's snapshot 400, not ready, another host, another size, a VM in transition", async () => {
      const vm = await vmNamed('rs-vm');
      await waitVm(vm.id, 'running');
      const own = (await api.get(`/api/v1/snapshots?vm_id=${vm.id}`)).body.items[0] as Snapshot;
      const other = await vmNamed('take-src');
      const foreign = (await api.get(`/api/v1/snapshots?vm_id=${other.id}&status=ready`)).body
        .items[0] as Snapshot;
      const failed = (await api.get(`/api/v1/snapshots?vm_id=${other.id}&status=failed`)).body
        .items[0] as Snapshot;
      const restore = (vmId: string, snapshotId: string) =>
        api.post(`/api/v1/vms/${vmId}/restore`, { snapshot_id: snapshotId });
      let before = await recorded();

      const mismatch = await restore(vm.id, foreign.id);
      expectError(mismatch, 400, 'SNAPSHOT_MISMATCH');
      expect(mismatch.body.error.message).toContain(`/api/v1/snapshots/${foreign.id}/instantiate`);
      expectError(await restore(other.id, failed.id), 409, 'SNAPSHOT_NOT_READY');
      expectError(await restore(vm.id, randomUUID()), 404, 'SNAPSHOT_NOT_FOUND');
      expectError(await restore(randomUUID(), own.id), 404, 'VM_NOT_FOUND');
      for (const [body, field] of [
        [{}, 'body.snapshot_id'],
        [{ snapshot_id: 'rs-1' }, 'body.snapshot_id'],
        [{ snapshot_id: own.id, force: true }, 'body'],
      ] as const) {
        const r = await api.post(`/api/v1/vms/${vm.id}/restore`, body);
        expectError(r, 400, 'VALIDATION_FAILED');
        expect(failingFields(r)).toContain(field);
      }

      // The files live on another host than the VM now.
      const elsewhere = [hostA, hostB].find((h) => h.hostId !== vm.host_id)!;
      await db()
        .updateTable('snapshots')
        .set({ host_id: elsewhere.hostId })
        .where('id', '=', own.id)
        .execute();
      try {
        const r = await restore(vm.id, own.id);
        expectError(r, 409, 'CONFLICT');
        expect(r.body.error.message).toContain(`host ${elsewhere === hostA ? 'snap-a' : 'snap-b'}-${kind}`);
      } finally {
        await db().updateTable('snapshots').set({ host_id: vm.host_id }).where('id', '=', own.id).execute();
      }

      // A VM in transition (its host silent meanwhile, so the state holds).
      const resume = await hostOf(vm.host_id).silence();
      try {
        await t.manager.services.vms.write(vm.id, { state: 'stopping' });
        before = await recorded();
        const r = await restore(vm.id, own.id);
        expectError(r, 409, 'VM_INVALID_STATE');
        expect(r.body.error.details).toMatchObject({ state: 'stopping', action: 'restore' });
        expect(await recorded()).toEqual(before);
        await t.manager.services.vms.write(vm.id, { state: 'running' });
      } finally {
        resume();
      }
      expect((await recorded()).operations).toEqual(before.operations);

      // Resized since the snapshot: no restore until it is sized back.
      expect((await api.post(`/api/v1/vms/${vm.id}/stop`, { force: true })).status).toBe(202);
      await waitVm(vm.id, 'stopped');
      expect((await api.patch(`/api/v1/vms/${vm.id}`, { mem_mib: 384 })).status).toBe(200);
      await settled(vm.id);
      before = await recorded();
      const resized = await restore(vm.id, own.id);
      expectError(resized, 409, 'CONFLICT');
      expect(resized.body.error.details).toMatchObject({ mem_mib: 384, snapshot_mem_mib: 256 });
      expect(await recorded()).toEqual(before);
      expect((await api.patch(`/api/v1/vms/${vm.id}`, { mem_mib: 256 })).status).toBe(200);
      const ok = await restore(vm.id, own.id);
      expect(ok.status, ok.text).toBe(202);
      expect((await waitOp(ok.body.operation.id)).status).toBe('succeeded');
    });
  });

  describe.sequential('clones', () => {
    let source: Vm;
    let snap: Snapshot;

    it("a clone always lands on the snapshot's host, with a new MAC and address on the same network, booting from the snapshot", async () => {
      // B takes the source; A, with more free memory, would take any VM the scheduler is free to place.
      source = await cordoned([hostA], () =>
        runningVm({
          name: 'cl-src',
          vcpu: 2,
          mem_mib: 512,
          rootfs_image_id: rootfsId,
          networks: [{ network_id: networkId }],
          guest_config: { username: 'dev', password: PASSWORD, hostname: 'db' },
          restart_policy: 'on-failure',
          labels: { app: 'db' },
        }),
      );
      expect(source.host_id).toBe(hostB.hostId);
      snap = await take(source.id, { name: 'cl-1' });
      const free = await runningVm({ name: 'cl-free', networks: [] });
      expect(free.host_id).toBe(hostA.hostId);

      const sourceHash = JSON.parse((await vmRow(source.id))!.spec).guest_config.password_hash;
      const clones: Vm[] = [];
      for (let i = 0; i < 3; i++) {
        const out = await instantiate(snap.id, { name: `cl-${i}`, labels: { clone: String(i) } });
        expect(out.placement).toEqual({
          host_id: hostB.hostId,
          reason: `the snapshot's files are on host snap-b-${kind}: the VM runs there`,
        });
        expect(out.operation).toMatchObject({
          kind: 'snapshot.instantiate',
          target: { type: 'vm', id: out.vm.id },
        });
        expect(out.warnings).toEqual([
          expect.stringMatching(/entropy pool.*machine-id.*SSH host keys/),
          expect.stringMatching(/anti-spoofing/),
        ]);
        expect((await waitOp(out.operation.id)).status).toBe('succeeded');
        const clone = await waitVm(out.vm.id, 'running');
        expect(clone).toMatchObject({
          host_id: hostB.hostId,
          vcpu: 2,
          mem_mib: 512,
          vmm: 'qemu',
          kernel_image_id: kernelId,
          rootfs_image_id: rootfsId,
          restart_policy: 'never',
          labels: { clone: String(i) },
          guest_config: { username: 'dev', has_password: true, hostname: null },
          generation: 1,
        });
        expect(clone.networks).toHaveLength(1);
        expect(clone.networks[0]!.network_id).toBe(networkId);
        expect(clone.networks[0]!.mac).not.toBe(source.networks[0]!.mac);
        expect(clone.networks[0]!.ip).not.toBe(source.networks[0]!.ip);
        expect(clone.networks[0]!.ip).toMatch(/^10\.78\.0\./);
        expect(hostB.commands.get(clone.id)![0]).toMatchObject({
          generation: 1,
          desired: 'running',
          restore: { snapshot_id: snap.id },
        });
        expect(
          [hostA, hostF].some((h) => h.calls.some((c) => c.path.startsWith(`/v1/vms/${clone.id}`))),
        ).toBe(false);
        const spec = JSON.parse((await vmRow(clone.id))!.spec);
        expect(spec.source_snapshot_id).toBe(snap.id);
        expect(spec.guest_config.password_hash).toBe(sourceHash);
        clones.push(clone);
      }
      const nics = [source, ...clones].map((v) => v.networks[0]!);
      expect(new Set(nics.map((n) => n.mac)).size).toBe(4);
      expect(new Set(nics.map((n) => n.ip)).size).toBe(4);
      for (const c of [...clones, free]) await deleteVm(c.id, '?force=true');
    });

    it('when the guest ran the guest agent, the warning about NICs is left out', async () => {
      hostB.snapshotAnswer = { status: 'ready', error: null, guest_agent: true };
      let withAgent: Snapshot;
      try {
        withAgent = await take(source.id, { name: 'cl-ga' });
      } finally {
        hostB.snapshotAnswer = { status: 'ready', error: null, guest_agent: false };
      }
      expect(withAgent.guest_agent).toBe(true);
      const out = await instantiate(withAgent.id, { name: 'cl-ga-vm' });
      expect(out.warnings).toHaveLength(1);
      expect(out.warnings[0]).toContain('entropy pool');
      await waitVm(out.vm.id, 'running');
      await deleteVm(out.vm.id, '?force=true');
    });

    it("the snapshot's host cordoned while another is ready -> refused at once naming the snapshot and its host; nothing made", async () => {
      await cordoned([hostB], async () => {
        const before = await recorded();
        const calls = [hostA, hostB, hostF].map((h) => h.calls.length);
        const r = await api.post(`/api/v1/snapshots/${snap.id}/instantiate`, { name: 'cl-stuck' });
        expectError(r, 409, 'PINNED_HOST_UNAVAILABLE');
        expect(r.body.error.message).toBe(
          `the VM boots from snapshot cl-1, whose files are on host snap-b-${kind}, which is cordoned: ` +
            `the VM can run only there; uncordon it (nqvm host uncordon snap-b-${kind})`,
        );
        expect(r.body.error.details).toEqual({
          snapshot_id: snap.id,
          host_id: hostB.hostId,
          host_name: `snap-b-${kind}`,
          host_state: 'cordoned',
        });
        expect(await recorded()).toEqual(before);
        // No host was asked for anything (heartbeats are the agents' requests, not the manager's).
        expect([hostA, hostB, hostF].map((h) => h.calls.length)).toEqual(calls);
      });
    });

    it("the snapshot's host has no room for the clone -> refused at once naming what is short; nothing made", async () => {
      // B offers only a little more memory than the source VM takes there.
      const memMib = hostB.capacity.mem_mib;
      hostB.capacity.mem_mib = 700;
      await hostB.heartbeat();
      try {
        const before = await recorded();
        const r = await api.post(`/api/v1/snapshots/${snap.id}/instantiate`, { name: 'cl-full' });
        expectError(r, 409, 'NO_CAPACITY');
        expect(r.body.error.message).toMatch(
          new RegExp(
            `^the VM boots from snapshot cl-1, whose files are on host snap-b-${kind}, so the VM runs only there: ` +
              `no host has room for 2 vCPU, 512 MiB memory, 1 MiB disk: too little memory free on the host \\(snap-b-${kind}: \\d+ vCPU, 188 MiB, `,
          ),
        );
        expect(r.body.error.details).toMatchObject({
          short: ['mem_mib'],
          snapshot_id: snap.id,
          host_id: hostB.hostId,
        });
        expect(await recorded()).toEqual(before);
      } finally {
        hostB.capacity.mem_mib = memMib;
        await hostB.heartbeat();
      }
    });

    it('a clone whose placement failed restores its snapshot when started, never boots its image', async () => {
      // No host takes VMs: the clone is accepted and waits. Then a host other than the snapshot's
      // takes VMs again, and the clone fails there being placed (the snapshot's host is cordoned).
      const out = await cordoned([hostA, hostB, hostF], async () => {
        const o = await instantiate(snap.id, { name: 'cl-late' });
        expect((await api.post(`/api/v1/hosts/${hostA.hostId}/uncordon`)).status).toBe(200);
        const failed = await waitVm(o.vm.id, 'failed');
        expect(failed.last_error).toContain(
          `snapshot cl-1, whose files are on host snap-b-${kind}, which is cordoned`,
        );
        expect(await waitOp(o.operation.id)).toMatchObject({
          status: 'failed',
          error: { code: 'NO_CAPACITY' },
        });
        return o;
      });
      // Until it has run, it is its snapshot: not resized, and the snapshot stays.
      expectError(await api.patch(`/api/v1/vms/${out.vm.id}`, { vcpu: 1 }), 409, 'VM_INVALID_STATE');
      const held = await api.del(`/api/v1/snapshots/${snap.id}`);
      expectError(held, 409, 'SNAPSHOT_IN_USE');
      expect(held.body.error.details).toEqual({ vm_id: out.vm.id });

      const start = await api.post(`/api/v1/vms/${out.vm.id}/start`);
      expect(start.status, start.text).toBe(202);
      expect((await waitOp(start.body.operation.id)).status).toBe('succeeded');
      const ran = await waitVm(out.vm.id, 'running');
      expect(ran.host_id).toBe(hostB.hostId);
      expect(hostB.commands.get(out.vm.id)).toEqual([
        expect.objectContaining({ desired: 'running', restore: { snapshot_id: snap.id } }),
      ]);
      // Once it ran, its disk is its own: a stop and a start boot it, no restore.
      expect((await vmRow(out.vm.id))!.boot_snapshot_id).toBeNull();
      for (const action of ['stop', 'start']) {
        const r = await api.post(`/api/v1/vms/${out.vm.id}/${action}`);
        expect(r.status, r.text).toBe(202);
        expect((await waitOp(r.body.operation.id)).status).toBe('succeeded');
      }
      expect(hostB.commands.get(out.vm.id)!.at(-1)).toMatchObject({ desired: 'running', restore: null });
      await deleteVm(out.vm.id, '?force=true');
    });

    it('instantiate refusals create nothing: not ready, a taken name, bad bodies, unknown snapshot', async () => {
      const failed = (await api.get('/api/v1/snapshots?status=failed')).body.items[0] as Snapshot;
      const before = await recorded();
      expectError(
        await api.post(`/api/v1/snapshots/${failed.id}/instantiate`, { name: 'no-1' }),
        409,
        'SNAPSHOT_NOT_READY',
      );
      expectError(
        await api.post(`/api/v1/snapshots/${snap.id}/instantiate`, { name: 'cl-src' }),
        409,
        'NAME_TAKEN',
      );
      expectError(
        await api.post(`/api/v1/snapshots/${randomUUID()}/instantiate`, { name: 'no-2' }),
        404,
        'SNAPSHOT_NOT_FOUND',
      );
      for (const [body, field] of [
        [{}, 'body.name'],
        [{ name: 'no-3', vcpu: 4 }, 'body'],
        [{ name: 'no-4', labels: { 'Bad Key': 'x' } }, 'body.labels.Bad Key'],
      ] as const) {
        const r = await api.post(`/api/v1/snapshots/${snap.id}/instantiate`, body);
        expectError(r, 400, 'VALIDATION_FAILED');
        expect(failingFields(r)).toContain(field);
      }
      const after = await recorded();
      expect(after.vms).toEqual(before.vms);
      expect(after.operations).toEqual(before.operations);
    });

    it('deleting the source VM leaves its snapshots usable (vm_id null) and instantiable; a network gone -> 409', async () => {
      const n = await api.post('/api/v1/networks', {
        name: 'gone-net',
        kind: 'isolated',
        cidr: '10.79.0.0/24',
      });
      expect(n.status, n.text).toBe(201);
      const onGone = await runningVm({ name: 'orph-gone', networks: [{ network_id: n.body.id }] });
      const goneSnap = await take(onGone.id, { name: 'orph-gone-1' });
      await deleteVm(source.id, '?force=true');
      await deleteVm(onGone.id, '?force=true');

      const kept = await getSnapshot(snap.id);
      expect(kept).toMatchObject({ vm_id: null, vm_name: 'cl-src', status: 'ready', host_id: hostB.hostId });
      const last = (await eventsOf(snap.id)).at(-1)!;
      expect(last).toEqual({ type: 'snapshot.updated', data: kept });

      const out = await instantiate(snap.id, { name: 'cl-after' });
      expect(out.placement.host_id).toBe(hostB.hostId);
      const clone = await waitVm(out.vm.id, 'running');
      expect(clone).toMatchObject({ host_id: hostB.hostId, vcpu: 2, mem_mib: 512 });
      expect(clone.networks.map((x) => x.network_id)).toEqual([networkId]);
      expect(hostB.commands.get(clone.id)![0]!.restore).toEqual({ snapshot_id: snap.id });
      // The deleted VM's snapshot restores no other VM.
      expectError(
        await api.post(`/api/v1/vms/${clone.id}/restore`, { snapshot_id: snap.id }),
        400,
        'SNAPSHOT_MISMATCH',
      );
      await deleteVm(clone.id, '?force=true');

      expect((await api.del(`/api/v1/networks/${n.body.id}`)).status).toBe(200);
      const before = await recorded();
      const r = await api.post(`/api/v1/snapshots/${goneSnap.id}/instantiate`, { name: 'orph-clone' });
      expectError(r, 409, 'CONFLICT');
      expect(r.body.error.details).toEqual({ network_id: n.body.id });
      expect((await recorded()).vms).toEqual(before.vms);
    });
  });

  describe.sequential('deleting snapshots', () => {
    it('deletes a snapshot: its host removes the files, the row goes, events follow', async () => {
      const vm = await runningVm({ name: 'del-vm' });
      const s = await take(vm.id, { name: 'del-1' });
      const agent = hostOf(vm.host_id);
      const r = await api.del(`/api/v1/snapshots/${s.id}`);
      expect(r.status, r.text).toBe(200);
      expect(r.body).toEqual({ id: s.id, deleted: true });
      expect(agent.calls.filter((c) => c.path === `/v1/snapshots/${s.id}`).map((c) => c.method)).toEqual([
        'DELETE',
      ]);
      expect(await snapshotRow(s.id)).toBeUndefined();
      expectError(await api.get(`/api/v1/snapshots/${s.id}`), 404, 'SNAPSHOT_NOT_FOUND');
      expectError(await api.del(`/api/v1/snapshots/${s.id}`), 404, 'SNAPSHOT_NOT_FOUND');
      const events = await eventsOf(s.id);
      expect(events.map((e) => e.type)).toEqual([
        'snapshot.created',
        'snapshot.updated',
        'snapshot.updated',
        'snapshot.deleted',
      ]);
      expect(events[2]!.data).toEqual({ ...s, status: 'deleting', updated_at: events[2]!.data.updated_at });
      expect(events[3]!.data).toEqual(events[2]!.data);
    });

    it('refused while a Diff builds on it; allowed once the Diff is gone', async () => {
      const vm = await runningVm({ name: 'diff-vm', vmm: 'firecracker' });
      expect(vm.host_id).toBe(hostF.hostId);
      const full = await take(vm.id, { name: 'diff-full' });
      const diff = await take(vm.id, { name: 'diff-1', snapshot_type: 'Diff' });
      expect(diff).toMatchObject({ snapshot_type: 'Diff', parent_id: full.id, vmm: 'firecracker' });
      expect(hostF.calls.find((c) => c.path.endsWith(`/snapshots/${diff.id}`))?.body).toEqual({
        type: 'Diff',
      });
      const r = await api.del(`/api/v1/snapshots/${full.id}`);
      expectError(r, 409, 'SNAPSHOT_IN_USE');
      expect(r.body.error.details).toEqual({ snapshot_id: diff.id });
      expect((await getSnapshot(full.id)).status).toBe('ready');
      expect(hostF.calls.some((c) => c.path === `/v1/snapshots/${full.id}`)).toBe(false);
      expect((await api.del(`/api/v1/snapshots/${diff.id}`)).status).toBe(200);
      expect((await api.del(`/api/v1/snapshots/${full.id}`)).status).toBe(200);
      expect(
        hostF.calls.filter((c) => c.method === 'DELETE' && c.path.startsWith('/v1/snapshots/')),
      ).toHaveLength(2);
      await deleteVm(vm.id, '?force=true');
    });

    it("the host's refusal puts it back with the host's reason; an unreachable host leaves it deleting for the sweep", async () => {
      const vm = await vmNamed('del-vm');
      const agent = hostOf(vm.host_id);
      const s = await take(vm.id, { name: 'del-busy' });
      const deletes = () =>
        agent.calls.filter((c) => c.method === 'DELETE' && c.path === `/v1/snapshots/${s.id}`).length;
      agent.snapshotDeletes = 'in-use';
      try {
        const r = await api.del(`/api/v1/snapshots/${s.id}`);
        expectError(r, 409, 'SNAPSHOT_IN_USE');
        expect(r.body.error.message).toContain('maps its memory');
        expect(await getSnapshot(s.id)).toMatchObject({ status: 'ready' });
        expect(deletes()).toBe(1);

        agent.snapshotDeletes = 'down';
        const d = await api.del(`/api/v1/snapshots/${s.id}`);
        expect(d.status, d.text).toBe(200);
        expect((await getSnapshot(s.id)).status).toBe('deleting');
        expectError(
          await api.post(`/api/v1/snapshots/${s.id}/instantiate`, { name: 'del-clone' }),
          409,
          'SNAPSHOT_NOT_READY',
        );
        await until('the sweep to retry', async () => deletes() >= 3);
        expect((await getSnapshot(s.id)).status).toBe('deleting');
      } finally {
        agent.snapshotDeletes = 'removed';
      }
      // The event follows the row's removal: wait for both.
      await until(
        'the sweep to delete it',
        async () =>
          (await snapshotRow(s.id)) === undefined &&
          (await eventsOf(s.id)).at(-1)?.type === 'snapshot.deleted',
      );
    });

    it('a snapshot whose host was removed goes without asking any agent', async () => {
      const vm = await vmNamed('del-vm');
      const s = await take(vm.id, { name: 'del-nohost' });
      await db().updateTable('snapshots').set({ host_id: null }).where('id', '=', s.id).execute();
      expect((await api.del(`/api/v1/snapshots/${s.id}`)).status).toBe(200);
      expect(await snapshotRow(s.id)).toBeUndefined();
      expect(snapshotCalls().some((c) => c.method === 'DELETE' && c.path.includes(s.id))).toBe(false);
    });

    it('refused while a VM is booting from it', async () => {
      const vm = await vmNamed('del-vm');
      const s = await take(vm.id, { name: 'del-boot' });
      // No host may take VMs: the clone waits, its operation active.
      const out = await cordoned([hostA, hostB, hostF], async () => {
        const o = await instantiate(s.id, { name: 'del-boot-vm' });
        const r = await api.del(`/api/v1/snapshots/${s.id}`);
        expectError(r, 409, 'SNAPSHOT_IN_USE');
        expect(r.body.error.details).toEqual({ operation_id: o.operation.id, vm_id: o.vm.id });
        await deleteVm(o.vm.id);
        return o;
      });
      expect((await api.get(`/api/v1/operations/${out.operation.id}`)).body.status).toBe('cancelled');
      expect((await api.del(`/api/v1/snapshots/${s.id}`)).status).toBe(200);
    });
  });

  describe.sequential('images, access, documentation', () => {
    it('refuses to delete an image a snapshot needs, until the snapshot is gone', async () => {
      const p = path.join(t.dataDir, 'held.ext4');
      fs.writeFileSync(p, Buffer.alloc(8192, 9));
      const imageId = await registerPathImage(t.manager.services.store, {
        name: 'snap-held',
        kind: 'rootfs',
        path: p,
      });
      const vm = await runningVm({ name: 'img-vm', rootfs_image_id: imageId, networks: [] });
      const s = await take(vm.id, { name: 'img-1' });
      await deleteVm(vm.id, '?force=true');
      const r = await api.del(`/api/v1/images/${imageId}`);
      expectError(r, 409, 'IMAGE_IN_USE');
      expect(r.body.error.details.users).toEqual([
        { type: 'snapshot', id: s.id, name: 'img-1', fields: ['spec.rootfs_image_id'] },
      ]);
      expect((await api.del(`/api/v1/snapshots/${s.id}`)).status).toBe(200);
      const ok = await api.del(`/api/v1/images/${imageId}`);
      expect(ok.status, ok.text).toBe(200);
    });

    it('viewers read snapshots but every mutation is 403 for them; operators may; mutations are audited', async () => {
      const viewer = client(t.url, await userWithRole(t, 'viewer'));
      const operator = client(t.url, await userWithRole(t, 'operator'));
      const vm = await runningVm({ name: 'acc-vm' });
      const made = await operator.post(`/api/v1/vms/${vm.id}/snapshots`, { name: 'acc-1' });
      expect(made.status, made.text).toBe(202);
      const id = made.body.snapshot.id as string;
      expect((await waitOp(made.body.operation.id)).status).toBe('succeeded');

      expect((await viewer.get('/api/v1/snapshots')).status).toBe(200);
      expect((await viewer.get(`/api/v1/snapshots/${id}`)).status).toBe(200);
      expect((await viewer.get(`/api/v1/vms/${vm.id}/snapshots`)).status).toBe(200);
      const before = await recorded();
      expectError(await viewer.post(`/api/v1/vms/${vm.id}/snapshots`, { name: 'acc-2' }), 403, 'FORBIDDEN');
      expectError(await viewer.del(`/api/v1/snapshots/${id}`), 403, 'FORBIDDEN');
      expectError(await viewer.post(`/api/v1/vms/${vm.id}/restore`, { snapshot_id: id }), 403, 'FORBIDDEN');
      expectError(
        await viewer.post(`/api/v1/snapshots/${id}/instantiate`, { name: 'acc-clone' }),
        403,
        'FORBIDDEN',
      );
      expectError(await client(t.url).get('/api/v1/snapshots'), 401, 'UNAUTHENTICATED');
      expect(await recorded()).toEqual(before);

      const restored = await operator.post(`/api/v1/vms/${vm.id}/restore`, { snapshot_id: id });
      expect(restored.status, restored.text).toBe(202);
      expect((await waitOp(restored.body.operation.id)).status).toBe('succeeded');
      const clone = await operator.post(`/api/v1/snapshots/${id}/instantiate`, { name: 'acc-clone' });
      expect(clone.status, clone.text).toBe(202);
      await waitVm(clone.body.vm.id, 'running');
      await deleteVm(clone.body.vm.id, '?force=true');
      expect((await operator.del(`/api/v1/snapshots/${id}`)).status).toBe(200);

      // Audit records are written once the response is sent: wait for all of them.
      const actions = (targetId: string, count: number) =>
        until(`${count} audit records of ${targetId}`, async () => {
          const items = (await api.get(`/api/v1/audit?target_id=${targetId}&limit=50`)).body.items;
          return items.length >= count
            ? (items as Array<{ action: string; result: string }>).map((e) => `${e.action} ${e.result}`)
            : undefined;
        });
      expect((await actions(id, 4)).sort()).toEqual([
        'snapshot.create success',
        'snapshot.delete failure',
        'snapshot.delete success',
        'snapshot.instantiate failure',
      ]);
      expect(await actions(vm.id, 4)).toEqual(
        expect.arrayContaining(['vm.restore success', 'vm.restore failure', 'snapshot.create failure']),
      );
      expect(await actions(clone.body.vm.id, 1)).toEqual(
        expect.arrayContaining(['snapshot.instantiate success']),
      );
    });

    it('documents every snapshot route under the snapshots tag', async () => {
      const doc = (await api.get('/api/v1/openapi.json')).body;
      const routes: Array<[string, string]> = [
        ['/api/v1/snapshots', 'get'],
        ['/api/v1/snapshots/{id}', 'get'],
        ['/api/v1/snapshots/{id}', 'delete'],
        ['/api/v1/snapshots/{id}/instantiate', 'post'],
        ['/api/v1/vms/{id}/snapshots', 'get'],
        ['/api/v1/vms/{id}/snapshots', 'post'],
        ['/api/v1/vms/{id}/restore', 'post'],
      ];
      for (const [p, method] of routes) {
        const op = doc.paths[p]?.[method];
        expect(op, `${method} ${p}`).toBeDefined();
        expect(op.tags).toContain('snapshots');
        expect(op.summary).toEqual(expect.any(String));
      }
    });
  });
});
