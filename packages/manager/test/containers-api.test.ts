/**
 * Containers over HTTP on both datastores, against a signature-checking stand-in agent and a
 * real OCI registry (Debian's docker-registry on 127.0.0.1, anonymous and with basic auth): the
 * refusals that record nothing, a create that pulls and converts the image (a real ext4) once
 * per digest, the spec the host gets, ports as port forwards, the status from the agent's
 * reports, failures after the checks leaving no VM, actions, logs, exec (HTTP and WebSocket, for
 * VMs too), stats, roles, events and OpenAPI.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Container, ContainerActionResponse, ContainerStats, type Operation, Vm } from '@nqvm/api';
import {
  type BuiltImage,
  basicAuthorization,
  buildImageFromEntries,
  buildIndex,
  freePort,
  type OciRegistry,
  pushImage,
  pushIndex,
  sampleImage,
  startOciRegistry,
} from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { CONTAINER_INIT_IMAGE } from '../src/containers/containers';
import { registerPathImage } from '../src/images/images';
import { ADMIN_PASSWORD, client, DATASTORES, startManager, type TestManager, userWithRole } from './harness';
import { expectError, failingFields, login, rowsOf, tableNames, until } from './helpers';
import { echoExec, STAND_IN_STATS, StandInAgent } from './stand-in-agent';

const StrictContainer = Container.strict();
const StrictVm = Vm.strict();
const PRIVATE_USER = 'puller';
const PRIVATE_PASSWORD = 'registry-secret-for-containers-7f3a';

let anon: OciRegistry;
let priv: OciRegistry;
/** The testkit's sample: entrypoint /bin/tool, cmd --serve x, PATH and GREETING, /opq, 1000:1001. */
let app: BuiltImage;
/** Pulled by two containers at once. */
let twin: BuiltImage;
let corrupt: BuiltImage;

beforeAll(async () => {
  [anon, priv] = await Promise.all([
    startOciRegistry(),
    startOciRegistry({ basicAuth: { [PRIVATE_USER]: PRIVATE_PASSWORD } }),
  ]);
  app = await sampleImage();
  twin = await sampleImage({ hello: 'pulled once\n' });
  corrupt = await sampleImage({ hello: 'this layer gets corrupted\n' });
  const nothingToRun = await buildImageFromEntries({
    layers: [{ compression: 'gzip', entries: [{ name: 'etc/x', type: 'file', content: 'x\n' }] }],
    config: { Env: ['A=1'] },
  });
  const arm = await sampleImage({ platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } });
  const target = { url: anon.url, repository: 'test/app' };
  await pushImage(target, 'v1', app);
  await pushImage({ url: anon.url, repository: 'test/twin' }, 'v1', twin);
  await pushImage({ url: anon.url, repository: 'test/corrupt' }, 'v1', corrupt);
  await pushImage({ url: anon.url, repository: 'test/nothing' }, 'v1', nothingToRun);
  await pushIndex({ url: anon.url, repository: 'test/multi' }, 'arm-only', [arm], buildIndex([arm]));
  await pushImage(
    {
      url: priv.url,
      repository: 'private/app',
      authorization: basicAuthorization(PRIVATE_USER, PRIVATE_PASSWORD),
    },
    'v1',
    app,
  );
  // Its config and manifest stay right (the checks pass); its first layer arrives wrong.
  const blob = anon.blobPath(corrupt.layers[0]!.digest);
  const bytes = fs.readFileSync(blob);
  bytes[bytes.length - 5]! ^= 0xff;
  fs.writeFileSync(blob, bytes);
}, 120_000);

afterAll(async () => {
  await Promise.all([anon?.stop(), priv?.stop()]);
});

