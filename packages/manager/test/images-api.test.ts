/**
 * The image registry over HTTP on both datastores: streamed uploads with progress, size limit,
 * checksums, dedupe, sparse images stored sparse (upload, URL, OCI), URL imports from a local
 * server (success, mismatch, 404, cancel: none leaves an image), host path registration and its
 * refusals, format detection (a real bzImage yields its vmlinux), bytes that are not an image of
 * their kind refused (422 IMAGE_INVALID) on every import path, URLs of loopback and the hosts'
 * own addresses refused at admission and on redirect, delete refused while in use, and the
 * agent blob route.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Image, ImageActionResponse, type Operation } from '@nqvm/api';
import { inspectKernel } from '@nqvm/api/kernel';
import {
  basicAuthorization,
  ensureTestGuest,
  type OciRegistry,
  pushImage,
  sampleImage,
  startOciRegistry,
  type TestGuest,
} from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openPresence } from '../src/db/presence';
import { parseRange } from '../src/routes/images';
import { client, DATASTORES, startManager, type TestManager, userWithRole } from './harness';
import { CAPACITY, expectError, registerHost, rowsOf, tableNames } from './helpers';
import { rawDisk } from './image-fixtures';
import { chunksOf, upload } from './image-upload';

const StrictImage = Image.strict();
const MiB = 1024 * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/**
 * The upstream of URL imports: a file, a redirect to it, random bytes, a redirect to its own
 * loopback address, a 404, a slow endpoint.
 */
let upstream: http.Server;
let upstreamUrl: string;
/** Every path the upstream was asked for. */
const upstreamAsked: string[] = [];
const payload = rawDisk(3 * MiB + 17);
const noise = randomBytes(2 * MiB);
/** Keys of `/slow.img?key=` downloads whose client went away (the two datastores' suites run at once). */
const slowAborted = new Set<string>();

let guest: TestGuest;
/** A registry with basic auth holding `sample:v1` (two layers, a whiteout, a config). */
let registry: OciRegistry;
const OCI_USER = 'puller';
const OCI_PASSWORD = `registry-secret-${randomBytes(6).toString('hex')}`;
const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-images-test-'));
/** A 128 MiB ext4 holding 3 MiB of files, sparse as mkfs.ext4 writes it, and what it takes. */
let sparseExt4: { bytes: Buffer; storedBytes: number };

