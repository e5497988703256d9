import { createHash, randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { NqvmError } from '@nqvm/api';
import { afterAll, describe, expect, it } from 'vitest';
import { BlobStore, storageError } from './blob-store';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-blobs-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const MiB = 1024 * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const entries = (store: BlobStore) => fs.readdirSync(store.dir).sort();
const chunks = (b: Buffer, size = 4096) =>
  Readable.from(
    (function* () {
      for (let i = 0; i < b.length; i += size) yield b.subarray(i, i + size);
    })(),
  );

describe('BlobStore', () => {
  it('receives a stream into a temp file, then commits it under its digest; a second copy is dropped', async () => {
    const store = new BlobStore(path.join(root, 'a'));
    const bytes = randomBytes(300_000);
    const seen: number[] = [];
    const staged = await store.receive(chunks(bytes), { maxBytes: 1 << 20, onBytes: (n) => seen.push(n) });
    expect(staged).toMatchObject({ sha256: sha(bytes), size: bytes.length });
    expect(seen.at(-1)).toBe(bytes.length);
    expect(path.dirname(staged.tmpPath)).toBe(store.dir);
    await store.commit([staged], async () => {});
    expect(entries(store)).toEqual([sha(bytes)]);
    expect(fs.readFileSync(store.pathOf(sha(bytes))).equals(bytes)).toBe(true);
    // Private to the manager: agents fetch blobs over the API.
    expect(fs.statSync(store.dir).mode & 0o777).toBe(0o700);
    expect(fs.statSync(store.pathOf(sha(bytes))).mode & 0o777).toBe(0o600);
    const again = await store.receive(chunks(bytes), { maxBytes: 1 << 20 });
    await store.commit([again], async () => {});
    expect(entries(store)).toEqual([sha(bytes)]);
  });

  it('keeps nothing when the bytes are too many, the checksum differs, or the source fails or is aborted', async () => {
    const store = new BlobStore(path.join(root, 'b'));
    const bytes = randomBytes(100_000);
    await expect(store.receive(chunks(bytes), { maxBytes: 99_999 })).rejects.toMatchObject({
      code: 'BODY_TOO_LARGE',
    });
    await expect(
      store.receive(chunks(bytes), { maxBytes: 1 << 20, expectedSha256: 'f'.repeat(64) }),
    ).rejects.toMatchObject({
      code: 'CHECKSUM_MISMATCH',
      details: { expected: 'f'.repeat(64), actual: sha(bytes) },
    });
    const failing = new Readable({
      read() {
        this.push(Buffer.alloc(1000));
        this.destroy(new Error('connection reset'));
      },
    });
    await expect(store.receive(failing, { maxBytes: 1 << 20 })).rejects.toThrow('connection reset');
    const ac = new AbortController();
    const endless = new Readable({ read() {} });
    endless.push(Buffer.alloc(10));
    const pending = store.receive(endless, {
      maxBytes: 1 << 20,
      signal: ac.signal,
      onBytes: () => ac.abort(new Error('stop')),
    });
    await expect(pending).rejects.toThrow('stop');
    expect(entries(store)).toEqual([]);
  });

  it('a release racing a commit of the same digest never loses the committed blob', async () => {
    const store = new BlobStore(path.join(root, 'c'));
    const bytes = randomBytes(10_000);
    await store.commit([await store.receive(chunks(bytes), { maxBytes: 1 << 20 })], async () => {});
    const staged = await store.receive(chunks(bytes), { maxBytes: 1 << 20 });
    let users = 0;
    // The release decided "unused" before the new image recorded its digest, and deletes after.
    const release = store.release(sha(bytes), async () => {
      const used = users > 0;
      await new Promise((r) => setTimeout(r, 50));
      return used;
    });
    const commit = store.commit([staged], async () => {
      users++;
    });
    expect(await release).toBe(true);
    await commit;
    expect(entries(store)).toEqual([sha(bytes)]);
    expect(await store.release(sha(bytes), async () => users > 0)).toBe(false);
    expect(entries(store)).toEqual([sha(bytes)]);
  });

  it('stages a finished file by moving it and sweeps old temp files', async () => {
    const store = new BlobStore(path.join(root, 'd'));
    // A folder an older version made world-readable becomes private on first use.
    fs.mkdirSync(store.dir, { recursive: true, mode: 0o755 });
    const file = path.join(root, 'converted.ext4');
    const bytes = randomBytes(5000);
    fs.writeFileSync(file, bytes, { mode: 0o644 });
    const staged = await store.stageFile(file);
    expect(fs.existsSync(file)).toBe(false);
    expect(fs.statSync(store.dir).mode & 0o777).toBe(0o700);
    expect(fs.statSync(staged.tmpPath).mode & 0o777).toBe(0o600);
    expect(staged).toMatchObject({ sha256: sha(bytes), size: 5000 });
    const old = new Date(Date.now() - 3_600_000);
    fs.utimesSync(staged.tmpPath, old, old);
    expect(await store.sweepTemp(60_000, async () => false)).toBe(1);
    expect(entries(store)).toEqual([]);
  });

  it("names temp files after their manager: a stopped one's go at once, a running one's stay", async () => {
    const dir = path.join(root, 'owners');
    const [me, alive, dead] = [randomUUID(), randomUUID(), randomUUID()];
    const mine = await new BlobStore(dir, me).receive(chunks(randomBytes(100)), { maxBytes: 1 << 20 });
    const store = new BlobStore(dir, me);
    expect(path.basename(mine.tmpPath).startsWith(`.tmp-${me}.`)).toBe(true);
    for (const owner of [alive, dead])
      await new BlobStore(dir, owner).receive(chunks(randomBytes(100)), { maxBytes: 1 << 20 });
    const asked: string[] = [];
    // Fresh files all: age plays no part once the owner is known.
    expect(
      await store.sweepTemp(3_600_000, async (owner) => {
        asked.push(owner);
        return owner === dead;
      }),
    ).toBe(1);
    expect(asked.sort()).toEqual([alive, dead].sort());
    const left = entries(store);
    expect(left).toHaveLength(2);
    expect(
      left.some((n) => n.startsWith(`.tmp-${me}.`)) && left.some((n) => n.startsWith(`.tmp-${alive}.`)),
    ).toBe(true);
  });

  it('keeps zero blocks as holes: a sparse image takes what it holds, hashed and read back whole', async () => {
    const store = new BlobStore(path.join(root, 'sparse'));
    // 64 MiB of zeros with data in a few places (some straddling 4 KiB blocks), ending in zeros,
    // sent in chunks that do not line up with blocks.
    const bytes = Buffer.alloc(64 * MiB);
    const marks = [0, 4095, 1 * MiB + 100, 17 * MiB, 40 * MiB - 2];
    for (const at of marks) randomBytes(3000).copy(bytes, at);
    const staged = await store.receive(chunks(bytes, 65_537), { maxBytes: 1 << 30 });
    expect(staged).toMatchObject({ sha256: sha(bytes), size: bytes.length });
    await store.commit([staged], async () => {});
    const blob = await store.stat(sha(bytes));
    expect(blob?.size).toBe(64 * MiB);
    // At most two 4 KiB blocks per mark (the file system may round a little more).
    expect(blob?.storedBytes).toBeLessThanOrEqual(marks.length * 2 * 4096 + 64 * 1024);
    expect(blob?.storedBytes).toBe(fs.statSync(store.pathOf(sha(bytes))).blocks * 512);
    expect(fs.readFileSync(store.pathOf(sha(bytes))).equals(bytes)).toBe(true);
  });

  it('stages a sparse file from another file system as a sparse copy', async () => {
    // /dev/shm is a tmpfs, the store is not: rename answers EXDEV and the bytes are copied.
    const src = fs.mkdtempSync(path.join('/dev/shm', 'nqvm-blobs-'));
    try {
      const file = path.join(src, 'rootfs.ext4');
      const bytes = Buffer.alloc(32 * MiB);
      randomBytes(8192).copy(bytes, 20 * MiB);
      const fd = fs.openSync(file, 'wx');
      fs.writeSync(fd, bytes, 20 * MiB, 8192, 20 * MiB);
      fs.ftruncateSync(fd, bytes.length);
      fs.closeSync(fd);
      const store = new BlobStore(path.join(root, 'exdev'));
      expect(fs.statSync(src).dev).not.toBe(fs.statSync(root).dev);
      const staged = await store.stageFile(file);
      expect(fs.existsSync(file)).toBe(false);
      expect(staged).toMatchObject({ sha256: sha(bytes), size: bytes.length });
      expect(fs.statSync(staged.tmpPath).blocks * 512).toBeLessThanOrEqual(8192 + 64 * 1024);
      expect(fs.readFileSync(staged.tmpPath).equals(bytes)).toBe(true);
    } finally {
      fs.rmSync(src, { recursive: true, force: true });
    }
  });

  it('maps a full disk to INSUFFICIENT_STORAGE and leaves other errors alone', () => {
    const full = storageError(Object.assign(new Error('no space'), { code: 'ENOSPC' }), '/data/blobs');
    expect(full).toBeInstanceOf(NqvmError);
    expect(full).toMatchObject({ code: 'INSUFFICIENT_STORAGE' });
    const other = Object.assign(new Error('denied'), { code: 'EACCES' });
    expect(storageError(other, '/data')).toBe(other);
  });
});
