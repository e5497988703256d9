/**
 * Templates over HTTP on both datastores: CRUD, references checked, instantiation with
 * overrides (and invalid overrides refused with nothing created), templates made from VMs,
 * guest passwords kept only as hashes, image delete refused while a template names the image,
 * and viewers kept from mutating.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Template, Vm } from '@nqvm/api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerPathImage } from '../src/images/images';
import { client, DATASTORES, startManager, type TestManager, userWithRole } from './harness';
import { expectError, failingFields, rowsOf } from './helpers';

const StrictTemplate = Template.strict();
const StrictVm = Vm.strict();
const PASSWORD = 'template-secret-pw-123';

describe.concurrent.each(DATASTORES)('templates API on %s', (kind) => {
  let t: TestManager;
  let api: ReturnType<typeof client>;
  let kernelId: string;
  let rootfsId: string;
  let networkId: string;

  beforeAll(async () => {
    t = await startManager(kind);
    api = client(t.url, t.adminToken);
    const file = (name: string) => {
      const p = path.join(t.dataDir, name);
      fs.writeFileSync(p, Buffer.alloc(4096, name.length));
      return p;
    };
    const store = t.manager.services.store;
    kernelId = await registerPathImage(store, { name: 'tpl-kernel', kind: 'kernel', path: file('vmlinux') });
    rootfsId = await registerPathImage(store, {
      name: 'tpl-rootfs',
      kind: 'rootfs',
      path: file('rootfs.ext4'),
    });
    const n = await api.post('/api/v1/networks', { name: 'tpl-net', kind: 'isolated', cidr: '10.77.0.0/24' });
    expect(n.status, n.text).toBe(201);
    networkId = n.body.id;
  });
  afterAll(async () => {
    await t?.close();
  });

  const db = () => t.manager.services.store.db;
  const vmCount = async () => (await db().selectFrom('vms').select('id').execute()).length;
  const mkTemplate = async (body: Record<string, unknown>): Promise<Template> => {
    const r = await api.post('/api/v1/templates', body);
    expect(r.status, r.text).toBe(201);
    return StrictTemplate.parse(r.body);
  };
  const instantiate = async (id: string, body: Record<string, unknown>): Promise<Vm> => {
    const r = await api.post(`/api/v1/templates/${id}/instantiate`, body);
    expect(r.status, r.text).toBe(202);
    expect(r.body.operation.target).toEqual({ type: 'vm', id: r.body.vm.id });
    return StrictVm.parse(r.body.vm);
  };
  const shape = () => ({
    vcpu: 2,
    mem_mib: 512,
    kernel_image_id: kernelId,
    rootfs_image_id: rootfsId,
    disk_size_mib: 2048,
    boot_args: 'console=ttyS0',
    networks: [{ network_id: networkId }],
    guest_config: { username: 'dev', password: PASSWORD, ssh_authorized_keys: ['ssh-ed25519 AAAA dev'] },
    restart_policy: 'on-failure',
    labels: { tier: 'web', env: 'test' },
  });

  describe.sequential('templates', () => {
    it('creates, gets, lists, patches and deletes a template; events and audit follow', async () => {
      const tpl = await mkTemplate({ name: 'crud-1', description: 'a web node', spec: shape() });
      expect(tpl).toMatchObject({
        name: 'crud-1',
        description: 'a web node',
        created_by: 'admin',
        spec: {
          vcpu: 2,
          mem_mib: 512,
          kernel_image_id: kernelId,
          rootfs_image_id: rootfsId,
          initrd_image_id: null,
          disk_size_mib: 2048,
          vmm: null,
          networks: [{ network_id: networkId }],
          guest_config: { mode: 'auto', username: 'dev', has_password: true, has_user_data: false },
          restart_policy: 'on-failure',
          labels: { tier: 'web', env: 'test' },
        },
      });
      const got = await api.get(`/api/v1/templates/${tpl.id}`);
      expect(got.status).toBe(200);
      expect(got.body).toEqual(tpl);

      const minimal = await mkTemplate({ name: 'crud-2', spec: {} });
      expect(minimal.spec).toMatchObject({ vcpu: 1, mem_mib: 256, networks: null, labels: {} });
      expect(minimal.description).toBeNull();

      const page1 = await api.get('/api/v1/templates?limit=1&name=crud-');
      expect(page1.status).toBe(200);
      expect(page1.body.items.map((x: Template) => x.name)).toEqual(['crud-1']);
      const page2 = await api.get(`/api/v1/templates?limit=1&name=crud-&cursor=${page1.body.next}`);
      expect(page2.body.items.map((x: Template) => x.name)).toEqual(['crud-2']);

      const p = await api.patch(`/api/v1/templates/${tpl.id}`, {
        name: 'crud-1b',
        description: null,
        spec: { ...shape(), vcpu: 4, guest_config: { username: 'ops' } },
      });
      expect(p.status, p.text).toBe(200);
      expect(StrictTemplate.parse(p.body)).toMatchObject({ name: 'crud-1b', description: null });
      // The spec is replaced, the stored password kept.
      expect(p.body.spec.vcpu).toBe(4);
      expect(p.body.spec.guest_config).toMatchObject({ username: 'ops', has_password: true });

      expectError(await api.post('/api/v1/templates', { name: 'crud-2', spec: {} }), 409, 'NAME_TAKEN');
      expectError(await api.patch(`/api/v1/templates/${tpl.id}`, { name: 'crud-2' }), 409, 'NAME_TAKEN');

      const d = await api.del(`/api/v1/templates/${tpl.id}`);
      expect(d.status, d.text).toBe(200);
      expect(d.body).toEqual({ id: tpl.id, deleted: true });
      expectError(await api.get(`/api/v1/templates/${tpl.id}`), 404, 'TEMPLATE_NOT_FOUND');
      expectError(await api.del(`/api/v1/templates/${tpl.id}`), 404, 'TEMPLATE_NOT_FOUND');

      const events = await db()
        .selectFrom('events')
        .select('type')
        .where('resource_id', '=', tpl.id)
        .orderBy('seq')
        .execute();
      expect(events.map((e) => e.type)).toEqual(['template.created', 'template.updated', 'template.deleted']);
      const audit = await api.get(`/api/v1/audit?target_id=${tpl.id}&limit=50`);
      // The rename to a taken name and the second delete are audited as failures.
      const actions = audit.body.items.map(
        (a: { action: string; result: string }) => `${a.action} ${a.result}`,
      );
      expect(actions.sort()).toEqual([
        'template.create success',
        'template.delete failure',
        'template.delete success',
        'template.update failure',
        'template.update success',
      ]);
    });

    it('refuses unknown or wrong-kind images, unknown networks and bad specs, naming the field', async () => {
      const missing = '00000000-0000-4000-8000-000000000001';
      const cases: Array<[Record<string, unknown>, string]> = [
        [{ kernel_image_id: missing }, 'body.spec.kernel_image_id'],
        [{ rootfs_image_id: kernelId }, 'body.spec.rootfs_image_id'],
        [{ networks: [{ network_id: missing }] }, 'body.spec.networks.0.network_id'],
        [{ vcpu: 0 }, 'body.spec.vcpu'],
        [{ networks: [{ network_id: networkId, ip: '10.77.0.9' }] }, 'body.spec.networks.0'],
        [{ colour: 'blue' }, 'body.spec'],
      ];
      for (const [spec, field] of cases) {
        const r = await api.post('/api/v1/templates', { name: 'bad-spec', spec });
        expectError(r, 400, 'VALIDATION_FAILED');
        expect(failingFields(r), r.text).toContain(field);
      }
      expect((await api.get('/api/v1/templates?name=bad-spec')).body.items).toEqual([]);
    });

    it('instantiates several VMs with overrides; each VM has the merged spec', async () => {
      const tpl = await mkTemplate({ name: 'inst-1', spec: shape() });
      const plain = await instantiate(tpl.id, { name: 'inst-vm-0', overrides: { start: false } });
      expect(plain).toMatchObject({
        name: 'inst-vm-0',
        state: 'stopped',
        vcpu: 2,
        mem_mib: 512,
        kernel_image_id: kernelId,
        rootfs_image_id: rootfsId,
        disk_size_mib: 2048,
        boot_args: 'console=ttyS0',
        restart_policy: 'on-failure',
        labels: { tier: 'web', env: 'test' },
        guest_config: { username: 'dev', has_password: true, ssh_authorized_keys: ['ssh-ed25519 AAAA dev'] },
      });
      expect(plain.networks.map((n) => n.network_id)).toEqual([networkId]);

      const sized = [
        { vcpu: 1, mem_mib: 256, labels: { env: 'prod', shard: '1' } },
        { vcpu: 4, mem_mib: 1024, labels: { shard: '2' } },
        { mem_mib: 2048 },
      ];
      const vms: Vm[] = [];
      for (const [i, o] of sized.entries())
        vms.push(await instantiate(tpl.id, { name: `inst-vm-${i + 1}`, overrides: { ...o, start: false } }));
      expect(vms.map((v) => [v.vcpu, v.mem_mib, v.labels])).toEqual([
        [1, 256, { tier: 'web', env: 'prod', shard: '1' }],
        [4, 1024, { tier: 'web', env: 'test', shard: '2' }],
        [2, 2048, { tier: 'web', env: 'test' }],
      ]);
      // Each VM has its own NIC address on the template's network.
      const ips = [plain, ...vms].map((v) => v.networks[0]!.ip);
      expect(new Set(ips).size).toBe(4);

      // Started by default: the same answer as POST /api/v1/vms.
      const r = await api.post(`/api/v1/templates/${tpl.id}/instantiate`, { name: 'inst-vm-started' });
      expect(r.status, r.text).toBe(202);
      expect(r.body.operation.kind).toBe('vm.create');
      expect(r.body.vm.desired_state).toBe('running');

      const og = await instantiate(tpl.id, {
        name: 'inst-vm-guest',
        overrides: { start: false, guest_config: { hostname: 'custom', mode: 'inject' } },
      });
      expect(og.guest_config).toMatchObject({
        mode: 'inject',
        hostname: 'custom',
        username: 'dev',
        has_password: true,
      });
      const taken = await api.post(`/api/v1/templates/${tpl.id}/instantiate`, { name: 'inst-vm-0' });
      expectError(taken, 409, 'NAME_TAKEN');
      expectError(
        await api.post('/api/v1/templates/00000000-0000-4000-8000-000000000002/instantiate', { name: 'x' }),
        404,
        'TEMPLATE_NOT_FOUND',
      );
    });

    it('refuses invalid overrides with a 400 naming the fields, and creates nothing', async () => {
      const tpl = await mkTemplate({ name: 'inst-bad', spec: shape() });
      const before = await vmCount();
      const missing = '00000000-0000-4000-8000-000000000003';
      const cases: Array<[Record<string, unknown>, string[]]> = [
        [{ vcpu: 0 }, ['body.overrides.vcpu']],
        [{ mem_mib: 'lots' }, ['body.overrides.mem_mib']],
        [{ name: 'sneaky' }, ['body.overrides']],
        [{ vcpu: 99, mem_mib: 1 }, ['body.overrides.vcpu', 'body.overrides.mem_mib']],
        [{ labels: { 'Bad Key': 'x' } }, ['body.overrides.labels.Bad Key']],
        [{ guest_config: { username: 'Root!' } }, ['body.overrides.guest_config.username']],
        [{ rootfs_image_id: missing }, ['rootfs_image_id']],
        [{ networks: [{ network_id: missing }] }, ['body.networks.0.network_id']],
      ];
      for (const [overrides, fields] of cases) {
        const r = await api.post(`/api/v1/templates/${tpl.id}/instantiate`, { name: 'never', overrides });
        expectError(r, 400, 'VALIDATION_FAILED');
        for (const f of fields) expect(failingFields(r), r.text).toContain(f);
      }
      // Valid alone, invalid once merged: 33 labels in all.
      const many = Object.fromEntries(Array.from({ length: 31 }, (_, i) => [`k${i}`, 'v']));
      const r = await api.post(`/api/v1/templates/${tpl.id}/instantiate`, {
        name: 'never',
        overrides: { labels: many },
      });
      expectError(r, 400, 'VALIDATION_FAILED');
      expect(failingFields(r)).toEqual(['body.overrides.labels']);
      expect(await vmCount()).toBe(before);
      expect((await api.get('/api/v1/vms?name=never')).body.items).toEqual([]);
    });

    it('makes a template from a VM, carrying its password hash but not its addresses', async () => {
      const src = await api.post('/api/v1/vms', {
        ...shape(),
        networks: [{ network_id: networkId, ip: '10.77.0.200' }],
        name: 'from-vm-src',
        vmm: 'qemu',
        start: false,
      });
      expect(src.status, src.text).toBe(202);
      const r = await api.post(`/api/v1/vms/${src.body.vm.id}/template`, {
        name: 'from-vm',
        description: 'copied',
      });
      expect(r.status, r.text).toBe(201);
      const tpl = StrictTemplate.parse(r.body);
      expect(tpl).toMatchObject({
        name: 'from-vm',
        description: 'copied',
        spec: {
          vcpu: 2,
          mem_mib: 512,
          vmm: 'qemu',
          kernel_image_id: kernelId,
          rootfs_image_id: rootfsId,
          networks: [{ network_id: networkId }],
          guest_config: { username: 'dev', has_password: true },
          labels: { tier: 'web', env: 'test' },
          restart_policy: 'on-failure',
        },
      });
      const srcSpec = JSON.parse(
        (
          await db()
            .selectFrom('vms')
            .select('spec')
            .where('id', '=', src.body.vm.id)
            .executeTakeFirstOrThrow()
        ).spec,
      );
      const tplSpec = JSON.parse(
        (await db().selectFrom('templates').select('spec').where('id', '=', tpl.id).executeTakeFirstOrThrow())
          .spec,
      );
      expect(tplSpec.guest_config.password_hash).toBe(srcSpec.guest_config.password_hash);

      const copy = await instantiate(tpl.id, { name: 'from-vm-copy', overrides: { start: false } });
      expect(copy.networks[0]!.ip).not.toBe('10.77.0.200');
      const copySpec = JSON.parse(
        (await db().selectFrom('vms').select('spec').where('id', '=', copy.id).executeTakeFirstOrThrow())
          .spec,
      );
      expect(copySpec.guest_config.password_hash).toBe(srcSpec.guest_config.password_hash);

      expectError(
        await api.post('/api/v1/vms/00000000-0000-4000-8000-000000000004/template', { name: 'nope' }),
        404,
        'VM_NOT_FOUND',
      );
      expectError(
        await api.post(`/api/v1/vms/${src.body.vm.id}/template`, { name: 'from-vm' }),
        409,
        'NAME_TAKEN',
      );
    });

    it('never returns or stores a template password in plaintext', async () => {
      const tpl = await mkTemplate({ name: 'secret-1', spec: shape() });
      const texts = [
        JSON.stringify(tpl),
        (await api.get(`/api/v1/templates/${tpl.id}`)).text,
        (await api.get('/api/v1/templates?limit=500')).text,
        (
          await api.post(`/api/v1/templates/${tpl.id}/instantiate`, {
            name: 'secret-vm',
            overrides: { start: false },
          })
        ).text,
        (await api.get('/api/v1/vms?limit=500')).text,
      ];
      for (const text of texts) {
        expect(text).not.toContain(PASSWORD);
        expect(text).not.toContain('password_hash');
      }
      const stored = JSON.parse(
        (await db().selectFrom('templates').select('spec').where('id', '=', tpl.id).executeTakeFirstOrThrow())
          .spec,
      );
      expect(stored.guest_config.password_hash).toMatch(/^\$6\$/);
      for (const table of ['templates', 'vms', 'events', 'audit_events', 'operations'])
        expect(JSON.stringify(await rowsOf(t.manager.services.store, table))).not.toContain(PASSWORD);
    });

    it('refuses to delete an image a template names, until the template is gone', async () => {
      const store = t.manager.services.store;
      const p = path.join(t.dataDir, 'held.ext4');
      fs.writeFileSync(p, Buffer.alloc(8192, 7));
      const imageId = await registerPathImage(store, { name: 'tpl-held', kind: 'rootfs', path: p });
      const tpl = await mkTemplate({ name: 'holder', spec: { rootfs_image_id: imageId } });
      const r = await api.del(`/api/v1/images/${imageId}`);
      expectError(r, 409, 'IMAGE_IN_USE');
      expect(r.body.error.details.users).toEqual([
        { type: 'template', id: tpl.id, name: 'holder', fields: ['rootfs_image_id'] },
      ]);
      expect((await api.del(`/api/v1/templates/${tpl.id}`)).status).toBe(200);
      const ok = await api.del(`/api/v1/images/${imageId}`);
      expect(ok.status, ok.text).toBe(200);
    });

    it('lets viewers read templates but not change them', async () => {
      const tpl = await mkTemplate({ name: 'auth-1', spec: {} });
      const vm = await api.post('/api/v1/vms', { name: 'auth-vm', start: false });
      const viewer = client(t.url, await userWithRole(t, 'viewer'));
      expect((await viewer.get('/api/v1/templates')).status).toBe(200);
      expect((await viewer.get(`/api/v1/templates/${tpl.id}`)).status).toBe(200);
      const before = await vmCount();
      expectError(await viewer.post('/api/v1/templates', { name: 'v-1', spec: {} }), 403, 'FORBIDDEN');
      expectError(await viewer.patch(`/api/v1/templates/${tpl.id}`, { name: 'v-2' }), 403, 'FORBIDDEN');
      expectError(await viewer.del(`/api/v1/templates/${tpl.id}`), 403, 'FORBIDDEN');
      expectError(
        await viewer.post(`/api/v1/templates/${tpl.id}/instantiate`, { name: 'v-vm' }),
        403,
        'FORBIDDEN',
      );
      expectError(
        await viewer.post(`/api/v1/vms/${vm.body.vm.id}/template`, { name: 'v-3' }),
        403,
        'FORBIDDEN',
      );
      expect(await vmCount()).toBe(before);
      expect((await api.get(`/api/v1/templates/${tpl.id}`)).body.name).toBe('auth-1');
      const operator = client(t.url, await userWithRole(t, 'operator'));
      const made = await operator.post(`/api/v1/templates/${tpl.id}/instantiate`, {
        name: 'op-vm',
        overrides: { start: false },
      });
      expect(made.status, made.text).toBe(202);
    });
  });
});
