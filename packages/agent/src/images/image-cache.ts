/**
 * The images this host boots from: a file the manager's machine shares with us (same path, same
 * size) is used as it is; anything else is fetched by digest from the manager into
 * `<stateDir>/images/sha256/<hex>`, verified, and kept until the cache needs room and no VM
 * of this host uses it. A download lands under its final name only once complete and verified.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { access, mkdir, open, readdir, rename, rm, stat, utimes } from 'node:fs/promises';
import path from 'node:path';
import type { AgentImageRef } from '@nqvm/api';
import { type AgentLogger, errorMessage } from '../agent/logger';
import { pinnedDigests } from './image-pins';

const MiB = 1024 * 1024;
/** Downloads are written in blocks of this size; an all-zero block is left as a hole. */
const BLOCK = MiB;
const ZERO_BLOCK = Buffer.alloc(BLOCK);
const DIGEST = /^[a-f0-9]{64}$/;
const PART_SUFFIX = '.part';

/** Where an image's bytes come from when this host has no copy: the manager's blob route. */
export interface BlobSource {
  /** Starts receiving the blob; `size` is its Content-Length (null when unknown). */
  open(sha256: string): Promise<{ size: number | null; body: AsyncIterable<Buffer> & { destroy(): void } }>;
}

export interface ImageCacheOptions {
  stateDir: string;
  /** Bound on the bytes the cached images allocate. */
  maxBytes: number;
  /** The manager to fetch from; null while the agent has none (then only shared paths work). */
  source: () => BlobSource | null;
  log: AgentLogger;
}

export interface ResolveOptions {
  /** Firecracker loads an ELF vmlinux: a kernel imported as a bzImage resolves to its vmlinux. */
  forFirecracker: boolean;
}

export interface CacheUsage {
  images: number;
  /** Bytes the cached files allocate on disk (holes not counted). */
  bytes: number;
  maxBytes: number;
}

interface CachedFile {
  digest: string;
  file: string;
  bytes: number;
  usedAt: number;
}

const mib = (bytes: number) => `${Math.ceil(bytes / MiB)} MiB`;

export class ImageCache {
  readonly dir: string;
  /** One download per digest: concurrent boots needing it share the promise. */
  private readonly inflight = new Map<string, Promise<string>>();
  /** Bytes admitted for downloads in flight, by digest. */
  private readonly reserved = new Map<string, number>();
  /** Admission (evict, then reserve) runs one download at a time. */
  private admission: Promise<void> = Promise.resolve();
  private prepared: Promise<void> | null = null;

  constructor(private readonly opts: ImageCacheOptions) {
    this.dir = path.join(opts.stateDir, 'images', 'sha256');
  }

  /** The cache file of a digest (validated: the name reaches the file system). */
  fileOf(digest: string): string {
    if (!DIGEST.test(digest)) throw new Error(`not a sha256 digest: ${JSON.stringify(digest)}`);
    return path.join(this.dir, digest);
  }

  /**
   * A readable local file holding the image `ref` (its vmlinux for Firecracker when it has one).
   * Throws a message naming the image and the reason: no manager, no space, digest mismatch...
   *
   * @example
   * const kernelPath = await images.resolve(spec.kernel, 'kernel', { forFirecracker: true });
   */
  async resolve(ref: AgentImageRef, role: string, opts: ResolveOptions): Promise<string> {
    if (opts.forFirecracker && ref.vmlinux) {
      return this.cached(ref.vmlinux.sha256, ref.vmlinux.size_bytes, `${role} image ${ref.id} (vmlinux)`);
    }
    const label = `${role} image ${ref.id}`;
    const local = ref.path ? await usableLocal(ref.path, ref.size_bytes) : 'no path';
    if (local === true) return ref.path!;
    if (!ref.sha256) {
      throw new Error(
        ref.path
          ? `${label} cannot be used at ${ref.path} (${local}) and has no digest to fetch it by`
          : `${label} has no path on this host and no digest to fetch it by`,
      );
    }
    return this.cached(ref.sha256, ref.size_bytes, label);
  }

  /** What the cache holds now (downloads in flight not counted). */
  async usage(): Promise<CacheUsage> {
    const files = await this.list();
    return {
      images: files.length,
      bytes: files.reduce((n, f) => n + f.bytes, 0),
      maxBytes: this.opts.maxBytes,
    };
  }

  private cached(digest: string, size: number | null, label: string): Promise<string> {
    let p = this.inflight.get(digest);
    if (!p) {
      p = this.hitOrFetch(digest, size, label).finally(() => this.inflight.delete(digest));
      this.inflight.set(digest, p);
    }
    return p;
  }

  private async hitOrFetch(digest: string, size: number | null, label: string): Promise<string> {
    const file = this.fileOf(digest);
    const st = await stat(file).catch(() => null);
    if (st?.isFile() && (size === null || st.size === size)) {
      const now = new Date();
      await utimes(file, now, now);
      return file;
    }
    if (st) {
      this.opts.log.warn(
        { file, size: st.size, expected: size },
        'cached image has the wrong size; fetching again',
      );
      await rm(file, { force: true });
    }
    await this.fetch(digest, size, label);
    return file;
  }

