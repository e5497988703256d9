/**
 * The manager's content-addressed blob store: `<root>/sha256/<hex>`. Bytes land in a temp file
 * in the same folder (hashed while they arrive, fsynced) and become a blob by rename, so a
 * blob is complete or absent. Renames and removals of one digest take an in-process lock:
 * a blob is removed only when no image row uses it, and a new image's row names its digest
 * before its rename, so the two never race. Zero blocks are written as holes: a sparse image
 * stays sparse (`storedBytes` is what it takes on disk). Temp files carry the id of the manager
 * process writing them, so those of a stopped one are known at once.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { NqvmError } from '@nqvm/api';
import { SparseWriter } from './sparse-writer';

/** Bytes received and hashed, waiting in a temp file to be committed or discarded. */
export interface StagedBlob {
  sha256: string;
  size: number;
  tmpPath: string;
}

/** A stored blob: its length, and the bytes its allocated blocks take (less when sparse). */
export interface BlobStat {
  path: string;
  size: number;
  storedBytes: number;
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
  private dirReady = false;

  /** `owner`: the id of this manager process, written into the names of its temp files. */
  constructor(
    root: string,
    private readonly owner?: string,
  ) {
    this.dir = path.join(root, 'sha256');
  }

  pathOf(sha256: string): string {
    if (!HEX_DIGEST.test(sha256)) throw new Error(`not a sha256 digest: ${sha256}`);
    return path.join(this.dir, sha256);
  }

  /** The blob's path and sizes, or null when the store does not hold it. */
  async stat(sha256: string): Promise<BlobStat | null> {
    const p = this.pathOf(sha256);
    try {
      const st = await fs.stat(p);
      return st.isFile() ? { path: p, size: st.size, storedBytes: st.blocks * 512 } : null;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  /**
   * Streams `source` into a temp file, hashing as it goes; never holds more than a chunk, and
   * leaves zero blocks as holes. Too many bytes, a checksum mismatch, an abort or a write
   * error remove the temp file.
   *
   * @example
   * const staged = await blobs.receive(req.raw, { maxBytes: 1 << 30, expectedSha256 });
   * await blobs.commit([staged], () => recordDigest(staged.sha256));
   */
  async receive(source: Readable, opts: ReceiveOptions): Promise<StagedBlob> {
    const tmpPath = await this.tempPath();
    const onAbort = () => source.destroy(opts.signal?.reason ?? new Error('aborted'));
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const hash = createHash('sha256');
    let size = 0;
    const fh = await fs.open(tmpPath, 'wx', 0o600);
    try {
      opts.signal?.throwIfAborted();
      const out = new SparseWriter(fh);
      for await (const chunk of source) {
        const buf = chunk as Buffer;
        size += buf.length;
        if (size > opts.maxBytes) throw new BlobTooLargeError(opts.maxBytes);
        hash.update(buf);
        await out.write(buf);
        opts.onBytes?.(size);
      }
      opts.signal?.throwIfAborted();
      await out.end();
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

  /**
   * Moves a finished file (a converted image, an extracted vmlinux) into the staging area; from
   * another file system it is copied as `receive` writes, holes kept.
   */
  async stageFile(file: string): Promise<StagedBlob> {
    const tmpPath = await this.tempPath();
    try {
      await fs.rename(file, tmpPath);
      await fs.chmod(tmpPath, 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
      const staged = await this.receive(createReadStream(file), { maxBytes: Number.POSITIVE_INFINITY });
      await fs.rm(file, { force: true });
      return staged;
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

  /**
   * Removes temp files a stopped process left behind: those of an owner `stopped` says is gone
   * at once, those naming no owner once older than `olderThanMs`.
   */
  async sweepTemp(olderThanMs: number, stopped: (owner: string) => Promise<boolean>): Promise<number> {
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
      const [owner, rest] = name.slice(TMP_PREFIX.length).split('.');
      const gone =
        owner && rest !== undefined
          ? owner !== this.owner && (await stopped(owner))
          : await fs.stat(p).then(
              (st) => Date.now() - st.mtimeMs > olderThanMs,
              () => false,
            );
      if (gone) {
        await fs.rm(p, { force: true });
        removed++;
      }
    }
    return removed;
  }

  private async tempPath(): Promise<string> {
    await this.ensureDir();
    return path.join(this.dir, `${TMP_PREFIX}${this.owner ? `${this.owner}.` : ''}${randomUUID()}`);
  }

  /**
   * The blob folder, private to the manager (0700, also when an older version made it 0755):
   * images may hold secrets, and agents fetch them over the API, not from the disk.
   */
  private async ensureDir(): Promise<void> {
    if (this.dirReady) return;
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
    await fs.chmod(this.dir, 0o700);
    this.dirReady = true;
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