describe.concurrent.each(DATASTORES)('containers API on %s', (kind) => {
  let t: TestManager;
  let api: ReturnType<typeof client>;
  let host: StandInAgent;
  let kernelId: string;
  let initId: string;
  let networkId: string;
  let operatorToken: string;
  let viewerToken: string;
  const ref = (repo: string, tag = 'v1') => `${anon.host}/${repo}:${tag}`;

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
      name: 'ctr-kernel',
      kind: 'kernel',
      path: file('vmlinuz'),
      isDefault: true,
    });
    initId = await registerPathImage(store, {
      name: CONTAINER_INIT_IMAGE,
      kind: 'initrd',
      path: file('container-init.cpio.gz'),
    });
    const n = await api.post('/api/v1/networks', {
      name: 'ctr-net',
      kind: 'isolated',
      cidr: '10.79.0.0/24',
      is_default: true,
    });
    expect(n.status, n.text).toBe(201);
    networkId = n.body.id;
    host = await StandInAgent.join(
      t.url,
      t.adminToken,
      t.manager.services.managerKey.publicKeyPem,
      `ctr-${kind}`,
    );
    operatorToken = await userWithRole(t, 'operator');
    viewerToken = await userWithRole(t, 'viewer');
  });
  afterAll(async () => {
    await host?.close();
    await t?.close();
  });

  const db = () => t.manager.services.store.db;
  const vmRow = (id: string) => db().selectFrom('vms').selectAll().where('id', '=', id).executeTakeFirst();
  const eventsOf = async (id: string) =>
    (
      await db()
        .selectFrom('events')
        .select(['type', 'data'])
        .where('resource_id', '=', id)
        .where('resource_type', '=', 'container')
        .orderBy('seq')
        .execute()
    ).map((e) => ({ type: e.type, data: JSON.parse(e.data) }));
  /** What a refused request must leave as it was (rows sorted; the reconciler's bookkeeping left out). */
  const recorded = async () => {
    const out: Record<string, string[]> = {};
    for (const table of ['containers', 'operations', 'vms', 'vm_nics', 'port_forwards', 'images'] as const) {
      const rows = (await db().selectFrom(table).selectAll().execute()) as Array<Record<string, unknown>>;
      out[table] = rows
        .map(({ commanded_at: _c, observed_generation: _o, updated_at: _u, ...rest }) => JSON.stringify(rest))
        .sort();
    }
    return out;
  };
  const waitOp = (id: string) =>
    until(`operation ${id} to finish`, async () => {
      const op = (await api.get(`/api/v1/operations/${id}`)).body as Operation;
      return ['succeeded', 'failed', 'cancelled'].includes(op.status) ? op : undefined;
    });
  const getContainer = async (id: string): Promise<Container> => {
    const r = await api.get(`/api/v1/containers/${id}`);
    expect(r.status, r.text).toBe(200);
    return StrictContainer.parse(r.body);
  };
  const waitContainer = (id: string, what: string, pred: (c: Container) => boolean) =>
    until(`container ${id}: ${what}`, async () => {
      const c = await getContainer(id);
      return pred(c) ? c : undefined;
    });
  /** POSTs a container and waits for its operation; answers the 202 body and the finished operation. */
  const create = async (body: Record<string, unknown>) => {
    const r = await api.post('/api/v1/containers', body);
    expect(r.status, r.text).toBe(202);
    const out = ContainerActionResponse.parse(r.body);
    StrictContainer.parse(out.container);
    expect(out.operation).toMatchObject({
      kind: 'container.create',
      target: { type: 'container', id: out.container.id },
    });
    return { ...out, done: await waitOp(out.operation.id) };
  };
  /** A container whose create succeeded, as GET shows it then. */
  const running = async (body: Record<string, unknown>) => {
    const out = await create(body);
    expect(out.done.status, JSON.stringify(out.done)).toBe('succeeded');
    return getContainer(out.container.id);
  };
  const settled = (id: string) =>
    until(`VM ${id} to settle`, async () => {
      const row = await vmRow(id);
      return row && (row.host_id === null || row.observed_generation >= row.generation);
    });
  const act = async (id: string, action: string, body?: unknown) => {
    await settled(id);
    const r = await api.post(`/api/v1/containers/${id}/${action}`, body);
    expect(r.status, r.text).toBe(202);
    return ContainerActionResponse.parse(r.body);
  };
  /** The audit entries of an action on a target, once there is one (with `status`, when given). */
  const auditOf = (action: string, targetId: string, status?: number) =>
    until(`an audit entry ${action}`, async () => {
      const items = (await api.get(`/api/v1/audit?action=${action}&target_id=${targetId}`)).body
        .items as Array<{
        status_code: number;
      }>;
      return items.some((a) => status === undefined || a.status_code === status) ? items : undefined;
    });
  const imagesOf = async (digest: string) =>
    (await db().selectFrom('images').selectAll().execute()).filter(
      (i) => JSON.parse(i.metadata).oci?.manifest_digest === digest,
    );

  describe.sequential('create', () => {
    it('refuses what it can tell at once, recording nothing: fields, names, network, init, references, registry', async () => {
      const vm = await api.post('/api/v1/vms', { name: 'held-by-vm', start: false });
      expect(vm.status, vm.text).toBe(202);
      const before = await recorded();
      const refused = async (body: Record<string, unknown>, status: number, code: string) => {
        const r = await api.post('/api/v1/containers', { name: 'refused', image: ref('test/app'), ...body });
        expectError(r, status, code);
        return r;
      };
      const bad = await refused(
        { name: '-bad', vcpu: 0, ports: [{ host_port: 0, container_port: 80 }] },
        400,
        'VALIDATION_FAILED',
      );
      expect(failingFields(bad)).toEqual(
        expect.arrayContaining(['body.name', 'body.vcpu', 'body.ports.0.host_port']),
      );
      expect(
        failingFields(
          await refused(
            {
              ports: [
                { host_port: 80, container_port: 80 },
                { host_port: 80, container_port: 81 },
              ],
            },
            400,
            'VALIDATION_FAILED',
          ),
        ),
      ).toEqual(['body.ports']);
      expect(failingFields(await refused({ image: 'UPPER/Case:v1' }, 400, 'VALIDATION_FAILED'))).toEqual([
        'body.image',
      ]);
      expect(
        failingFields(
          await refused({ network_id: '00000000-0000-4000-8000-000000000001' }, 400, 'VALIDATION_FAILED'),
        ),
      ).toEqual(['body.network_id']);
      await refused({ name: 'held-by-vm' }, 409, 'NAME_TAKEN');
      // A port a program on the (only) host listens on: refused before anything is pulled.
      host.listening.add('tcp/18997');
      const listened = await refused(
        { ports: [{ host_port: 18997, container_port: 80 }] },
        409,
        'PORT_IN_USE',
      );
      expect(listened.body.error.message).toContain(`taken on host ctr-${kind}`);
      const missing = await refused({ image: ref('test/absent') }, 422, 'REGISTRY_IMAGE_NOT_FOUND');
      expect(missing.body.error.message).toContain('not found');
      await refused({ image: ref('test/app', 'v9') }, 422, 'REGISTRY_IMAGE_NOT_FOUND');
      await refused({ image: `${priv.host}/private/app:v1` }, 422, 'REGISTRY_AUTH_FAILED');
      const wrong = await refused(
        {
          image: `${priv.host}/private/app:v1`,
          registry_credentials: { username: PRIVATE_USER, password: 'not-it' },
        },
        422,
        'REGISTRY_AUTH_FAILED',
      );
      expect(wrong.body.error.message).toContain(`"${PRIVATE_USER}"`);
      await refused({ image: `127.0.0.1:${await freePort()}/test/app:v1` }, 502, 'REGISTRY_UNREACHABLE');
      await refused({ image: ref('test/multi', 'arm-only') }, 422, 'IMAGE_UNSUPPORTED');
      const none = await refused({ image: ref('test/nothing') }, 422, 'CONTAINER_COMMAND_MISSING');
      expect(none.body.error.message).toBe('the image defines no entrypoint or cmd; give command');
      // The same image with a command has something to run: the check is about the image config.
      const init = await api.patch(`/api/v1/images/${initId}`, { name: 'renamed-init' });
      expect(init.status, init.text).toBe(200);
      try {
        const r = await refused({}, 409, 'CONTAINER_INIT_MISSING');
        expect(r.body.error.message).toContain(CONTAINER_INIT_IMAGE);
        expect(r.body.error.message).toContain('nqvm up');
      } finally {
        await api.patch(`/api/v1/images/${initId}`, { name: CONTAINER_INIT_IMAGE });
      }
      expect(await recorded()).toEqual(before);
      expect((await api.get('/api/v1/containers?name=refused')).body.items).toEqual([]);
    });

    it('pulls the image, creates its VM with spec.container (image config + overrides), forwards its ports, starts it', async () => {
      const r = await api.post('/api/v1/containers', {
        name: 'web',
        image: ref('test/app'),
        args: ['--port', '8080'],
        env: { GREETING: 'hello', EXTRA: '1' },
        ports: [
          { host_port: 18080, container_port: 8080 },
          { host_port: 15353, container_port: 53, protocol: 'udp' },
        ],
        vcpu: 2,
        mem_mib: 512,
        restart_policy: 'no',
        labels: { tier: 'front' },
      });
      expect(r.status, r.text).toBe(202);
      const first = StrictContainer.parse(r.body.container);
      expect(first).toMatchObject({
        name: 'web',
        status: 'starting',
        vm_id: first.id,
        vm_state: 'creating',
        image_id: null,
        image_digest: app.manifest.digest,
        command: null,
        args: ['--port', '8080'],
        effective_command: ['/bin/tool', '--port', '8080'],
        working_dir: '/opq',
        user: '1000:1001',
        restart_policy: 'never',
        exit_code: null,
        restart_count: 0,
      });
      const op = await waitOp(r.body.operation.id);
      expect(op, JSON.stringify(op)).toMatchObject({ status: 'succeeded', progress: { percent: 100 } });
      expect(op.progress.message).toMatch(/^running/);
      const c = await getContainer(first.id);
      expect(c).toMatchObject({
        status: 'running',
        vm_state: 'running',
        host_id: host.hostId,
        network_id: networkId,
      });
      expect(c.ip).toMatch(/^10\.79\.0\.\d+$/);
      expect(c.env).toEqual({ PATH: '/usr/bin:/bin', GREETING: 'hello', EXTRA: '1' });
      expect(c.ports).toEqual([
        { host_port: 18080, container_port: 8080, protocol: 'tcp' },
        { host_port: 15353, container_port: 53, protocol: 'udp' },
      ]);
      expect(c.started_at).not.toBeNull();

      // A real pull: one rootfs image of the digest, its ext4 in the blob store.
      const images = await imagesOf(app.manifest.digest);
      expect(images).toHaveLength(1);
      expect(images[0]).toMatchObject({ id: c.image_id, kind: 'rootfs', status: 'ready', format: 'ext4' });
      expect(fs.existsSync(path.join(t.dataDir, 'images', 'blobs', 'sha256', images[0]!.sha256!))).toBe(true);

      const spec = host.specs.get(c.id)!;
      expect(spec.container).toEqual({
        argv: ['/bin/tool', '--port', '8080'],
        env: ['PATH=/usr/bin:/bin', 'GREETING=hello', 'EXTRA=1'],
        working_dir: '/opq',
        user: '1000:1001',
      });
      expect(spec).toMatchObject({
        name: 'web',
        vcpu: 2,
        mem_mib: 512,
        restart_policy: 'never',
        guest_config: null,
      });
      expect({ kernel: spec.kernel.id, initrd: spec.initrd?.id, rootfs: spec.rootfs?.id }).toEqual({
        kernel: kernelId,
        initrd: initId,
        rootfs: c.image_id,
      });
      expect(spec.port_forwards.map((p) => [p.proto, p.host_port, p.guest_port, p.guest_ip])).toEqual([
        ['tcp', 18080, 8080, c.ip],
        ['udp', 15353, 53, c.ip],
      ]);
      // Its forwards were in place before the VM's first command went out.
      expect(host.commands.get(c.id)![0]!.spec.port_forwards).toHaveLength(2);
      const forwards = await api.get(`/api/v1/vms/${c.id}/port-forwards`);
      expect(
        forwards.body.items.map((f: { host_port: number; guest_port: number }) => [
          f.host_port,
          f.guest_port,
        ]),
      ).toEqual([
        [18080, 8080],
        [15353, 53],
      ]);

      // Its VM is a microVM like any: listed, labelled, named like the container.
      const vms = await api.get('/api/v1/vms?label=nqvm.container=web');
      expect(vms.body.items).toHaveLength(1);
      expect(StrictVm.parse(vms.body.items[0])).toMatchObject({
        id: c.id,
        name: 'web',
        labels: { tier: 'front', 'nqvm.container': 'web' },
        guest_config: { mode: 'none' },
        rootfs_image_id: c.image_id,
        initrd_image_id: initId,
        kernel_image_id: kernelId,
      });
      // An update's event is published after its write: wait until the last event is the state read.
      const now = (await api.get(`/api/v1/containers/${c.id}`)).body;
      await until('the last event to carry the container as it is', async () => {
        const last = (await eventsOf(c.id)).at(-1);
        return last?.type === 'container.updated' && last.data.updated_at === now.updated_at;
      });
      const events = await eventsOf(c.id);
      expect(events[0]).toMatchObject({ type: 'container.created', data: { status: 'starting' } });
      expect(events.at(-1)).toMatchObject({ type: 'container.updated', data: now });
      for (const e of events) StrictContainer.parse(e.data);
    }, 90_000); // the first pull of the sample image (registry, layers, mkfs.ext4) under a loaded CI

    it('a second container of the image imports nothing; two of a new image pull it once', async () => {
      const importsBefore = (await api.get('/api/v1/operations?kind=image.import')).body.items.length;
      const again = await create({
        name: 'web-2',
        image: ref('test/app'),
        command: ['/bin/sh', '-c', 'echo hi'],
      });
      expect(again.done.status).toBe('succeeded');
      const c = await getContainer(again.container.id);
      expect(c.effective_command).toEqual(['/bin/sh', '-c', 'echo hi']);
      expect(host.specs.get(c.id)!.container!.argv).toEqual(['/bin/sh', '-c', 'echo hi']);
      expect(await imagesOf(app.manifest.digest)).toHaveLength(1);
      expect(c.image_id).toBe(
        (await getContainer((await api.get('/api/v1/containers?name=web')).body.items[0].id)).image_id,
      );

      const [a, b] = await Promise.all([
        create({ name: 'twin-a', image: ref('test/twin') }),
        create({ name: 'twin-b', image: ref('test/twin') }),
      ]);
      expect([a.done, b.done].map((o) => [o.status, o.error])).toEqual([
        ['succeeded', null],
        ['succeeded', null],
      ]);
      expect(await imagesOf(twin.manifest.digest)).toHaveLength(1);
      const imports = (await api.get('/api/v1/operations?kind=image.import')).body.items;
      expect(imports.length - importsBefore).toBe(1);
      expect((await getContainer(a.container.id)).image_id).toBe(
        (await getContainer(b.container.id)).image_id,
      );
    });

    it('pulls a private image with credentials that are stored nowhere', async () => {
      const c = await running({
        name: 'private-app',
        image: `${priv.host}/private/app:v1`,
        registry_credentials: { username: PRIVATE_USER, password: PRIVATE_PASSWORD },
      });
      expect(c.status).toBe('running');
      const store = t.manager.services.store;
      for (const table of await tableNames(store))
        expect(JSON.stringify(await rowsOf(store, table)), table).not.toContain(PRIVATE_PASSWORD);
    });

    it('a host port in use is refused as port forwards refuse it, recording nothing', async () => {
      const before = await recorded();
      expectError(
        await api.post('/api/v1/containers', {
          name: 'clash',
          image: ref('test/app'),
          ports: [{ host_port: 18080, container_port: 80 }],
        }),
        409,
        'PORT_IN_USE',
      );
      expect(await recorded()).toEqual(before);
    });

    it('start=false defines it (created, no host); start runs it; a quick job that exits at once succeeds', async () => {
      const out = await create({ name: 'later', image: ref('test/app'), start: false });
      expect(out.done).toMatchObject({ status: 'succeeded', progress: { message: 'created, not started' } });
      const c = await getContainer(out.container.id);
      expect(c).toMatchObject({ status: 'created', vm_state: 'stopped', host_id: null, started_at: null });
      expect(host.specs.has(c.id)).toBe(false);
      await act(c.id, 'start');
      await waitContainer(c.id, 'running', (x) => x.status === 'running');

      host.containerStart = 'held';
      try {
        const r = await api.post('/api/v1/containers', { name: 'quick', image: ref('test/app') });
        expect(r.status, r.text).toBe(202);
        const id = r.body.container.id as string;
        await until('the quick VM to run', async () => host.vms.get(id)?.state === 'running');
        expect((await getContainer(id)).status).toBe('starting');
        host.processExited(id, { kind: 'exited', value: 0 });
        const op = await waitOp(r.body.operation.id);
        expect(op).toMatchObject({
          status: 'succeeded',
          progress: { message: 'the process ran and exited with code 0' },
        });
        await waitContainer(id, 'exited', (x) => x.status === 'exited' && x.exit_code === 0);
      } finally {
        host.containerStart = 'runs';
      }
    });
  });

  describe.sequential('failures after the checks', () => {
    it('an import that fails fails the operation; the container stays failed with the reason; no VM, no image left', async () => {
      const out = await create({ name: 'broken', image: ref('test/corrupt') });
      expect(out.done).toMatchObject({ status: 'failed', error: { code: 'CHECKSUM_MISMATCH' } });
      const c = await getContainer(out.container.id);
      expect(c).toMatchObject({ status: 'failed', vm_state: 'failed', image_id: null, host_id: null });
      expect(c.last_error).toMatch(/^image: pulling .* failed: /);
      expect(await vmRow(c.id)).toBeUndefined();
      expect((await api.get('/api/v1/vms?name=broken')).body.items).toEqual([]);
      expect(await imagesOf(corrupt.manifest.digest)).toEqual([]);
      expect(
        (await api.get('/api/v1/images')).body.items.map((i: { status: string }) => i.status),
      ).not.toContain('failed');
      expect((await eventsOf(c.id)).at(-1)).toMatchObject({
        type: 'container.updated',
        data: { status: 'failed' },
      });
      expectError(await api.post(`/api/v1/containers/${c.id}/start`), 409, 'VM_INVALID_STATE');

      const del = await api.del(`/api/v1/containers/${c.id}`);
      expect(del.status, del.text).toBe(202);
      expect(del.body.operation).toMatchObject({ kind: 'container.delete', status: 'succeeded' });
      expectError(await api.get(`/api/v1/containers/${c.id}`), 404, 'CONTAINER_NOT_FOUND');
      expect((await eventsOf(c.id)).at(-1)!.type).toBe('container.deleted');
    });

    it('a process that cannot start fails the create and its VM (and forwards) are deleted', async () => {
      host.containerStart = 'unstartable';
      try {
        const out = await create({
          name: 'nostart',
          image: ref('test/app'),
          ports: [{ host_port: 19090, container_port: 90 }],
        });
        expect(out.done).toMatchObject({ status: 'failed', error: { code: 'CONTAINER_START_FAILED' } });
        expect(out.done.error!.message).toContain('could not start (code 127)');
        expect(out.done.error!.message).toContain('no such file or directory');
        const id = out.container.id;
        await until('its VM to be gone', async () => (await vmRow(id)) === undefined);
        expect(await db().selectFrom('port_forwards').selectAll().where('vm_id', '=', id).execute()).toEqual(
          [],
        );
        const c = await getContainer(id);
        // The init's code for a process it could not run (127: not found).
        expect(c).toMatchObject({ status: 'failed', vm_state: 'failed', exit_code: 127 });
        expect(c.last_error).toContain('start: the process could not start');
      } finally {
        host.containerStart = 'runs';
      }
      // Its port is free again.
      expect(
        (
          await running({
            name: 'port-again',
            image: ref('test/app'),
            ports: [{ host_port: 19090, container_port: 90 }],
          })
        ).status,
      ).toBe('running');
    });

    it('a create whose manager stopped (its claim expired) is failed by the sweep', async () => {
      const id = randomUUID();
      const at = new Date(Date.now() - 60_000).toISOString();
      await db()
        .insertInto('containers')
        .values({
          id,
          name: 'abandoned',
          image: ref('test/app'),
          image_id: null,
          image_digest: app.manifest.digest,
          request: JSON.stringify({ command: null, args: null, env: {}, working_dir: null, user: null }),
          process: null,
          ports: '[]',
          vcpu: 1,
          mem_mib: 256,
          restart_policy: 'never',
          network_id: networkId,
          labels: '{}',
          start: 1,
          phase: 'creating',
          status: 'starting',
          exit_kind: null,
          exit_value: null,
          started_at: null,
          finished_at: null,
          last_error: null,
          created_by: 'admin',
          claimed_until: at,
          created_at: at,
          updated_at: at,
        })
        .execute();
      const op = await t.manager.services.ops.create({
        kind: 'container.create',
        target: { type: 'container', id },
        createdBy: 'admin',
      });
      expect(await waitOp(op.id)).toMatchObject({ status: 'failed', error: { code: 'CONFLICT' } });
      expect(await getContainer(id)).toMatchObject({
        status: 'failed',
        last_error: 'the manager creating this container stopped; create it again',
      });
    });

    it('a cancelled create ends failed, its VM deleted', async () => {
      host.containerStart = 'held';
      try {
        const r = await api.post('/api/v1/containers', { name: 'cancelled', image: ref('test/app') });
        expect(r.status, r.text).toBe(202);
        const id = r.body.container.id as string;
        await until('its VM to run', async () => host.vms.get(id)?.state === 'running');
        expectError(await api.post(`/api/v1/containers/${id}/stop`), 409, 'VM_INVALID_STATE');
        const cancel = await api.post(`/api/v1/operations/${r.body.operation.id}/cancel`);
        expect(cancel.status, cancel.text).toBe(200);
        expect((await waitOp(r.body.operation.id)).status).toBe('cancelled');
        await until('its VM to be gone', async () => (await vmRow(id)) === undefined);
        expect(await getContainer(id)).toMatchObject({
          status: 'failed',
          last_error: 'the create was cancelled',
        });
      } finally {
        host.containerStart = 'runs';
      }
    });
  });

  describe.sequential('status and actions', () => {
    it('reports drive the status: running, exited with the exit code (128+N for signals), restart_count', async () => {
      const c = await running({ name: 'reported', image: ref('test/app'), restart_policy: 'on-failure' });
      expect(c).toMatchObject({ status: 'running', restart_policy: 'on-failure', exit_code: null });
      host.processExited(c.id, { kind: 'exited', value: 3 });
      // The process's exit and the VM's power-off are two reports: wait for both.
      const exited = await waitContainer(
        c.id,
        'exited with 3 and its VM stopped',
        (x) => x.status === 'exited' && x.vm_state === 'stopped',
      );
      expect(exited).toMatchObject({ exit_code: 3, vm_state: 'stopped', restart_count: 0 });
      expect(exited.finished_at).not.toBeNull();
      const ev = await eventsOf(c.id);
      expect(
        ev.some(
          (e) => e.type === 'container.updated' && e.data.status === 'exited' && e.data.exit_code === 3,
        ),
      ).toBe(true);
      expect(
        (await api.get('/api/v1/containers?status=exited')).body.items.map((x: Container) => x.name),
      ).toContain('reported');

      host.restartedByPolicy(c.id);
      const back = await waitContainer(c.id, 'restarted', (x) => x.status === 'running');
      expect(back).toMatchObject({ restart_count: 1, exit_code: null });
      host.processExited(c.id, { kind: 'signal', value: 9 });
      expect((await waitContainer(c.id, 'killed', (x) => x.status === 'exited')).exit_code).toBe(137);
    });

    it('stop (graceful, with the timeout), start, pause, resume, restart, delete', async () => {
      const c = await running({
        name: 'acted',
        image: ref('test/app'),
        ports: [{ host_port: 18181, container_port: 81 }],
      });
      const stop = await act(c.id, 'stop', { timeout_s: 7 });
      expect(stop.operation.kind).toBe('vm.stop');
      expect(StrictContainer.parse(stop.container).id).toBe(c.id);
      // The process's exit (143) and the VM's power-off are two reports; the status is
      // 'exited' from the first, so wait for the VM to be off too.
      const stopped = await waitContainer(
        c.id,
        'exited, its VM off',
        (x) => x.status === 'exited' && x.vm_state === 'stopped',
      );
      expect(stopped).toMatchObject({ exit_code: 143 });
      expect(host.commands.get(c.id)!.at(-1)).toMatchObject({
        desired: 'stopped',
        stop: { force: false, timeout_s: 7 },
      });

      expect((await act(c.id, 'start')).operation.kind).toBe('vm.start');
      await waitContainer(c.id, 'running again', (x) => x.status === 'running');
      await act(c.id, 'pause');
      await waitContainer(c.id, 'paused', (x) => x.status === 'paused');
      expectError(await api.post(`/api/v1/containers/${c.id}/pause`), 409, 'VM_INVALID_STATE');
      await act(c.id, 'resume');
      await waitContainer(c.id, 'resumed', (x) => x.status === 'running');
      const started = (await getContainer(c.id)).started_at;
      const restart = await act(c.id, 'restart');
      expect(restart.operation.kind).toBe('vm.reboot');
      await until('the reboot to reach the host', async () => host.commands.get(c.id)!.at(-1)!.reboot);
      await waitContainer(c.id, 'a new process', (x) => x.status === 'running' && x.started_at !== started);

      await settled(c.id);
      expectError(await api.del(`/api/v1/containers/${c.id}`), 409, 'VM_INVALID_STATE');
      const del = await api.del(`/api/v1/containers/${c.id}?force=true`);
      expect(del.status, del.text).toBe(202);
      expect(del.body.operation.kind).toBe('vm.delete');
      expect((await waitOp(del.body.operation.id)).status).toBe('succeeded');
      await until(
        'the container to be gone',
        async () => (await api.get(`/api/v1/containers/${c.id}`)).status === 404,
      );
      expect(await vmRow(c.id)).toBeUndefined();
      expect(await db().selectFrom('port_forwards').selectAll().where('vm_id', '=', c.id).execute()).toEqual(
        [],
      );
      const last = (await eventsOf(c.id)).at(-1)!;
      expect(last.type).toBe('container.deleted');
      expect(StrictContainer.parse(last.data).id).toBe(c.id);
      expectError(await api.post(`/api/v1/containers/${c.id}/start`), 404, 'CONTAINER_NOT_FOUND');
    });

    it('lists with filters and cursor pagination', async () => {
      const all = (await api.get('/api/v1/containers?limit=500')).body.items as Container[];
      expect(all.length).toBeGreaterThanOrEqual(5);
      const seen: string[] = [];
      let cursor: string | null = null;
      do {
        const page = await api.get(`/api/v1/containers?limit=2${cursor ? `&cursor=${cursor}` : ''}`);
        expect(page.status, page.text).toBe(200);
        for (const c of page.body.items) seen.push(StrictContainer.parse(c).id);
        cursor = page.body.next;
      } while (cursor);
      expect(seen).toEqual(all.map((c) => c.id));
      expect(
        (await api.get('/api/v1/containers?name=twin-')).body.items.map((c: Container) => c.name).sort(),
      ).toEqual(['twin-a', 'twin-b']);
      const runningOnes = (await api.get('/api/v1/containers?status=running')).body.items as Container[];
      expect(runningOnes.length).toBeGreaterThan(0);
      expect(runningOnes.every((c) => c.status === 'running')).toBe(true);
      expectError(await api.get('/api/v1/containers?status=sleeping'), 400, 'VALIDATION_FAILED');
    });
  });

  describe.sequential('logs, exec, stats', () => {
    let c: Container;
    beforeAll(async () => {
      c = await running({ name: 'talker', image: ref('test/app') });
      host.addLog(c.id, 'stdout', 'one');
      host.addLog(c.id, 'stderr', 'two');
      host.addLog(c.id, 'stdout', 'three');
    });

    it('relays the log tail (timestamps, streams) and an empty body for a container never placed', async () => {
      const tail = await api.get(`/api/v1/containers/${c.id}/logs?tail=2`);
      expect(tail.status, tail.text).toBe(200);
      expect(tail.headers.get('content-type')).toMatch(/^text\/plain/);
      expect(tail.text).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z stderr two\n\S+ stdout three\n$/);
      expect((await api.get(`/api/v1/containers/${c.id}/logs?timestamps=false`)).text).toBe(
        'one\ntwo\nthree\n',
      );
      expect((await api.get(`/api/v1/containers/${c.id}/logs?timestamps=false&stream=stderr`)).text).toBe(
        'two\n',
      );
      expect(host.calls.filter((x) => x.path.includes('/logs')).at(-1)!.path).toContain('stream=stderr');
      const later = await create({ name: 'never-placed', image: ref('test/app'), start: false });
      const empty = await api.get(`/api/v1/containers/${later.container.id}/logs`);
      expect({ status: empty.status, text: empty.text }).toEqual({ status: 200, text: '' });
      expectError(await api.get(`/api/v1/containers/${c.id}/logs?tail=-1`), 400, 'VALIDATION_FAILED');
    });

    it('follows: new lines arrive, the agent request ends when the client leaves or the stream ends', async () => {
      const readLines = async (reader: ReadableStreamDefaultReader<Uint8Array>, until: string) => {
        let text = '';
        while (!text.includes(until)) {
          const { value, done } = await reader.read();
          if (done) break;
          text += Buffer.from(value).toString('utf8');
        }
        return text;
      };
      const leave = new AbortController();
      const res = await fetch(`${t.url}/api/v1/containers/${c.id}/logs?follow=true&timestamps=false&tail=1`, {
        headers: { authorization: `Bearer ${viewerToken}` },
        signal: leave.signal,
      });
      expect(res.status).toBe(200);
      const reader = res.body!.getReader();
      expect(await readLines(reader, 'three\n')).toBe('three\n');
      host.addLog(c.id, 'stdout', 'four');
      expect(await readLines(reader, 'four\n')).toBe('four\n');
      const abandoned = host.followsAbandoned;
      leave.abort();
      await until('the agent request to end with its client', async () => host.followsAbandoned > abandoned);

      const res2 = await fetch(
        `${t.url}/api/v1/containers/${c.id}/logs?follow=true&timestamps=false&tail=0`,
        {
          headers: { authorization: `Bearer ${viewerToken}` },
        },
      );
      expect(res2.status).toBe(200);
      const reader2 = res2.body!.getReader();
      await until('the follower to be attached', async () => host.following(c.id) > 0);
      host.addLog(c.id, 'stdout', 'ping');
      expect(await readLines(reader2, 'ping\n')).toBe('ping\n');
      host.endLogs(c.id);
      await until('the stream to end', async () => (await reader2.read()).done);
    });

    it('exec relays to the agent in the container environment; stdin never reaches the audit log', async () => {
      const secret = 'stdin-secret-9d1e';
      const r = await client(t.url, operatorToken).post(`/api/v1/containers/${c.id}/exec`, {
        command: ['cat'],
        stdin: `${secret}\u00e9`,
        env: { EXTRA: '2' },
        timeout_s: 5,
      });
      expect(r.status, r.text).toBe(200);
      expect(r.body).toEqual({
        exit_code: 0,
        signal: null,
        stdout: `${secret}\u00e9`,
        stderr: 'as 1000:1001',
        truncated: false,
        timed_out: false,
        duration_ms: 7,
      });
      const call = host.calls.filter((x) => x.path === `/v1/vms/${c.id}/exec`).at(-1)!;
      expect(call.body).toEqual({
        argv: ['cat'],
        env: { PATH: '/usr/bin:/bin', GREETING: 'hi', EXTRA: '2' },
        cwd: '/opq',
        user: '1000:1001',
        stdin_b64: Buffer.from(`${secret}\u00e9`).toString('base64'),
        timeout_s: 5,
      });
      // Written once the response went out.
      const audit = await auditOf('container.exec', c.id);
      expect(audit).toHaveLength(1);
      expect(audit[0]).toMatchObject({
        result: 'success',
        target: { type: 'container', id: c.id },
      });
      const store = t.manager.services.store;
      expect(JSON.stringify(await rowsOf(store, 'audit_events'))).not.toContain(secret);

      host.execAnswer = () => [400, { error: { code: 'EXEC_FAILED', message: 'exec: "nope": not found' } }];
      try {
        const refused = await api.post(`/api/v1/containers/${c.id}/exec`, { command: ['nope'] });
        expectError(refused, 400, 'EXEC_FAILED');
        expect(refused.body.error.message).toContain('not found');
      } finally {
        host.execAnswer = echoExec;
      }
    });

    it('exec on any VM: POST /api/v1/vms/{id}/exec, audited as vm.exec; a VM that does not run answers 409', async () => {
      const vm = await api.post('/api/v1/vms', { name: 'plain-vm' });
      expect(vm.status, vm.text).toBe(202);
      expect((await waitOp(vm.body.operation.id)).status).toBe('succeeded');
      const r = await api.post(`/api/v1/vms/${vm.body.vm.id}/exec`, {
        command: ['uname', '-a'],
        stdin: 'vm-stdin-secret',
      });
      expect(r.status, r.text).toBe(200);
      expect(r.body.stdout).toBe('vm-stdin-secret');
      expect(host.calls.filter((x) => x.path === `/v1/vms/${vm.body.vm.id}/exec`).at(-1)!.body).toMatchObject(
        {
          argv: ['uname', '-a'],
          env: {},
          cwd: null,
          user: null,
          timeout_s: 60,
        },
      );
      expect(await auditOf('vm.exec', vm.body.vm.id)).toHaveLength(1);
      expect(JSON.stringify(await rowsOf(t.manager.services.store, 'audit_events'))).not.toContain(
        'vm-stdin-secret',
      );
      expectError(
        await api.post(`/api/v1/vms/${vm.body.vm.id}/exec`, { command: [] }),
        400,
        'VALIDATION_FAILED',
      );
      const defined = await api.post('/api/v1/vms', { name: 'plain-defined', start: false });
      expectError(
        await api.post(`/api/v1/vms/${defined.body.vm.id}/exec`, { command: ['true'] }),
        409,
        'VM_INVALID_STATE',
      );
      const later = (await api.get('/api/v1/containers?name=never-placed')).body.items[0] as Container;
      expectError(
        await api.post(`/api/v1/containers/${later.id}/exec`, { command: ['true'] }),
        409,
        'VM_INVALID_STATE',
      );
    });

    it('stats: the agent figures while it runs, nulls when it runs nowhere', async () => {
      const r = await api.get(`/api/v1/containers/${c.id}/stats`);
      expect(r.status, r.text).toBe(200);
      expect(ContainerStats.strict().parse(r.body)).toMatchObject({
        id: c.id,
        status: 'running',
        ...STAND_IN_STATS,
      });
      const later = (await api.get('/api/v1/containers?name=never-placed')).body.items[0] as Container;
      expect((await api.get(`/api/v1/containers/${later.id}/stats`)).body).toMatchObject({
        status: 'created',
        host: null,
        guest: null,
      });
    });

    describe.sequential('exec WebSocket', () => {
      const wsUrl = (p: string) => `${t.url.replace(/^http/, 'ws')}${p}`;
      /** Opens a socket; answers it with its frames, or the HTTP status the upgrade got. */
      const connect = (p: string, headers: Record<string, string>) =>
        new Promise<
          | { ws: WebSocket; frames: Array<{ binary: boolean; data: Buffer }>; closed: Promise<number> }
          | { status: number; body: string }
        >((resolve, reject) => {
          const ws = new WebSocket(wsUrl(p), { headers });
          const frames: Array<{ binary: boolean; data: Buffer }> = [];
          ws.on('message', (data, binary) => frames.push({ binary, data: data as Buffer }));
          const closed = new Promise<number>((r) => ws.on('close', (code) => r(code)));
          ws.on('open', () => resolve({ ws, frames, closed }));
          ws.on('unexpected-response', (_req, res) => {
            let body = '';
            res.on('data', (d: Buffer) => {
              body += d.toString('utf8');
            });
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
          });
          ws.on('error', (err) => reject(err));
        });
      const q = (argv: string[], extra = '') =>
        `?command=${encodeURIComponent(JSON.stringify(argv))}${extra}`;

      it("relays both ways to the agent with the container's user and working dir; eof ends with exit and 1000", async () => {
        const before = host.execSessions.length;
        const s = await connect(`/api/v1/containers/${c.id}/exec/ws${q(['/bin/sh'], '&rows=30&cols=100')}`, {
          authorization: `Bearer ${operatorToken}`,
        });
        if (!('ws' in s)) throw new Error(`upgrade refused: ${s.status} ${s.body}`);
        await until('started', async () =>
          s.frames.some((f) => !f.binary && f.data.toString().includes('started')),
        );
        expect(JSON.parse(s.frames[0]!.data.toString())).toEqual({ type: 'started', pid: 77 });
        s.ws.send(Buffer.from('echo hello\n'), { binary: true });
        await until('the echo', async () =>
          s.frames.some((f) => f.binary && f.data.toString() === 'echo hello\n'),
        );
        s.ws.send(JSON.stringify({ type: 'eof' }));
        expect(await s.closed).toBe(1000);
        expect(JSON.parse(s.frames.at(-1)!.data.toString())).toEqual({
          type: 'exit',
          exit_code: 0,
          signal: null,
        });
        const session = host.execSessions[before]!;
        expect(session.vmId).toBe(c.id);
        expect(Object.fromEntries(session.query)).toEqual({
          command: '["/bin/sh"]',
          tty: '1',
          rows: '30',
          cols: '100',
          user: '1000:1001',
          working_dir: '/opq',
        });
        expect(Buffer.concat(session.input).toString()).toBe('echo hello\n');
        expect(session.messages).toEqual([{ type: 'eof' }]);
        await auditOf('container.exec', c.id, 101);
      });

      it('for VMs too; a signal ends the command; sessions with the same origin only', async () => {
        const vm = (await api.get('/api/v1/vms?name=plain-vm')).body.items[0] as Vm;
        const admin = await login(t.url, 'admin', ADMIN_PASSWORD);
        const foreign = await connect(`/api/v1/vms/${vm.id}/exec/ws${q(['top'], '&tty=0')}`, {
          cookie: admin.cookie,
          origin: 'http://evil.example',
        });
        expect(foreign).toMatchObject({ status: 403 });
        const s = await connect(`/api/v1/vms/${vm.id}/exec/ws${q(['top'], '&tty=0&user=root')}`, {
          cookie: admin.cookie,
          origin: t.url,
        });
        if (!('ws' in s)) throw new Error(`upgrade refused: ${s.status} ${s.body}`);
        await until('started', async () => s.frames.length > 0);
        s.ws.send(JSON.stringify({ type: 'signal', signal: 15 }));
        expect(await s.closed).toBe(1000);
        expect(JSON.parse(s.frames.at(-1)!.data.toString())).toEqual({
          type: 'exit',
          exit_code: null,
          signal: 15,
        });
        expect(Object.fromEntries(host.execSessions.at(-1)!.query)).toMatchObject({
          command: '["top"]',
          tty: '0',
          user: 'root',
        });
        await auditOf('vm.exec', vm.id, 101);
      });

      it('refuses viewers (403), a bad command (400), a VM not running (409) before the upgrade', async () => {
        const sessions = host.execSessions.length;
        const viewer = await connect(`/api/v1/containers/${c.id}/exec/ws${q(['/bin/sh'])}`, {
          authorization: `Bearer ${viewerToken}`,
        });
        expect(viewer).toMatchObject({ status: 403 });
        expect(JSON.parse((viewer as { body: string }).body).error.code).toBe('FORBIDDEN');
        const vmViewer = await connect(`/api/v1/vms/${c.id}/exec/ws${q(['/bin/sh'])}`, {
          authorization: `Bearer ${viewerToken}`,
        });
        expect(vmViewer).toMatchObject({ status: 403 });
        const bad = await connect(`/api/v1/containers/${c.id}/exec/ws?command=not-json`, {
          authorization: `Bearer ${operatorToken}`,
        });
        expect(bad).toMatchObject({ status: 400 });
        const later = (await api.get('/api/v1/containers?name=never-placed')).body.items[0] as Container;
        const notRunning = await connect(`/api/v1/containers/${later.id}/exec/ws${q(['/bin/sh'])}`, {
          authorization: `Bearer ${operatorToken}`,
        });
        expect(notRunning).toMatchObject({ status: 409 });
        expect(host.execSessions.length).toBe(sessions);
        expectError(
          await api.get(`/api/v1/containers/${c.id}/exec/ws${q(['/bin/sh'])}`),
          426,
          'UPGRADE_REQUIRED',
        );
      });
    });
  });

  describe.sequential('roles, OpenAPI', () => {
    it('viewers read but every mutation answers 403, recording nothing', async () => {
      const c = (await api.get('/api/v1/containers?name=talker')).body.items[0] as Container;
      const viewer = client(t.url, viewerToken);
      const before = await recorded();
      const mutations: Array<[string, string, unknown?]> = [
        ['POST', '/api/v1/containers', { name: 'by-viewer', image: ref('test/app') }],
        ['DELETE', `/api/v1/containers/${c.id}?force=true`],
        ['POST', `/api/v1/containers/${c.id}/exec`, { command: ['true'] }],
        ['POST', `/api/v1/vms/${c.id}/exec`, { command: ['true'] }],
        ...['start', 'stop', 'restart', 'pause', 'resume'].map((a): [string, string] => [
          'POST',
          `/api/v1/containers/${c.id}/${a}`,
        ]),
      ];
      for (const [method, p, body] of mutations)
        expectError(await viewer.call(method, p, body), 403, 'FORBIDDEN');
      expect(await recorded()).toEqual(before);
      for (const p of ['', `/${c.id}`, `/${c.id}/logs`, `/${c.id}/stats`])
        expect((await viewer.get(`/api/v1/containers${p}`)).status, p).toBe(200);
    });

    it('documents the routes under the containers tag (and VM exec under vms)', async () => {
      const spec = (await api.get('/api/v1/openapi.json')).body;
      const tagsOf = (p: string, m: string) => spec.paths[p]?.[m]?.tags;
      for (const [p, m] of [
        ['/api/v1/containers', 'get'],
        ['/api/v1/containers', 'post'],
        ['/api/v1/containers/{id}', 'get'],
        ['/api/v1/containers/{id}', 'delete'],
        ['/api/v1/containers/{id}/stop', 'post'],
        ['/api/v1/containers/{id}/restart', 'post'],
        ['/api/v1/containers/{id}/logs', 'get'],
        ['/api/v1/containers/{id}/exec', 'post'],
        ['/api/v1/containers/{id}/exec/ws', 'get'],
        ['/api/v1/containers/{id}/stats', 'get'],
      ] as const) {
        expect(tagsOf(p, m), `${m} ${p}`).toEqual(['containers']);
        expect(spec.paths[p][m].summary, `${m} ${p}`).toBeTruthy();
      }
      expect(tagsOf('/api/v1/vms/{id}/exec', 'post')).toEqual(['vms']);
      expect(tagsOf('/api/v1/vms/{id}/exec/ws', 'get')).toEqual(['vms']);
      expect(spec.paths['/api/v1/containers'].post.description).toContain('REGISTRY_IMAGE_NOT_FOUND');
    });
  });
});
