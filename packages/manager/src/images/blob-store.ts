/**
 * The manager's content-addressed blob store: `<root>/sha256/<hex>`. Bytes land in a temp file
 * in the same folder (hashed while they arrive, fsynced) and become a blob by rename, so a
 * blob is complete or absent. Renames and removals of one digest take an in-process lock:
 * a blob is removed only when no image row uses it, and a new image's row names its digest
 * before its rename, so the two never race.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { NqvmError } from '@nqvm/api';

/** Bytes received and hashed, waiting in a temp file to be committed or discarded. */
export interface StagedBlob {
  sha256: string;
  size: number;
  tmpPath: string;
}

export interface ReceiveOptions {
  maxBytes: number;
  /** Checked once the last byte arrived: a mismatch discards the bytes. */
  expectedSha256?: string;
  signal?: AbortSignal;
  /** Called after each chunk with the bytes received so far. */
  onBytes?: (received: number) => void;
}

const TMP_PREFIX = '.tmp-';
const HEX_DIGEST = /^[a-f0-9]{64}$/;

/** Maps a full disk to the uniform INSUFFICIENT_STORAGE error; other errors pass through. */
export function storageError(err: unknown, dir: string): unknown {
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT')
    return new NqvmError(
      'INSUFFICIENT_STORAGE',
      `the image store (${dir}) is out of space; nothing was kept. Free space there or move NQVM_DATA_DIR`,
      { dir },
    );
  return err;
}

export class BlobTooLargeError extends NqvmError {
  constructor(maxBytes: number) {
    super('BODY_TOO_LARGE', `the image is larger than MANAGER_IMAGE_MAX_BYTES (${maxBytes} bytes)`, {
      max_bytes: maxBytes,
    });
  }
}

export class BlobStore {
  /** Folder of the blobs and of their temp files (same file system, so rename is atomic). */
  readonly dir: string;
  private readonly locks = new Map<string, Promise<void>>();

  constructor(root: string) {
    this.dir = path.join(root, 'sha256');
  }

  pathOf(sha256: string): string {
    if (!HEX_DIGEST.test(sha256)) throw new Error(`not a sha256 digest: ${sha256}`);
    return path.join(this.dir, sha256);
  }