  private async fetch(digest: string, expected: number | null, label: string): Promise<void> {
    const source = this.opts.source();
    if (!source)
      throw new Error(`${label} is not on this host and the agent has no manager to fetch it from`);
    await this.prepare();
    const started = Date.now();
    let blob: Awaited<ReturnType<typeof source.open>>;
    try {
      blob = await source.open(digest);
    } catch (err) {
      throw new Error(`cannot fetch ${label}: ${(err as Error).message}`);
    }
    if (expected !== null && blob.size !== null && blob.size !== expected) {
      blob.body.destroy();
      throw new Error(`${label}: the manager sends ${blob.size} bytes, expected ${expected}`);
    }
    const size = expected ?? blob.size;
    if (size === null) {
      blob.body.destroy();
      throw new Error(`${label}: neither the VM spec nor the manager gives the image's size`);
    }
    try {
      await this.admit(digest, size, label);
    } catch (err) {
      blob.body.destroy();
      throw err;
    }
    const part = path.join(this.dir, `.${digest}.${randomBytes(4).toString('hex')}${PART_SUFFIX}`);
    try {
      await receive(blob.body, part, digest, size, label);
      await rename(part, this.fileOf(digest));
      await syncDir(this.dir);
    } catch (err) {
      blob.body.destroy();
      await rm(part, { force: true });
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOSPC' || code === 'EDQUOT') {
        throw new Error(`no space left for ${label} (${mib(size)}) in ${this.dir}`);
      }
      throw err;
    } finally {
      this.reserved.delete(digest);
    }
    const cache = await this.usage();
    this.opts.log.info(
      {
        digest,
        bytes: size,
        ms: Date.now() - started,
        cacheBytes: cache.bytes,
        cacheMaxBytes: cache.maxBytes,
      },
      `fetched ${label} from the manager`,
    );
  }

  /** Makes room for `size` bytes: evicts least recently used images no VM pins, then reserves. */
  private admit(digest: string, size: number, label: string): Promise<void> {
    const limit = this.opts.maxBytes;
    const run = this.admission.then(async () => {
      if (size > limit) {
        throw new Error(
          `${label} (${mib(size)}) is larger than the image cache limit of ${mib(limit)} (NQVM_AGENT_IMAGE_CACHE_MAX_MIB)`,
        );
      }
      const files = await this.list();
      const inFlight = [...this.reserved.values()].reduce((n, b) => n + b, 0);
      let used = inFlight + files.reduce((n, f) => n + f.bytes, 0);
      if (used + size > limit) {
        const pinned = await pinnedDigests(this.opts.stateDir);
        for (const d of this.inflight.keys()) pinned.add(d);
        const victims = files.filter((f) => !pinned.has(f.digest)).sort((a, b) => a.usedAt - b.usedAt);
        for (const v of victims) {
          if (used + size <= limit) break;
          await rm(v.file, { force: true });
          used -= v.bytes;
          this.opts.log.info({ digest: v.digest, bytes: v.bytes }, 'evicted an unused image from the cache');
        }
        if (used + size > limit) {
          throw new Error(
            `${label} (${mib(size)}) does not fit in the image cache limit of ${mib(limit)} (NQVM_AGENT_IMAGE_CACHE_MAX_MIB): ${mib(used)} are held by images VMs on this host use or downloads in flight`,
          );
        }
      }
      this.reserved.set(digest, size);
    });
    this.admission = run.catch(() => {});
    return run;
  }

  /** Creates the cache folder once and removes downloads a crash left half-written. */
  private prepare(): Promise<void> {
    this.prepared ??= (async () => {
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
      const names = await readdir(this.dir);
      await Promise.all(
        names.filter((n) => n.endsWith(PART_SUFFIX)).map((n) => rm(path.join(this.dir, n), { force: true })),
      );
    })().catch((err: unknown) => {
      this.prepared = null;
      throw err;
    });
    return this.prepared;
  }

  private async list(): Promise<CachedFile[]> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const out: CachedFile[] = [];
    for (const name of names.filter((n) => DIGEST.test(n))) {
      const file = path.join(this.dir, name);
      const st = await stat(file).catch(() => null);
      if (st?.isFile()) out.push({ digest: name, file, bytes: st.blocks * 512, usedAt: st.mtimeMs });
    }
    return out;
  }
}

/** True when `file` is a readable regular file of `size` bytes (any size when null); else why not. */
async function usableLocal(file: string, size: number | null): Promise<true | string> {
  if (!path.isAbsolute(file)) return 'not an absolute path';
  try {
    const st = await stat(file);
    if (!st.isFile()) return 'not a regular file';
    if (size !== null && st.size !== size) return `${st.size} bytes, expected ${size}`;
    await access(file, constants.R_OK);
    return true;
  } catch (err) {
    return errorMessage(err);
  }
}

/**
 * Writes the blob to `part` (all-zero blocks as holes), hashing as it goes; checks the digest
 * and the size, then syncs. Throws without removing `part` (the caller does).
 */
async function receive(
  body: AsyncIterable<Buffer>,
  part: string,
  digest: string,
  size: number,
  label: string,
): Promise<void> {
  const hash = createHash('sha256');
  const fh = await open(part, 'wx', 0o600);
  try {
    const block = Buffer.alloc(BLOCK);
    let fill = 0;
    let offset = 0;
    const flush = async () => {
      const data = block.subarray(0, fill);
      if (!data.equals(ZERO_BLOCK.subarray(0, fill))) await fh.write(data, 0, fill, offset);
      offset += fill;
      fill = 0;
    };
    for await (const chunk of body) {
      hash.update(chunk);
      for (let at = 0; at < chunk.length; ) {
        const n = chunk.copy(block, fill, at);
        fill += n;
        at += n;
        if (fill === BLOCK) await flush();
      }
      if (offset + fill > size) throw new Error(`${label}: the manager sent more than ${size} bytes`);
    }
    await flush();
    if (offset !== size) throw new Error(`${label}: the download ended after ${offset} of ${size} bytes`);
    const actual = hash.digest('hex');
    if (actual !== digest)
      throw new Error(`${label}: downloaded bytes have sha256 ${actual}, expected ${digest}`);
    await fh.truncate(size);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