beforeAll(async () => {
  const tree = fs.mkdtempSync(path.join(workDir, 'sparse-tree-'));
  fs.writeFileSync(path.join(tree, 'data.bin'), randomBytes(3 * MiB));
  const file = path.join(workDir, 'sparse.ext4');
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', tree, file, '128M']);
  sparseExt4 = { bytes: fs.readFileSync(file), storedBytes: fs.statSync(file).blocks * 512 };
  upstream = http.createServer((req, res) => {
    upstreamAsked.push(req.url ?? '');
    if (req.url?.startsWith('/to-loopback?key=')) {
      res.writeHead(302, {
        location: `${upstreamUrl}/file.img?from=${req.url.slice('/to-loopback?key='.length)}`,
      });
      res.end();
    } else if (req.url === '/noise.img') {
      res.writeHead(200, { 'content-length': noise.length });
      res.end(noise);
    } else if (req.url === '/sparse.ext4') {
      res.writeHead(200, { 'content-length': sparseExt4.bytes.length });
      res.end(sparseExt4.bytes);
    } else if (req.url === '/file.img') {
      res.writeHead(200, { 'content-length': payload.length, 'content-type': 'application/octet-stream' });
      res.end(payload);
    } else if (req.url === '/redirect') {
      res.writeHead(302, { location: '/file.img' });
      res.end();
    } else if (req.url?.startsWith('/slow.img?key=')) {
      const key = req.url.slice('/slow.img?key='.length);
      res.writeHead(200, { 'content-length': 20 * MiB });
      const timer = setInterval(() => res.write(Buffer.alloc(64 * 1024, 7)), 50);
      res.on('close', () => {
        clearInterval(timer);
        slowAborted.add(key);
      });
    } else {
      res.writeHead(404);
      res.end('no such file');
    }
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  upstreamUrl = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
  guest = await ensureTestGuest();
  registry = await startOciRegistry({ basicAuth: { [OCI_USER]: OCI_PASSWORD } });
  await pushImage(
    { url: registry.url, repository: 'sample', authorization: basicAuthorization(OCI_USER, OCI_PASSWORD) },
    'v1',
    await sampleImage(),
  );
}, 900_000);

afterAll(async () => {
  await new Promise((r) => upstream.close(r));
  await registry?.stop();
  fs.rmSync(workDir, { recursive: true, force: true });
});

describe.concurrent.each(DATASTORES)('images API on %s', (kind) => {
  let t: TestManager;
  /** A second manager with host paths allowed, a 1 MiB size limit, and URL imports from `localhost` only. */
  let p: TestManager;
  let root: string;
  let api: ReturnType<typeof client>;
  let papi: ReturnType<typeof client>;

  beforeAll(async () => {
    // The upstream listens on loopback, which URL imports refuse unless allowed.
    t = await startManager(kind, { NQVM_IMAGE_FETCH_ALLOW: '127.0.0.1' });
    api = client(t.url, t.adminToken);
    root = fs.mkdtempSync(path.join(workDir, `root-${kind}-`));
    p = await startManager(kind, {
      MANAGER_ALLOW_IMAGE_PATHS: 'true',
      MANAGER_IMAGE_ROOT: root,
      MANAGER_IMAGE_MAX_BYTES: String(MiB),
      NQVM_IMAGE_FETCH_ALLOW: 'localhost',
    });
    papi = client(p.url, p.adminToken);
  });
  afterAll(async () => {
    await t?.close();
    await p?.close();
  });

  const blobDir = (m: TestManager) => path.join(m.dataDir, 'images', 'blobs', 'sha256');
  const blobFiles = (m: TestManager) => (fs.existsSync(blobDir(m)) ? fs.readdirSync(blobDir(m)).sort() : []);
  const waitOp = async (m: TestManager, id: string): Promise<Operation> => {
    const r = await client(m.url, m.adminToken).get(`/api/v1/operations/${id}?wait=30`);
    expect(r.status, r.text).toBe(200);
    return r.body;
  };
  const uploadOk = async (name: string, k: string, bytes: Buffer) => {
    const r = await upload(t.url, t.adminToken, `name=${name}&kind=${k}`, chunksOf(bytes));
    expect(r.status, r.text).toBe(201);
    ImageActionResponse.parse(r.body);
    StrictImage.parse(r.body.image);
    return r.body.image as Image;
  };
  const ext4 = (name: string, files: Record<string, string>): Buffer => {
    const dir = fs.mkdtempSync(path.join(workDir, `tree-${kind}-`));
    for (const [f, text] of Object.entries(files)) {
      fs.mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
      fs.writeFileSync(path.join(dir, f), text, { mode: 0o755 });
    }
    const out = path.join(workDir, `${name}-${kind}.ext4`);
    execFileSync('mkfs.ext4', ['-q', '-F', '-d', dir, out, '4M']);
    return fs.readFileSync(out);
  };

  describe.sequential('uploads', () => {
    it('streams a multi-MiB body: sha256 right, progress seen on the operation, events sent', async () => {
      const bytes = ext4('big', { 'usr/bin/cloud-init': '#!/bin/sh\n', 'etc/hostname': 'x\n' });
      const big = Buffer.concat([bytes, randomBytes(12 * MiB)]);
      const seen: number[] = [];
      const events: string[] = [];
      const stop = t.manager.services.bus.subscribe((e) => {
        if (e.type === 'operation.updated' && (e.data as Operation).kind === 'image.upload')
          seen.push((e.data as Operation).progress.percent);
        if (e.resourceType === 'image') events.push(e.type);
      });
      const r = await upload(t.url, t.adminToken, 'name=big-rootfs&kind=rootfs', chunksOf(big), {
        delayMs: 5,
      });
      stop();
      expect(r.status, r.text).toBe(201);
      const image = StrictImage.parse(r.body.image);
      expect(image).toMatchObject({
        name: 'big-rootfs',
        kind: 'rootfs',
        status: 'ready',
        sha256: sha(big),
        size_bytes: big.length,
        format: 'ext4',
        source: { type: 'upload' },
        is_default: false,
        metadata: { has_cloud_init: true },
      });
      expect(r.body.operation).toMatchObject({
        kind: 'image.upload',
        status: 'succeeded',
        target: { type: 'image', id: image.id },
      });
      expect(
        seen.some((x) => x > 0 && x < 100),
        `progress seen: ${seen.join(',')}`,
      ).toBe(true);
      expect(seen).toEqual([...seen].sort((a, b) => a - b));
      expect(events[0]).toBe('image.created');
      expect(events).toContain('image.updated');
      expect(fs.readFileSync(path.join(blobDir(t), image.sha256!)).equals(big)).toBe(true);
      expect((await api.get(`/api/v1/images/${image.id}`)).body).toEqual(image);
    });

    it('stores a sparse ext4 sparse: both sizes reported, the blob takes what the file system holds', async () => {
      const { bytes, storedBytes } = sparseExt4;
      expect(storedBytes).toBeLessThan(bytes.length / 8);
      const image = await uploadOk('sparse-rootfs', 'rootfs', bytes);
      expect(image).toMatchObject({ sha256: sha(bytes), size_bytes: bytes.length, format: 'ext4' });
      const blob = path.join(blobDir(t), sha(bytes));
      const st = fs.statSync(blob);
      expect(st.size).toBe(bytes.length);
      // Zero blocks mkfs.ext4 wrote out count as holes too: at most what the source takes.
      expect(st.blocks * 512).toBeLessThanOrEqual(storedBytes + 64 * 1024);
      expect(image.stored_bytes).toBe(st.blocks * 512);
      expect(sha(fs.readFileSync(blob))).toBe(sha(bytes));
      expect((await api.get(`/api/v1/images/${image.id}`)).body).toMatchObject({
        size_bytes: bytes.length,
        stored_bytes: st.blocks * 512,
      });
    });

    it('detects formats: ext4 without cloud-init, qcow2, raw, a gzip initrd', async () => {
      const plain = await uploadOk('plain', 'rootfs', ext4('plain', { 'etc/hostname': 'x\n' }));
      expect(plain).toMatchObject({ format: 'ext4', metadata: { has_cloud_init: false } });
      const qcow = path.join(workDir, `d-${kind}.qcow2`);
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', qcow, '64M']);
      expect(await uploadOk('qcow', 'rootfs', fs.readFileSync(qcow))).toMatchObject({
        format: 'qcow2',
        metadata: {},
      });
      expect(await uploadOk('raw-disk', 'rootfs', rawDisk(8192))).toMatchObject({ format: 'raw' });
      expect(await uploadOk('initrd', 'initrd', fs.readFileSync(guest.initrd))).toMatchObject({
        format: 'cpio.gz',
      });
    });

    it('refuses bytes that are not an image of their kind with 422 IMAGE_INVALID, saying what they are, keeping nothing', async () => {
      const before = blobFiles(t);
      const ops = async () =>
        (await api.get('/api/v1/operations?kind=image.upload&limit=500')).body.items.length;
      const opsBefore = await ops();
      const cases: Array<[string, Buffer, string, string]> = [
        [
          'rootfs',
          randomBytes(40 * MiB),
          'random',
          'random-looking bytes, no file system, partition table or qcow2 header',
        ],
        ['rootfs', Buffer.from('{"status":"ok"}\n'), 'json', 'JSON text'],
        ['kernel', randomBytes(70_000), 'random', 'random-looking bytes, no ELF or bzImage header'],
        ['kernel', fs.readFileSync(guest.initrd), 'gzip', 'gzip-compressed data'],
        ['initrd', fs.readFileSync(guest.kernel), 'bzimage', 'an x86 bzImage kernel, no cpio header'],
      ];
      for (const [k, bytes, found, text] of cases) {
        const bad = await upload(t.url, t.adminToken, `name=not-a-${k}&kind=${k}`, chunksOf(bytes));
        expectError(bad, 422, 'IMAGE_INVALID');
        expect(bad.body.error.message).toContain(text);
        expect(bad.body.error.details).toEqual({ field: 'kind', kind: k, found });
        expect((await api.get(`/api/v1/images?name=not-a-${k}`)).body.items).toEqual([]);
      }
      expect(blobFiles(t)).toEqual(before);
      expect(fs.readdirSync(blobDir(t)).filter((f) => f.startsWith('.tmp-'))).toEqual([]);
      // Each refused upload's operation failed with the code.
      const failed = (await api.get('/api/v1/operations?kind=image.upload&status=failed&limit=500')).body
        .items as Operation[];
      expect(failed.filter((o) => o.error?.code === 'IMAGE_INVALID')).toHaveLength(cases.length);
      expect(await ops()).toBe(opsBefore + cases.length);
    });

    it('a bzImage kernel also yields its ELF vmlinux as a blob the agent can fetch', async () => {
      const bz = fs.readFileSync(guest.kernel);
      const image = await uploadOk('kernel', 'kernel', bz);
      expect(image).toMatchObject({ format: 'bzimage', sha256: sha(bz), size_bytes: bz.length });
      const vmlinux = image.metadata.vmlinux!;
      expect(vmlinux.size_bytes).toBeGreaterThan(bz.length);
      const file = path.join(blobDir(t), vmlinux.sha256);
      expect(await inspectKernel(file)).toMatchObject({ format: 'elf', elfClass: 64, machine: 'x86_64' });
      expect(sha(fs.readFileSync(file))).toBe(vmlinux.sha256);

      const { credential } = await registerHost(t.url, t.adminToken, `blob-host-${kind}`);
      const get = (digest: string, headers: Record<string, string> = {}) =>
        fetch(`${t.url}/api/v1/agent/images/${digest}`, {
          headers: { authorization: `Bearer ${credential}`, ...headers },
        });
      const whole = await get(vmlinux.sha256);
      expect(whole.status).toBe(200);
      expect(whole.headers.get('etag')).toBe(`"${vmlinux.sha256}"`);
      expect(Number(whole.headers.get('content-length'))).toBe(vmlinux.size_bytes);
      expect(sha(Buffer.from(await whole.arrayBuffer()))).toBe(vmlinux.sha256);
      const kernel = await get(image.sha256!);
      expect(sha(Buffer.from(await kernel.arrayBuffer()))).toBe(image.sha256);
      // Resume from an offset.
      const part = await get(image.sha256!, { range: 'bytes=1000-' });
      expect(part.status).toBe(206);
      expect(part.headers.get('content-range')).toBe(`bytes 1000-${bz.length - 1}/${bz.length}`);
      expect(Buffer.from(await part.arrayBuffer()).equals(bz.subarray(1000))).toBe(true);
      const tooFar = await get(image.sha256!, { range: `bytes=${bz.length}-` });
      expect(tooFar.status).toBe(416);
      await tooFar.text();
      // Unknown digests, and user credentials, get nothing.
      const unknown = await get('0'.repeat(64));
      expect(unknown.status).toBe(404);
      await unknown.text();
      const asUser = await fetch(`${t.url}/api/v1/agent/images/${image.sha256}`, {
        headers: { authorization: `Bearer ${t.adminToken}` },
      });
      expect(asUser.status).toBe(403);
      expect((await asUser.json()).error.code).toBe('FORBIDDEN');
    });

    it('dedupes identical bytes into one blob, removed with the last image that uses it', async () => {
      const bytes = ext4('dup', { 'etc/motd': 'same\n' });
      const before = blobFiles(t);
      const a = await uploadOk('dup-a', 'rootfs', bytes);
      const b = await uploadOk('dup-b', 'rootfs', bytes);
      expect(a.sha256).toBe(b.sha256);
      expect(blobFiles(t)).toEqual([...before, a.sha256!].sort());
      expect((await api.del(`/api/v1/images/${a.id}`)).status).toBe(200);
      expect(blobFiles(t)).toContain(a.sha256);
      expect((await api.del(`/api/v1/images/${b.id}`)).status).toBe(200);
      expect(blobFiles(t)).toEqual(before);
      expectError(await api.get(`/api/v1/images/${b.id}`), 404, 'IMAGE_NOT_FOUND');
    });

    it('a checksum mismatch answers 422 and keeps nothing; a matching one is accepted', async () => {
      const bytes = ext4('sum', { 'etc/motd': 'sum\n' });
      const before = blobFiles(t);
      const wrong = await upload(t.url, t.adminToken, `name=sum&kind=rootfs&sha256=${'a'.repeat(64)}`, [
        bytes,
      ]);
      expectError(wrong, 422, 'CHECKSUM_MISMATCH');
      expect(wrong.body.error.details).toEqual({ expected: 'a'.repeat(64), actual: sha(bytes) });
      expect(blobFiles(t)).toEqual(before);
      expect((await api.get('/api/v1/images?name=sum')).body.items).toEqual([]);
      const ops = (await api.get('/api/v1/operations?kind=image.upload&status=failed')).body
        .items as Operation[];
      expect(ops.map((o) => o.error?.code)).toContain('CHECKSUM_MISMATCH');
      const right = await upload(t.url, t.adminToken, `name=sum&kind=rootfs&sha256=${sha(bytes)}`, [bytes]);
      expect(right.status, right.text).toBe(201);
    });

    it('refuses a body over MANAGER_IMAGE_MAX_BYTES with 413, announced or chunked, keeping nothing', async () => {
      const over = randomBytes(MiB + 1);
      const announced = await upload(p.url, p.adminToken, 'name=huge&kind=rootfs', chunksOf(over));
      expectError(announced, 413, 'BODY_TOO_LARGE');
      const chunked = await upload(p.url, p.adminToken, 'name=huge&kind=rootfs', chunksOf(over, 64 * 1024), {
        contentLength: null,
      });
      expectError(chunked, 413, 'BODY_TOO_LARGE');
      expect(blobFiles(p)).toEqual([]);
      expect((await papi.get('/api/v1/images?name=huge')).body.items).toEqual([]);
      const fits = await upload(p.url, p.adminToken, 'name=fits&kind=rootfs', [rawDisk(MiB)]);
      expect(fits.status, fits.text).toBe(201);
    });

    it('validates the query and the role; a taken name is 409 before any byte is kept', async () => {
      expectError(
        await upload(t.url, t.adminToken, 'name=x&kind=disk', [Buffer.from('x')]),
        400,
        'VALIDATION_FAILED',
      );
      expectError(
        await upload(t.url, t.adminToken, 'kind=rootfs', [Buffer.from('x')]),
        400,
        'VALIDATION_FAILED',
      );
      expectError(
        await upload(t.url, t.adminToken, `name=x&kind=rootfs&sha256=${'A'.repeat(64)}`, [Buffer.from('x')]),
        400,
        'VALIDATION_FAILED',
      );
      const viewer = await userWithRole(t, 'viewer');
      expectError(await upload(t.url, viewer, 'name=x&kind=rootfs', [Buffer.from('x')]), 403, 'FORBIDDEN');
      const before = blobFiles(t);
      expectError(
        await upload(t.url, t.adminToken, 'name=plain&kind=rootfs', [randomBytes(4096)]),
        409,
        'NAME_TAKEN',
      );
      expect(blobFiles(t)).toEqual(before);
    });
  });

  describe.sequential('URL imports', () => {
    const importUrl = async (name: string, source: Record<string, unknown>, m = t) => {
      const r = await client(m.url, m.adminToken).post('/api/v1/images', { name, kind: 'rootfs', source });
      expect(r.status, r.text).toBe(202);
      ImageActionResponse.parse(r.body);
      expect(r.body.image.status).toBe('importing');
      expect(r.body.operation).toMatchObject({
        kind: 'image.import',
        target: { type: 'image', id: r.body.image.id },
      });
      return r.body as { image: Image; operation: Operation };
    };

    it('downloads through a redirect, verifies the checksum and stores the blob', async () => {
      const { image, operation } = await importUrl('from-url', {
        type: 'url',
        url: `${upstreamUrl}/redirect`,
        sha256: sha(payload),
      });
      expect(await waitOp(t, operation.id)).toMatchObject({
        status: 'succeeded',
        progress: { percent: 100 },
      });
      const got = StrictImage.parse((await api.get(`/api/v1/images/${image.id}`)).body);
      expect(got).toMatchObject({
        status: 'ready',
        sha256: sha(payload),
        size_bytes: payload.length,
        format: 'raw',
        source: { type: 'url', url: `${upstreamUrl}/redirect` },
      });
      expect(fs.readFileSync(path.join(blobDir(t), sha(payload))).equals(payload)).toBe(true);
    });

    it('a checksum mismatch fails the operation with CHECKSUM_MISMATCH and keeps no bytes', async () => {
      const before = blobFiles(t);
      const { image, operation } = await importUrl('url-mismatch', {
        type: 'url',
        url: `${upstreamUrl}/file.img`,
        sha256: 'b'.repeat(64),
      });
      const op = await waitOp(t, operation.id);
      expect(op).toMatchObject({ status: 'failed', error: { code: 'CHECKSUM_MISMATCH' } });
      expect(op.error?.message).toContain('b'.repeat(64));
      // A failed import leaves no image: nothing listed, nothing to back a VM, the name free.
      expectError(await api.get(`/api/v1/images/${image.id}`), 404, 'IMAGE_NOT_FOUND');
      expect((await api.get('/api/v1/images?name=url-mismatch')).body.items).toEqual([]);
      expect(blobFiles(t)).toEqual(before);
      expectError(
        await api.post('/api/v1/vms', { name: `vm-on-failed`, rootfs_image_id: image.id }),
        400,
        'VALIDATION_FAILED',
      );
      const again = await importUrl('url-mismatch', { type: 'url', url: `${upstreamUrl}/file.img` });
      expect(await waitOp(t, again.operation.id)).toMatchObject({ status: 'succeeded' });
    });

    it('a 404 upstream fails the operation with IMPORT_FAILED', async () => {
      const { image, operation } = await importUrl('url-404', {
        type: 'url',
        url: `${upstreamUrl}/nope.img`,
      });
      const op = await waitOp(t, operation.id);
      expect(op).toMatchObject({ status: 'failed', error: { code: 'IMPORT_FAILED' } });
      expect(op.error?.message).toContain('404');
      expectError(await api.get(`/api/v1/images/${image.id}`), 404, 'IMAGE_NOT_FOUND');
    });

    it('a download that is not an image of its kind fails with IMAGE_INVALID and keeps nothing', async () => {
      const before = blobFiles(t);
      const { image, operation } = await importUrl('url-noise', {
        type: 'url',
        url: `${upstreamUrl}/noise.img`,
      });
      const op = await waitOp(t, operation.id);
      expect(op).toMatchObject({ status: 'failed', error: { code: 'IMAGE_INVALID' } });
      expect(op.error?.message).toContain('random-looking bytes');
      expectError(await api.get(`/api/v1/images/${image.id}`), 404, 'IMAGE_NOT_FOUND');
      expect(blobFiles(t)).toEqual(before);
    });

    it("refuses at admission (400 URL_NOT_ALLOWED) loopback, link-local, unspecified and multicast addresses and the hosts' own, creating nothing", async () => {
      const port = new URL(upstreamUrl).port;
      const own = Object.values(os.networkInterfaces())
        .flat()
        .find((a) => a && !a.internal && a.family === 'IPv4')?.address;
      expect(own, 'this machine has a non-loopback IPv4 address').toBeDefined();
      // A host registered under an address of its own: its agent's port is no image server.
      const jt = await papi.post('/api/v1/join-tokens', { description: 'url policy' });
      const reg = await fetch(`${p.url}/api/v1/agent/register`, {
        method: 'POST',
        headers: { authorization: `Bearer ${jt.body.token}`, 'content-type': 'application/json' },
        body: JSON.stringify({
          name: `far-host-${kind}`,
          address: 'https://198.51.100.20:8443',
          agent_version: '0.1.0',
          capacity: CAPACITY,
        }),
      });
      expect(reg.status, await reg.text()).toBe(201);
      const asked = upstreamAsked.length;
      const importsBefore = (await papi.get('/api/v1/operations?kind=image.import&limit=500')).body.items
        .length;
      for (const [url, reason] of [
        [`http://127.0.0.1:${port}/file.img`, 'loopback'],
        [`http://[::1]:${port}/file.img`, 'loopback'],
        [`http://2130706433:${port}/file.img`, 'loopback'],
        [`http://localhost.localhost:${port}/file.img`, 'loopback'],
        ['http://169.254.169.254/latest/meta-data/iam/', 'link-local'],
        [`http://0.0.0.0:${port}/file.img`, 'unspecified'],
        ['http://224.0.0.251/x', 'multicast'],
        [`http://${own}:${port}/file.img`, 'manager'],
        ['https://198.51.100.20:8443/v1/health', 'host'],
      ]) {
        const r = await papi.post('/api/v1/images', {
          name: 'refused-url',
          kind: 'rootfs',
          source: { type: 'url', url },
        });
        expectError(r, 400, 'URL_NOT_ALLOWED');
        expect(r.body.error.details, url).toMatchObject({ field: 'source.url', reason });
        expect(r.body.error.message).toContain('NQVM_IMAGE_FETCH_ALLOW');
      }
      expect((await papi.get('/api/v1/images?name=refused-url')).body.items).toEqual([]);
      expect((await papi.get('/api/v1/operations?kind=image.import&limit=500')).body.items).toHaveLength(
        importsBefore,
      );
      expect(upstreamAsked.length).toBe(asked);
    });

    it('refuses a redirect to loopback during the fetch: URL_NOT_ALLOWED, the target never asked, nothing kept', async () => {
      const before = blobFiles(p);
      // `localhost` is allowed by name on this manager; the address it redirects to is not.
      const { image, operation } = await importUrl(
        'url-to-loopback',
        { type: 'url', url: `http://localhost:${new URL(upstreamUrl).port}/to-loopback?key=${kind}` },
        p,
      );
      const op = await waitOp(p, operation.id);
      expect(op).toMatchObject({ status: 'failed', error: { code: 'URL_NOT_ALLOWED' } });
      expect(op.error?.message).toContain(`redirects to ${upstreamUrl}/file.img?from=${kind}`);
      expect(op.error?.message).toContain('a loopback address');
      expect(upstreamAsked).toContain(`/to-loopback?key=${kind}`);
      expect(upstreamAsked).not.toContain(`/file.img?from=${kind}`);
      expectError(await papi.get(`/api/v1/images/${image.id}`), 404, 'IMAGE_NOT_FOUND');
      expect(blobFiles(p)).toEqual(before);
    });

    it('keeps a sparse download sparse', async () => {
      const { bytes, storedBytes } = sparseExt4;
      const { image, operation } = await importUrl('url-sparse', {
        type: 'url',
        url: `${upstreamUrl}/sparse.ext4`,
        sha256: sha(bytes),
      });
      expect(await waitOp(t, operation.id)).toMatchObject({ status: 'succeeded' });
      const got = StrictImage.parse((await api.get(`/api/v1/images/${image.id}`)).body);
      const st = fs.statSync(path.join(blobDir(t), sha(bytes)));
      expect(got).toMatchObject({ size_bytes: bytes.length, stored_bytes: st.blocks * 512 });
      expect(st.blocks * 512).toBeLessThanOrEqual(storedBytes + 64 * 1024);
    });

    // The test's own expect: the two datastores' suites run at once.
    it('an import can be cancelled: the image goes, the download stops, no bytes stay', async ({
      expect,
    }) => {
      const before = blobFiles(t);
      const { image, operation } = await importUrl('url-slow', {
        type: 'url',
        url: `${upstreamUrl}/slow.img?key=${kind}`,
      });
      await expect
        .poll(async () => (await api.get(`/api/v1/operations/${operation.id}`)).body.progress.percent, {
          timeout: 10_000,
        })
        .toBeGreaterThan(0);
      expectError(await api.del(`/api/v1/images/${image.id}`), 409, 'IMAGE_NOT_READY');
      const c = await api.post(`/api/v1/operations/${operation.id}/cancel`);
      expect(c.status, c.text).toBe(200);
      await t.manager.services.images.idle();
      expectError(await api.get(`/api/v1/images/${image.id}`), 404, 'IMAGE_NOT_FOUND');
      expect((await api.get(`/api/v1/operations/${operation.id}`)).body.status).toBe('cancelled');
      await expect.poll(() => slowAborted.has(kind)).toBe(true);
      expect(fs.readdirSync(blobDir(t)).filter((f) => f.startsWith('.tmp-'))).toEqual([]);
      expect(blobFiles(t)).toEqual(before);
    });

    it('refuses non-http URLs, credentials in URLs, and OCI sources for kernels', async () => {
      for (const url of ['file:///etc/passwd', 'ftp://example.org/x', 'http://user:pw@127.0.0.1/x']) {
        expectError(
          await api.post('/api/v1/images', { name: 'bad-url', kind: 'rootfs', source: { type: 'url', url } }),
          400,
          'VALIDATION_FAILED',
        );
      }
      expectError(
        await api.post('/api/v1/images', {
          name: 'oci-kernel',
          kind: 'kernel',
          source: { type: 'oci', reference: 'docker.io/library/alpine:3.20', password: 'secret-pw' },
        }),
        400,
        'VALIDATION_FAILED',
      );
      expect((await api.get('/api/v1/images?name=bad-url')).body.items).toEqual([]);
    });
  });

  describe.sequential('OCI imports', () => {
    const importOci = async (name: string, password: string) => {
      const r = await api.post('/api/v1/images', {
        name,
        kind: 'rootfs',
        source: {
          type: 'oci',
          reference: `${registry.host}/sample:v1`,
          username: OCI_USER,
          password,
          plain_http: true,
        },
      });
      expect(r.status, r.text).toBe(202);
      expect(r.body.image.source).toEqual({ type: 'oci', reference: `${registry.host}/sample:v1` });
      return { image: r.body.image as Image, op: await waitOp(t, r.body.operation.id) };
    };

    it('pulls with basic auth into an ext4 blob and keeps the image config; the password is stored nowhere', async () => {
      const { image, op } = await importOci('from-oci', OCI_PASSWORD);
      expect(op, JSON.stringify(op.error)).toMatchObject({ status: 'succeeded' });
      const got = StrictImage.parse((await api.get(`/api/v1/images/${image.id}`)).body);
      expect(got).toMatchObject({
        status: 'ready',
        format: 'ext4',
        metadata: {
          has_cloud_init: false,
          oci: {
            reference: `${registry.host}/sample:v1`,
            config: {
              entrypoint: ['/bin/tool'],
              cmd: ['--serve', 'x'],
              env: ['PATH=/usr/bin:/bin', 'GREETING=hi'],
              working_dir: '/opq',
              user: '1000:1001',
              exposed_ports: ['8080/tcp'],
            },
          },
        },
      });
      expect(got.metadata.oci?.manifest_digest).toMatch(/^sha256:[a-f0-9]{64}$/);
      const blob = path.join(blobDir(t), got.sha256!);
      expect(sha(fs.readFileSync(blob))).toBe(got.sha256);
      // mkfs.ext4 makes the file system sparse, and it stays so in the store.
      expect(got.stored_bytes).toBe(fs.statSync(blob).blocks * 512);
      expect(got.stored_bytes).toBeLessThan(got.size_bytes! / 2);
      expect(
        execFileSync('debugfs', ['-R', 'cat /etc/hello', blob], {
          stdio: ['ignore', 'pipe', 'ignore'],
        }).toString(),
      ).toBe('hello from layer 1\n');
      const store = t.manager.services.store;
      for (const table of await tableNames(store))
        expect(JSON.stringify(await rowsOf(store, table)), table).not.toContain(OCI_PASSWORD);
      expect(fs.readdirSync(path.join(t.dataDir, 'images', 'work'))).toEqual([]);
    });

    it('a refused password fails the import and keeps no bytes', async () => {
      const before = blobFiles(t);
      const { image, op } = await importOci('oci-denied', 'wrong-password');
      expect(op.status).toBe('failed');
      expectError(await api.get(`/api/v1/images/${image.id}`), 404, 'IMAGE_NOT_FOUND');
      expect(blobFiles(t)).toEqual(before);
      expect(fs.readdirSync(path.join(t.dataDir, 'images', 'work'))).toEqual([]);
    });
  });

  describe.sequential('host paths', () => {
    const register = (m: TestManager, name: string, file: string, k = 'rootfs') =>
      client(m.url, m.adminToken).post('/api/v1/images', {
        name,
        kind: k,
        source: { type: 'path', path: file },
      });

    it('is refused while MANAGER_ALLOW_IMAGE_PATHS is off', async () => {
      expectError(await register(t, 'p', '/etc/hostname'), 403, 'IMAGE_PATHS_DISABLED');
    });

    it('refuses "..", a symlink out of the root, a path outside it, and what is not a regular file', async () => {
      const outside = path.join(workDir, `outside-${kind}.img`);
      fs.writeFileSync(outside, randomBytes(4096));
      fs.symlinkSync(outside, path.join(root, 'link.img'));
      fs.mkdirSync(path.join(root, 'sub'));
      expectError(await register(p, 'p', `sub/../../outside-${kind}.img`), 400, 'IMAGE_PATH_OUTSIDE_ROOT');
      expectError(await register(p, 'p', `${root}/sub/../link.img`), 400, 'IMAGE_PATH_OUTSIDE_ROOT');
      expectError(await register(p, 'p', path.join(root, 'link.img')), 400, 'IMAGE_PATH_OUTSIDE_ROOT');
      expectError(await register(p, 'p', outside), 400, 'IMAGE_PATH_OUTSIDE_ROOT');
      expectError(await register(p, 'p', path.join(root, 'sub')), 400, 'VALIDATION_FAILED');
      expectError(await register(p, 'p', path.join(root, 'missing.img')), 400, 'VALIDATION_FAILED');
      expect((await papi.get('/api/v1/images?name=p')).body.items).toEqual([]);
    });

    it('refuses a file that is not an image of its kind (422 IMAGE_INVALID), registering nothing', async () => {
      fs.writeFileSync(path.join(root, 'noise.img'), randomBytes(2 * MiB));
      fs.writeFileSync(path.join(root, 'kernel.txt'), 'not a kernel\n');
      const r = await register(p, 'p-noise', 'noise.img');
      expectError(r, 422, 'IMAGE_INVALID');
      expect(r.body.error.details).toEqual({ field: 'kind', kind: 'rootfs', found: 'random' });
      expectError(await register(p, 'p-noise', 'kernel.txt', 'kernel'), 422, 'IMAGE_INVALID');
      expect((await papi.get('/api/v1/images?name=p-noise')).body.items).toEqual([]);
      const work = path.join(p.dataDir, 'images', 'work');
      expect(fs.existsSync(work) ? fs.readdirSync(work) : []).toEqual([]);
    });

    it('registers a file under the root in place (hashed, not copied), even a kernel with its vmlinux', async () => {
      const bytes = ext4('path', { 'usr/bin/cloud-init': '#!/bin/sh\n' });
      fs.mkdirSync(path.join(root, 'disks'));
      fs.writeFileSync(path.join(root, 'disks', 'a.ext4'), bytes);
      const before = blobFiles(p);
      const r = await register(p, 'path-rootfs', 'disks/a.ext4');
      expect(r.status, r.text).toBe(201);
      expect(r.body.operation).toBeNull();
      expect(StrictImage.parse(r.body.image)).toMatchObject({
        status: 'ready',
        sha256: sha(bytes),
        size_bytes: bytes.length,
        format: 'ext4',
        source: { type: 'path', path: fs.realpathSync(path.join(root, 'disks', 'a.ext4')) },
        metadata: { has_cloud_init: true },
      });
      expect(blobFiles(p)).toEqual(before);
      // Symlinks that stay inside the root are fine.
      fs.copyFileSync(guest.kernel, path.join(root, 'vmlinuz'));
      fs.symlinkSync('vmlinuz', path.join(root, 'kernel-link'));
      const k = await register(p, 'path-kernel', path.join(root, 'kernel-link'), 'kernel');
      expect(k.status, k.text).toBe(201);
      expect(k.body.image).toMatchObject({
        format: 'bzimage',
        source: { path: fs.realpathSync(path.join(root, 'vmlinuz')) },
      });
      expect(blobFiles(p)).toEqual([...before, k.body.image.metadata.vmlinux.sha256].sort());
      // The agent route serves a path image's own file.
      const { credential } = await registerHost(p.url, p.adminToken, `path-host-${kind}`);
      const res = await fetch(`${p.url}/api/v1/agent/images/${sha(bytes)}`, {
        headers: { authorization: `Bearer ${credential}` },
      });
      expect(sha(Buffer.from(await res.arrayBuffer()))).toBe(sha(bytes));
      // Deleting the image leaves the file alone.
      expect((await papi.del(`/api/v1/images/${r.body.image.id}`)).status).toBe(200);
      expect(fs.existsSync(path.join(root, 'disks', 'a.ext4'))).toBe(true);
    });
  });

  describe.sequential('changes and deletion', () => {
    it('refuses to delete an image a VM, template or snapshot uses (409 IMAGE_IN_USE), removing nothing', async () => {
      const image = await uploadOk('used', 'rootfs', ext4('used', { 'etc/motd': 'used\n' }));
      const vm = await api.post('/api/v1/vms', {
        name: `uses-image`,
        rootfs_image_id: image.id,
        start: false,
      });
      expect(vm.status, vm.text).toBe(202);
      const r = await api.del(`/api/v1/images/${image.id}`);
      expectError(r, 409, 'IMAGE_IN_USE');
      expect(r.body.error.details.users).toEqual([
        { type: 'vm', id: vm.body.vm.id, name: 'uses-image', fields: ['rootfs_image_id'] },
      ]);
      expect((await api.get(`/api/v1/images/${image.id}`)).body).toEqual(image);
      expect(blobFiles(t)).toContain(image.sha256);
      expect((await api.del(`/api/v1/vms/${vm.body.vm.id}`)).status).toBe(202);

      const db = t.manager.services.store.db;
      const at = new Date().toISOString();
      await db
        .insertInto('templates')
        .values({
          id: crypto.randomUUID(),
          name: 'tpl',
          spec: JSON.stringify({ rootfs_image_id: image.id }),
          created_at: at,
          updated_at: at,
        })
        .execute();
      const t409 = await api.del(`/api/v1/images/${image.id}`);
      expectError(t409, 409, 'IMAGE_IN_USE');
      expect(t409.body.error.details.users).toMatchObject([{ type: 'template', name: 'tpl' }]);
      await db.deleteFrom('templates').execute();
      await db
        .insertInto('snapshots')
        .values({
          id: crypto.randomUUID(),
          name: 'snap',
          vm_id: null,
          host_id: null,
          snapshot_type: 'Full',
          status: 'ready',
          size_bytes: null,
          files: JSON.stringify({ disks: [{ image_id: image.id }] }),
          spec: '{}',
          created_at: at,
          updated_at: at,
        })
        .execute();
      const s409 = await api.del(`/api/v1/images/${image.id}`);
      expectError(s409, 409, 'IMAGE_IN_USE');
      expect(s409.body.error.details.users).toMatchObject([
        { type: 'snapshot', fields: ['files.disks.0.image_id'] },
      ]);
      await db.deleteFrom('snapshots').execute();
      expect((await api.del(`/api/v1/images/${image.id}`)).body).toEqual({ id: image.id, deleted: true });
      expect(blobFiles(t)).not.toContain(image.sha256);
    });

    it('PATCH renames and moves the default; a default image is deleted only with force=true', async () => {
      const a = await uploadOk('def-a', 'initrd', fs.readFileSync(guest.initrd));
      const b = await uploadOk(
        'def-b',
        'initrd',
        Buffer.concat([fs.readFileSync(guest.initrd), Buffer.alloc(512)]),
      );
      expect((await api.patch(`/api/v1/images/${a.id}`, { is_default: true })).body).toMatchObject({
        is_default: true,
      });
      const moved = await api.patch(`/api/v1/images/${b.id}`, { is_default: true, name: 'def-b2' });
      expect(moved.status, moved.text).toBe(200);
      expect(moved.body).toMatchObject({ name: 'def-b2', is_default: true });
      expect((await api.get(`/api/v1/images/${a.id}`)).body.is_default).toBe(false);
      expectError(await api.patch(`/api/v1/images/${a.id}`, { name: 'def-b2' }), 409, 'NAME_TAKEN');
      const refused = await api.del(`/api/v1/images/${b.id}`);
      expectError(refused, 409, 'IMAGE_IN_USE');
      expect(refused.body.error.details).toEqual({ users: [], is_default: true });
      expect((await api.del(`/api/v1/images/${b.id}?force=true`)).status).toBe(200);
      expect((await api.del(`/api/v1/images/${a.id}`)).status).toBe(200);
    });

    it('imports of a stopped manager end at once, silent ones of unknown owner later; live ones stay', async () => {
      const { store, ops, images } = t.manager.services;
      // Another manager process on this datastore (PostgreSQL only: SQLite serves one manager).
      const other = await openPresence(store, t.dbUrl);
      const orphan = async (name: string, manager: string | null, updatedAt = new Date().toISOString()) => {
        const id = crypto.randomUUID();
        const at = new Date().toISOString();
        await store.db
          .insertInto('images')
          .values({
            id,
            name,
            kind: 'rootfs',
            status: 'importing',
            source: '{"type":"url","url":"http://127.0.0.1:9/x"}',
            metadata: '{}',
            is_default: 0,
            created_at: at,
            updated_at: at,
          })
          .execute();
        const op = await ops.create({
          kind: 'image.import',
          target: { type: 'image', id },
          createdBy: null,
          params: manager ? { manager } : {},
        });
        await ops.update(op.id, { status: 'running' });
        await store.db
          .updateTable('operations')
          .set({ updated_at: updatedAt })
          .where('id', '=', op.id)
          .execute();
        return { id, opId: op.id };
      };
      const stopped = crypto.randomUUID();
      const silent = await orphan('orphan-silent', null, new Date(Date.now() - 10 * 60_000).toISOString());
      const cutOff = await orphan('orphan-cut-off', stopped);
      const unknownOwner = await orphan('orphan-unknown', null);
      const elsewhere = await orphan('orphan-elsewhere', other.id);
      const temp = (owner: string) => path.join(blobDir(t), `.tmp-${owner}.${crypto.randomUUID()}`);
      fs.mkdirSync(blobDir(t), { recursive: true });
      const [deadTemp, otherTemp] = [temp(stopped), temp(other.id)];
      for (const f of [deadTemp, otherTemp]) fs.writeFileSync(f, 'partial');
      try {
        expect(await images.recover()).toBe(kind === 'postgres' ? 2 : 3);
        for (const gone of kind === 'postgres' ? [silent, cutOff] : [silent, cutOff, elsewhere]) {
          expectError(await api.get(`/api/v1/images/${gone.id}`), 404, 'IMAGE_NOT_FOUND');
          const op = (await api.get(`/api/v1/operations/${gone.opId}`)).body as Operation;
          expect(op).toMatchObject({ status: 'failed', error: { code: 'IMPORT_FAILED' } });
          expect(op.error?.message).toContain('the manager running it stopped');
        }
        expect(fs.existsSync(deadTemp)).toBe(false);
        expect(fs.existsSync(otherTemp)).toBe(kind === 'postgres');
        const stay = kind === 'postgres' ? [unknownOwner, elsewhere] : [unknownOwner];
        for (const live of stay) {
          expect((await api.get(`/api/v1/images/${live.id}`)).body.status).toBe('importing');
          await ops.cancel(live.opId);
          await store.db.deleteFrom('images').where('id', '=', live.id).execute();
        }
      } finally {
        await other.close();
        fs.rmSync(otherTemp, { force: true });
      }
    });

    it('lists with filters and a cursor', async () => {
      const all = (await api.get('/api/v1/images?limit=500')).body.items as Image[];
      expect(all.length).toBeGreaterThan(4);
      const page1 = await api.get('/api/v1/images?limit=2');
      expect(page1.body.items).toEqual(all.slice(0, 2));
      const page2 = await api.get(`/api/v1/images?limit=2&cursor=${page1.body.next}`);
      expect(page2.body.items).toEqual(all.slice(2, 4));
      const kernels = (await api.get('/api/v1/images?kind=kernel')).body.items as Image[];
      expect(kernels.map((i) => i.name)).toEqual(['kernel']);
      const ready = (await api.get('/api/v1/images?status=ready')).body.items as Image[];
      expect(ready.map((i) => i.id).sort()).toEqual(all.map((i) => i.id).sort());
      // There is no failed image to list: a failed import leaves none.
      expectError(await api.get('/api/v1/images?status=failed'), 400, 'VALIDATION_FAILED');
      const named = (await api.get('/api/v1/images?name=url-')).body.items as Image[];
      expect(named.map((i) => i.name).sort()).toEqual(['url-mismatch', 'url-sparse']);
      expectError(await api.get('/api/v1/images?status=done'), 400, 'VALIDATION_FAILED');
    });
  });
});

describe('images API on a full disk', () => {
  let t: TestManager;
  let dataDir: string;

  beforeAll(async () => {
    // A 6 MiB tmpfs as the manager's data folder: blobs and imports land there.
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-full-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=6m', 'tmpfs', dataDir]);
    t = await startManager('sqlite', { NQVM_DATA_DIR: dataDir });
  });
  afterAll(async () => {
    await t?.close();
    execFileSync('umount', [dataDir]);
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it('fails an upload that does not fit with 507 INSUFFICIENT_STORAGE and keeps nothing', async () => {
    const chunk = Buffer.alloc(MiB, 0x5a);
    const r = await upload(t.url, t.adminToken, 'name=too-big&kind=rootfs', Array(10).fill(chunk));
    expect(r.status).toBe(507);
    expect((r.body as { error: { code: string } }).error.code).toBe('INSUFFICIENT_STORAGE');
    const api = client(t.url, t.adminToken);
    expect((await api.get('/api/v1/images?limit=10')).body.items).toEqual([]);
    const left = (dir: string): string[] =>
      fs.existsSync(dir)
        ? fs
            .readdirSync(dir, { withFileTypes: true })
            .flatMap((e) => (e.isDirectory() ? left(path.join(dir, e.name)) : [path.join(dir, e.name)]))
        : [];
    expect(left(path.join(dataDir, 'images'))).toEqual([]);
    // What fits still works afterwards.
    const ok = await upload(t.url, t.adminToken, 'name=fits&kind=rootfs', [rawDisk(MiB, 0x5a)]);
    expect(ok.status, JSON.stringify(ok.body)).toBe(201);
  });
});

describe('parseRange', () => {
  it.each([
    [undefined, null],
    ['bytes=0-99', { start: 0, end: 99 }],
    ['bytes=100-', { start: 100, end: 999 }],
    ['bytes=-10', { start: 990, end: 999 }],
    ['bytes=-5000', { start: 0, end: 999 }],
    ['bytes=900-5000', { start: 900, end: 999 }],
    ['bytes=1000-', 'unsatisfiable'],
    ['bytes=-0', 'unsatisfiable'],
    ['bytes=5-1', null],
    ['bytes=0-1,5-6', null],
    ['items=0-1', null],
  ])('%s of 1000 bytes -> %j', (header, expected) => {
    expect(parseRange(header, 1000)).toEqual(expected);
  });
});
