import { type FileHandle, open, rename, stat, unlink } from 'node:fs/promises';
import { cloneFile } from './jail';
import { runToolLines } from './process';

/** Firecracker's dirty bitmap and Diff files work in x86_64 guest pages. */
export const GUEST_PAGE_SIZE = 4096;
const COPY_CHUNK = 1024 * 1024;
const COPIES_AT_ONCE = 8;

/** A byte range of a file that holds data (was written), as SEEK_DATA/SEEK_HOLE would find it. */
export interface FileExtent {
  offset: number;
  length: number;
}

export interface MemoryMergeStats {
  /** Memory files merged, the base included. */
  layers: number;
  /** Bytes copied from the Diff layers over the base. */
  bytesCopied: number;
  extents: number;
  ms: number;
}

const SIZE_LINE = / is (\d+) \((\d+) blocks? of (\d+) bytes\)$/;
// "   0:        3..       4:    6326158..   6326159:      2:          3: last,eof"
const EXTENT_LINE = /^\s*\d+:\s*(\d+)\.\.\s*(\d+):\s*\d+\.\.\s*\d+:\s*(\d+):\s*(?:\d+:)?\s*(\S*)\s*$/;

/**
 * The written ranges of a (sparse) file, through FIEMAP (`filefrag -v -e -s`: Node has no
 * SEEK_DATA). Unwritten (preallocated) extents read as zeros and count as holes, as with
 * SEEK_DATA. Refuses a file system whose blocks are larger than a guest page: a dirty page
 * would then allocate zeros around it that would read as written.
 *
 * @example
 * await writtenExtents('/vms/a/snap-2/memory'); // [{ offset: 0, length: 4096 }, ...]
 */
export async function writtenExtents(path: string): Promise<FileExtent[]> {
  let blockSize = 0;
  let size = 0;
  const extents: FileExtent[] = [];
  try {
    await runToolLines('filefrag', ['-v', '-e', '-s', '--', path], (line) => {
      const sized = SIZE_LINE.exec(line);
      if (sized) {
        size = Number(sized[1]);
        blockSize = Number(sized[3]);
        if (blockSize > GUEST_PAGE_SIZE) {
          throw new Error(
            `its file system has ${blockSize}-byte blocks, larger than a ${GUEST_PAGE_SIZE}-byte guest page: written pages cannot be told from the zeros around them`,
          );
        }
        return;
      }
      const m = EXTENT_LINE.exec(line);
      if (!m) return;
      if (!blockSize) throw new Error('filefrag printed extents before the block size');
      if (m[4]!.split(',').includes('unwritten')) return;
      const offset = Number(m[1]) * blockSize;
      const length = Math.min(Number(m[3]) * blockSize, size - offset);
      if (length <= 0) return;
      const last = extents.at(-1);
      if (last && last.offset + last.length === offset) last.length += length;
      else extents.push({ offset, length });
    });
  } catch (err) {
    throw new Error(
      `cannot find the written pages of ${path} (its file system must support FIEMAP): ${(err as Error).message}`,
    );
  }
  if (!blockSize) throw new Error(`cannot find the written pages of ${path}: unexpected filefrag output`);
  return extents.sort((a, b) => a.offset - b.offset);
}

/**
 * Copies the written extents of `layer` into `out` at the same offsets; returns [bytes, extents].
 * The extents of one file never overlap, so several copies run at once (a Diff's dirty pages
 * are often scattered: one small read and write each).
 */
async function overlay(out: FileHandle, layer: string): Promise<[number, number]> {
  const extents = await writtenExtents(layer);
  const src = await open(layer, 'r');
  let next = 0;
  let bytes = 0;
  let failed = false;
  const worker = async () => {
    const buf = Buffer.allocUnsafe(COPY_CHUNK);
    for (let e = extents[next++]; e && !failed; e = extents[next++]) {
      for (let at = e.offset; at < e.offset + e.length; at += buf.length) {
        const n = Math.min(buf.length, e.offset + e.length - at);
        const { bytesRead } = await src.read(buf, 0, n, at);
        if (bytesRead !== n) throw new Error(`${layer}: short read at ${at}`);
        const { bytesWritten } = await out.write(buf, 0, n, at);
        if (bytesWritten !== n) throw new Error(`short write at ${at}`);
      }
      bytes += e.length;
    }
  };
  try {
    // Every copy ends before the files close, even after a failure.
    const results = await Promise.allSettled(
      Array.from({ length: Math.min(COPIES_AT_ONCE, extents.length) }, () =>
        worker().catch((err: unknown) => {
          failed = true;
          throw err;
        }),
      ),
    );
    const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failure) throw failure.reason;
  } finally {
    await src.close();
  }
  return [bytes, extents.length];
}

/** Builds `target` through `<target>.partial`, so that it appears only once complete. */
async function writeWhole(target: string, build: (partial: string) => Promise<void>): Promise<void> {
  const partial = `${target}.partial`;
  await unlink(partial).catch(() => {});
  try {
    await build(partial);
    await rename(partial, target);
  } catch (err) {
    await unlink(partial).catch(() => {});
    throw err;
  }
}

/**
 * Writes into `target` the guest memory a chain of snapshot memory files describes: a sparse
 * copy of the base (`layers[0]`: a Full, or a Diff that holds every page its run wrote) with
 * each later Diff's written pages laid over it, in order. A written page counts even when it
 * is all zeros (the guest zeroed it).
 *
 * @example
 * await mergeMemoryLayers([full.memPath, diff1.memPath, diff2.memPath], join(vmDir, 'memory.merged'));
 */
export async function mergeMemoryLayers(layers: string[], target: string): Promise<MemoryMergeStats> {
  const t0 = performance.now();
  if (layers.length === 0) throw new Error('no memory file to merge');
  const sizes = await Promise.all(layers.map(async (l) => (await stat(l)).size));
  for (const [i, size] of sizes.entries()) {
    if (size !== sizes[0]) {
      throw new Error(
        `${layers[i]} is ${size} bytes and ${layers[0]} ${sizes[0]}: memory files of one guest have one size`,
      );
    }
  }
  const stats: MemoryMergeStats = { layers: layers.length, bytesCopied: 0, extents: 0, ms: 0 };
  await writeWhole(target, async (partial) => {
    await cloneFile(layers[0]!, partial);
    const out = await open(partial, 'r+');
    try {
      for (const layer of layers.slice(1)) {
        const [bytes, extents] = await overlay(out, layer);
        stats.bytesCopied += bytes;
        stats.extents += extents;
      }
    } finally {
      await out.close();
    }
  });
  stats.ms = performance.now() - t0;
  return stats;
}

/**
 * Copies a Diff memory file keeping exactly which pages it holds. `cp`, even with
 * `--sparse=auto`, turns written all-zero pages into holes, and a merge would then keep the
 * base's stale content there.
 */
export async function copyWrittenExtents(src: string, dst: string): Promise<void> {
  const { size } = await stat(src);
  await writeWhole(dst, async (partial) => {
    const out = await open(partial, 'w');
    try {
      await out.truncate(size);
      await overlay(out, src);
    } finally {
      await out.close();
    }
  });
}
