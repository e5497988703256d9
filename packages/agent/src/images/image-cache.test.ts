import { execFileSync } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { AgentImageRef } from '@nqvm/api';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManagerClient } from '../agent/manager-client';
import { silentLogger, tempDir } from '../agent/testing';
import { type BlobSource, ImageCache } from './image-cache';

const MiB = 1024 * 1024;
const CREDENTIAL = 'nqvm_host_test-credential';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/**
 * Stands in for the manager's blob route (GET /api/v1/agent/images/{sha256}, Bearer host
 * credential, Content-Length): the HTTP contract the cache relies on, not the code under test.
 */
class BlobServer {
  readonly blobs = new Map<string, Buffer>();
  readonly requests: string[] = [];
  /** Answers these digests with other bytes (of the same length). */
  readonly corrupt = new Set<string>();
  delayMs = 0;
  private server!: http.Server;
  url = '';

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => {
      const m = /^\/api\/v1\/agent\/images\/([a-f0-9]{64})$/.exec(req.url ?? '');
      if (req.headers.authorization !== `Bearer ${CREDENTIAL}`) {
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { code: 'UNAUTHENTICATED', message: 'bad credential' } }));
        return;
      }
      const blob = m ? this.blobs.get(m[1]!) : undefined;
      if (!m || !blob) {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { code: 'IMAGE_NOT_FOUND', message: 'no such blob' } }));
        return;
      }
      this.requests.push(m[1]!);
      const body = this.corrupt.has(m[1]!) ? randomBytes(blob.length) : blob;
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
        res.end(body);
      }, this.delayMs);
    });
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  add(bytes: Buffer): string {
    const digest = sha256(bytes);
    this.blobs.set(digest, bytes);
    return digest;
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

function ref(over: Partial<AgentImageRef>): AgentImageRef {
  return {
    id: randomUUID(),
    sha256: null,
    size_bytes: null,
    path: null,
    format: null,
    vmlinux: null,
    has_cloud_init: null,
    ...over,
  };
}

describe('ImageCache', () => {
  let dir: string;
  let stateDir: string;
  let server: BlobServer;
  let source: BlobSource;

  const cache = (maxBytes = 64 * MiB, src: BlobSource | null = source) =>
    new ImageCache({ stateDir, maxBytes, source: () => src, log: silentLogger });

  /** What the cache folder holds: its final files and any leftovers. */
  const cacheFiles = () => readdirSync(path.join(stateDir, 'images', 'sha256')).sort();

  beforeEach(async () => {
    dir = tempDir('nqvm-image-cache-');
    stateDir = path.join(dir, 'state');
    server = new BlobServer();
    await server.start();
    const client = new ManagerClient({ base: server.url, tlsFingerprint: null });
    source = { open: (digest) => client.openImageBlob(CREDENTIAL, digest) };
  });

  afterEach(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('fetches by digest with the host credential, verifies it, and keeps zero blocks as holes', async () => {
    // 8 MiB: random data in the first and last MiB, zeros between.
    const bytes = Buffer.alloc(8 * MiB);
    randomBytes(MiB).copy(bytes, 0);
    randomBytes(MiB).copy(bytes, 7 * MiB);
    const digest = server.add(bytes);
    const images = cache();
    const file = await images.resolve(ref({ sha256: digest, size_bytes: bytes.length }), 'rootfs', {
      forFirecracker: false,
    });
    expect(file).toBe(path.join(stateDir, 'images', 'sha256', digest));
    expect(sha256(readFileSync(file))).toBe(digest);
    const st = statSync(file);
    expect(st.size).toBe(8 * MiB);
    expect(st.blocks * 512).toBeLessThan(3 * MiB);
    expect(server.requests).toEqual([digest]);
    expect(cacheFiles()).toEqual([digest]);

    // Cached now: no second request.
    await images.resolve(ref({ sha256: digest, size_bytes: bytes.length }), 'rootfs', {
      forFirecracker: false,
    });
    expect(server.requests).toHaveLength(1);
    expect(await images.usage()).toMatchObject({ images: 1, maxBytes: 64 * MiB });
  });

  it('refuses bytes that do not match the digest and leaves no file behind', async () => {
    const bytes = randomBytes(2 * MiB);
    const digest = server.add(bytes);
    server.corrupt.add(digest);
    const images = cache();
    await expect(
      images.resolve(ref({ sha256: digest, size_bytes: bytes.length }), 'rootfs', { forFirecracker: false }),
    ).rejects.toThrow(`expected ${digest}`);
    expect(cacheFiles()).toEqual([]);
  });

  it('shares one download between concurrent boots needing the same image', async () => {
    const bytes = randomBytes(MiB);
    const digest = server.add(bytes);
    server.delayMs = 100;
    const images = cache();
    const r = ref({ sha256: digest, size_bytes: bytes.length });
    const [a, b] = await Promise.all([
      images.resolve(r, 'rootfs', { forFirecracker: false }),
      images.resolve({ ...r, id: randomUUID() }, 'rootfs', { forFirecracker: false }),
    ]);
    expect(a).toBe(b);
    expect(server.requests).toEqual([digest]);
  });

  it('evicts the least recently used images no VM uses, and never a pinned one', async () => {
    const blobs = [0, 1, 2, 3, 4].map(() => randomBytes(MiB));
    const [d0, d1, d2, d3, d4] = blobs.map((b) => server.add(b)) as [string, string, string, string, string];
    const images = cache(3 * MiB);
    const get = (i: number) =>
      images.resolve(ref({ sha256: sha256(blobs[i]!), size_bytes: MiB }), 'rootfs', {
        forFirecracker: false,
      });
    const cached = (d: string) => path.join(stateDir, 'images', 'sha256', d);
    await get(0);
    await get(1);
    await get(2);
    // Use times from oldest to newest: d1, d0, d2 (d0 used again after d1 was fetched).
    utimesSync(cached(d1), 1000, 1000);
    utimesSync(cached(d0), 2000, 2000);
    utimesSync(cached(d2), 3000, 3000);
    await get(0);
    expect(statSync(cached(d0)).mtimeMs).toBeGreaterThan(3_000_000);

    // A VM of this host names d1 in its desired.json: d1 stays although it is the oldest.
    const vmDir = path.join(stateDir, 'vms', randomUUID());
    mkdirSync(vmDir, { recursive: true });
    writeFileSync(
      path.join(vmDir, 'desired.json'),
      JSON.stringify({ spec: { rootfs: { sha256: d1, path: null } } }),
    );
    await get(3);
    expect(cacheFiles()).toEqual([d0, d1, d3].sort());

    // Another VM's qcow2 overlay reads d0: with d1 named too, only d3 can go.
    const overlayDir = path.join(stateDir, 'vms', randomUUID());
    mkdirSync(overlayDir, { recursive: true });
    execFileSync('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-F',
      'raw',
      '-b',
      cached(d0),
      path.join(overlayDir, 'root.qcow2'),
    ]);
    await get(4);
    expect(cacheFiles()).toEqual([d0, d1, d4].sort());
    expect(server.requests).toEqual([d0, d1, d2, d3, d4]);
  });

  it('fails with the limit named when pinned images leave no room, and writes nothing', async () => {
    const a = randomBytes(2 * MiB);
    const b = randomBytes(2 * MiB);
    const da = server.add(a);
    const db = server.add(b);
    const images = cache(3 * MiB);
    await images.resolve(ref({ sha256: da, size_bytes: a.length }), 'rootfs', { forFirecracker: false });
    const vmDir = path.join(stateDir, 'vms', randomUUID());
    mkdirSync(vmDir, { recursive: true });
    writeFileSync(path.join(vmDir, 'run.json'), JSON.stringify({ extra: { kernel: `/x/sha256/${da}` } }));
    await expect(
      images.resolve(ref({ sha256: db, size_bytes: b.length }), 'rootfs', { forFirecracker: false }),
    ).rejects.toThrow(/does not fit in the image cache limit of 3 MiB \(NQVM_AGENT_IMAGE_CACHE_MAX_MIB\)/);
    const big = randomBytes(4 * MiB);
    await expect(
      images.resolve(ref({ sha256: server.add(big), size_bytes: big.length }), 'rootfs', {
        forFirecracker: false,
      }),
    ).rejects.toThrow(/larger than the image cache limit of 3 MiB/);
    expect(cacheFiles()).toEqual([da]);
  });

  it('uses the shared path when this host has the file with the right size, else fetches', async () => {
    const bytes = randomBytes(MiB);
    const digest = server.add(bytes);
    const shared = path.join(dir, 'shared.ext4');
    writeFileSync(shared, bytes);
    const images = cache();
    const here = ref({ sha256: digest, size_bytes: bytes.length, path: shared });
    expect(await images.resolve(here, 'rootfs', { forFirecracker: false })).toBe(shared);
    expect(server.requests).toEqual([]);

    // Same path, other size (another machine's file of that name): fetched by digest.
    writeFileSync(shared, randomBytes(1000));
    const fetched = await images.resolve(here, 'rootfs', { forFirecracker: false });
    expect(fetched).toBe(path.join(stateDir, 'images', 'sha256', digest));
    expect(server.requests).toEqual([digest]);

    // No digest: the shared path is all there is.
    await expect(
      images.resolve(ref({ size_bytes: 5, path: shared }), 'kernel', { forFirecracker: false }),
    ).rejects.toThrow(/cannot be used at .*1000 bytes, expected 5.* no digest/);
  });

  it('resolves a kernel to its vmlinux for Firecracker, to the kernel itself for QEMU', async () => {
    const bzImage = randomBytes(MiB);
    const vmlinux = randomBytes(2 * MiB);
    const dBz = server.add(bzImage);
    const dElf = server.add(vmlinux);
    const images = cache();
    const kernel = ref({
      sha256: dBz,
      size_bytes: bzImage.length,
      vmlinux: { sha256: dElf, size_bytes: vmlinux.length },
    });
    const fc = await images.resolve(kernel, 'kernel', { forFirecracker: true });
    expect(sha256(readFileSync(fc))).toBe(dElf);
    const qemu = await images.resolve(kernel, 'kernel', { forFirecracker: false });
    expect(sha256(readFileSync(qemu))).toBe(dBz);
    expect(server.requests).toEqual([dElf, dBz]);
  });

  it('names the missing manager and the manager refusing', async () => {
    const digest = server.add(randomBytes(1000));
    await expect(
      cache(64 * MiB, null).resolve(ref({ sha256: digest, size_bytes: 1000 }), 'initrd', {
        forFirecracker: false,
      }),
    ).rejects.toThrow(/initrd image .* is not on this host and the agent has no manager to fetch it from/);
    const unknown = 'a'.repeat(64);
    await expect(
      cache().resolve(ref({ sha256: unknown, size_bytes: 1000 }), 'rootfs', { forFirecracker: false }),
    ).rejects.toThrow(/manager answered 404 .*no such blob/);
  });
});

describe('ImageCache on a full file system', () => {
  let dir: string;
  let server: BlobServer;

  beforeEach(async () => {
    dir = tempDir('nqvm-image-cache-full-');
    server = new BlobServer();
    await server.start();
  });

  afterEach(async () => {
    await server.close();
    execFileSync('umount', [path.join(dir, 'state')], { stdio: 'ignore' });
    rmSync(dir, { recursive: true, force: true });
  });

  it('fails with a clear error and removes the partial file', async () => {
    // A 4 MiB tmpfs as the state directory; the image needs 6 MiB.
    const stateDir = path.join(dir, 'state');
    mkdirSync(stateDir);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'nqvm-test', stateDir]);
    const bytes = randomBytes(6 * MiB);
    const digest = server.add(bytes);
    const client = new ManagerClient({ base: server.url, tlsFingerprint: null });
    const images = new ImageCache({
      stateDir,
      maxBytes: 64 * MiB,
      source: () => ({ open: (d) => client.openImageBlob(CREDENTIAL, d) }),
      log: silentLogger,
    });
    const imageRef = ref({ sha256: digest, size_bytes: bytes.length });
    await expect(images.resolve(imageRef, 'rootfs', { forFirecracker: false })).rejects.toThrow(
      `no space left for rootfs image ${imageRef.id} (6 MiB) in ${path.join(stateDir, 'images', 'sha256')}`,
    );
    expect(readdirSync(path.join(stateDir, 'images', 'sha256'))).toEqual([]);
  });
});