  /** The blob's path and size, or null when the store does not hold it. */
  async stat(sha256: string): Promise<{ path: string; size: number } | null> {
    const p = this.pathOf(sha256);
    try {
      const st = await fs.stat(p);
      return st.isFile() ? { path: p, size: st.size } : null;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  /**
   * Streams `source` into a temp file, hashing as it goes; never holds more than a chunk.
   * Too many bytes, a checksum mismatch, an abort or a write error remove the temp file.
   *
   * @example
   * const staged = await blobs.receive(req.raw, { maxBytes: 1 << 30, expectedSha256 });
   * await blobs.commit([staged], () => recordDigest(staged.sha256));
   */
  async receive(source: Readable, opts: ReceiveOptions): Promise<StagedBlob> {
    await fs.mkdir(this.dir, { recursive: true });
    const tmpPath = path.join(this.dir, `${TMP_PREFIX}${randomUUID()}`);
    const onAbort = () => source.destroy(opts.signal?.reason ?? new Error('aborted'));
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const hash = createHash('sha256');
    let size = 0;
    const fh = await fs.open(tmpPath, 'wx', 0o644);
    try {
      opts.signal?.throwIfAborted();
      for await (const chunk of source) {
        const buf = chunk as Buffer;
        size += buf.length;
        if (size > opts.maxBytes) throw new BlobTooLargeError(opts.maxBytes);
        hash.update(buf);
        let written = 0;
        while (written < buf.length) {
          written += (await fh.write(buf, written, buf.length - written)).bytesWritten;
        }
        opts.onBytes?.(size);
      }
      opts.signal?.throwIfAborted();
      await fh.sync();
      await fh.close();
    } catch (err) {
      await fh.close().catch(() => undefined);
      await fs.rm(tmpPath, { force: true });
      throw storageError(opts.signal?.aborted ? opts.signal.reason : err, this.dir);
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
    const staged = { sha256: hash.digest('hex'), size, tmpPath };
    if (opts.expectedSha256 && opts.expectedSha256 !== staged.sha256) {
      await this.discard(staged);
      throw new NqvmError(
        'CHECKSUM_MISMATCH',
        `the bytes hash to sha256 ${staged.sha256}, not the expected ${opts.expectedSha256}; nothing was kept`,
        { expected: opts.expectedSha256, actual: staged.sha256 },
      );
    }
    return staged;
  }

  /** Moves a finished file (a converted image, an extracted vmlinux) into the staging area. */
  async stageFile(file: string): Promise<StagedBlob> {
    await fs.mkdir(this.dir, { recursive: true });
    const tmpPath = path.join(this.dir, `${TMP_PREFIX}${randomUUID()}`);
    try {
      await fs.rename(file, tmpPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
      try {
        await pipeline(createReadStream(file), createWriteStream(tmpPath, { flags: 'wx', mode: 0o644 }));
      } catch (copyErr) {
        await fs.rm(tmpPath, { force: true });
        throw storageError(copyErr, this.dir);
      }
      await fs.rm(file, { force: true });
    }
    try {
      const fh = await fs.open(tmpPath, 'r');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
      return { ...(await hashFile(tmpPath)), tmpPath };
    } catch (err) {
      await fs.rm(tmpPath, { force: true });
      throw err;
    }
  }

  async discard(staged: StagedBlob): Promise<void> {
    await fs.rm(staged.tmpPath, { force: true });
  }

  /**
   * Makes staged bytes blobs. `record` runs first, under the digests' locks, and must write the
   * digests into the image row, so a concurrent `release` of the same digest sees a user.
   * An identical blob already stored is kept and the staged copy dropped.
   */
  async commit(staged: StagedBlob[], record: () => Promise<void>): Promise<void> {
    await this.withLocks(
      staged.map((s) => s.sha256),
      async () => {
        await record();
        if (staged.length === 0) return;
        for (const s of staged) {
          if (await this.stat(s.sha256)) await this.discard(s);
          else await fs.rename(s.tmpPath, this.pathOf(s.sha256));
        }
        await syncDir(this.dir);
      },
    );
  }

  /** Removes the blob unless `inUse` says an image still needs it. */
  async release(sha256: string, inUse: () => Promise<boolean>): Promise<boolean> {
    return this.withLocks([sha256], async () => {
      if (await inUse()) return false;
      await fs.rm(this.pathOf(sha256), { force: true });
      return true;
    });
  }

  /** Removes temp files a crashed process left behind (older than `olderThanMs`). */
  async sweepTemp(olderThanMs: number): Promise<number> {
    let names: string[];
    try {
      names = await fs.readdir(this.dir);
    } catch {
      return 0;
    }
    let removed = 0;
    for (const name of names) {
      if (!name.startsWith(TMP_PREFIX)) continue;
      const p = path.join(this.dir, name);
      const st = await fs.stat(p).catch(() => null);
      if (st && Date.now() - st.mtimeMs > olderThanMs) {
        await fs.rm(p, { force: true });
        removed++;
      }
    }
    return removed;
  }

  private async withLocks<T>(digests: string[], fn: () => Promise<T>): Promise<T> {
    // One lock per digest, taken in sorted order so two commits never wait on each other.
    const keys = [...new Set(digests)].sort();
    const releases: Array<() => void> = [];
    for (const key of keys) {
      const prev = this.locks.get(key) ?? Promise.resolve();
      let release!: () => void;
      const mine = new Promise<void>((r) => {
        release = r;
      });
      const chained = prev.then(() => mine);
      this.locks.set(key, chained);
      await prev;
      releases.push(() => {
        release();
        if (this.locks.get(key) === chained) this.locks.delete(key);
      });
    }
    try {
      return await fn();
    } finally {
      for (const r of releases.reverse()) r();
    }
  }
}

/** sha256 and size of a file, read as a stream. */
export async function hashFile(
  file: string,
  signal?: AbortSignal,
): Promise<{ sha256: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(file, { signal })) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { sha256: hash.digest('hex'), size };
}

async function syncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
