/**
 * OCI import benchmark: builds a 3-layer image of about 200 MiB of mixed files (small text-like
 * files and incompressible binaries; layers gzip, zstd, gzip) in a local docker-registry, imports
 * it several times and prints the median throughput (uncompressed layer MiB per second of the
 * whole import, registry to ext4) and the split between download, apply and mkfs.
 *
 *   npx tsx bench/oci-import.ts
 *   BENCH_MIB=400 BENCH_RUNS=5 BENCH_DIR=/var/tmp npx tsx bench/oci-import.ts
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { importOciImage } from '../packages/manager/src/images/oci';
import {
  buildImage,
  compressLayer,
  type LayerCompression,
  type LayerEntry,
  pushImage,
  startOciRegistry,
  tarLayer,
} from '../packages/testkit/src/oci-registry';
import { size } from './bench-kit';

const TOTAL_MIB = size('BENCH_MIB', 200, 16);
const RUNS = size('BENCH_RUNS', 3, 1);
const DIR = process.env.BENCH_DIR ?? tmpdir();
const MiB = 1024 * 1024;

/** A small deterministic PRNG so every run builds the same tree shape. */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const WORDS =
  'the of and to in is for on with as by at from this that config service value error return import export function data file path user system'.split(
    ' ',
  );

function textLike(size: number, rand: () => number): Buffer {
  const parts: string[] = [];
  let n = 0;
  while (n < size) {
    const w = WORDS[Math.floor(rand() * WORDS.length)]!;
    parts.push(w);
    n += w.length + 1;
  }
  return Buffer.from(parts.join(rand() < 0.1 ? '\n' : ' ')).subarray(0, size);
}

/** Half the bytes in text-like files of 1-48 KiB, half in random binaries of 256 KiB-3 MiB. */
function layerEntries(index: number, bytes: number, rand: () => number): LayerEntry[] {
  const entries: LayerEntry[] = [];
  let text = 0;
  let binary = 0;
  let i = 0;
  while (text < bytes / 2) {
    const size = 1024 + Math.floor(rand() * 47 * 1024);
    const dir = `usr/share/l${index}/d${Math.floor(i / 50)}`;
    if (i % 50 === 0) entries.push({ name: `${dir}/`, type: 'directory' });
    entries.push({ name: `${dir}/f${i}.txt`, type: 'file', content: textLike(size, rand) });
    if (i % 200 === 0) entries.push({ name: `${dir}/f${i}.link`, type: 'symlink', linkname: `f${i}.txt` });
    text += size;
    i++;
  }
  entries.push({ name: `usr/lib/l${index}/`, type: 'directory' });
  for (let b = 0; binary < bytes / 2; b++) {
    const size = 256 * 1024 + Math.floor(rand() * (3 * MiB - 256 * 1024));
    entries.push({
      name: `usr/lib/l${index}/lib${b}.so`,
      type: 'file',
      content: randomBytes(size),
      mode: 0o755,
    });
    binary += size;
  }
  return entries;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main() {
  const rand = prng(42);
  const plan: Array<{ share: number; compression: LayerCompression }> = [
    { share: 0.4, compression: 'gzip' },
    { share: 0.4, compression: 'zstd' },
    { share: 0.2, compression: 'gzip' },
  ];
  console.log(`building a ${TOTAL_MIB} MiB image in ${plan.length} layers...`);
  const t0 = performance.now();
  const layers = [];
  const diffIds = [];
  let tarBytes = 0;
  let files = 0;
  for (const [i, p] of plan.entries()) {
    const entries = layerEntries(i, p.share * TOTAL_MIB * MiB, rand);
    files += entries.length;
    const tar = await tarLayer(entries);
    tarBytes += tar.length;
    diffIds.push(`sha256:${createHash('sha256').update(tar).digest('hex')}`);
    layers.push(await compressLayer(tar, p.compression));
  }
  const image = buildImage({ layers, diffIds, config: { Cmd: ['/bin/sh'] } });
  const compressed = layers.reduce((s, l) => s + l.size, 0);
  console.log(
    `built in ${((performance.now() - t0) / 1000).toFixed(1)} s: ${files} entries, ` +
      `${(tarBytes / MiB).toFixed(0)} MiB of tar, ${(compressed / MiB).toFixed(0)} MiB compressed ` +
      `(${layers.map((l, i) => `${plan[i]!.compression} ${(l.size / MiB).toFixed(0)} MiB`).join(', ')})`,
  );

  const registry = await startOciRegistry();
  const work = await fs.mkdtemp(join(DIR, 'nqvm-bench-oci-'));
  try {
    await pushImage({ url: registry.url, repository: 'bench/image' }, 'v1', image);
    const runs: Array<{ wall: number; download: number; apply: number; mkfs: number; ext4: number }> = [];
    for (let r = 0; r < RUNS; r++) {
      const outFile = join(work, `rootfs-${r}.ext4`);
      const start = performance.now();
      const result = await importOciImage({
        reference: `${registry.host}/bench/image:v1`,
        workDir: join(work, 'tmp'),
        outFile,
        onProgress: () => {},
      });
      const wall = performance.now() - start;
      const ext4 = (await fs.stat(outFile)).size;
      runs.push({ wall, ...result.durationsMs, ext4 });
      console.log(
        `run ${r + 1}: ${(wall / 1000).toFixed(2)} s, ${(tarBytes / MiB / (wall / 1000)).toFixed(1)} MiB/s ` +
          `(download ${(result.durationsMs.download / 1000).toFixed(2)} s, apply ${(result.durationsMs.apply / 1000).toFixed(2)} s, ` +
          `mkfs ${(result.durationsMs.mkfs / 1000).toFixed(2)} s; ext4 ${(ext4 / MiB).toFixed(0)} MiB)`,
      );
      await fs.rm(outFile);
    }
    const wall = median(runs.map((r) => r.wall)) / 1000;
    console.log('\nOCI import, registry on 127.0.0.1 -> ext4 (median of %d runs)', RUNS);
    console.log(
      `  image:            ${(tarBytes / MiB).toFixed(0)} MiB in layers (${(compressed / MiB).toFixed(0)} MiB compressed), ${files} entries`,
    );
    console.log(`  total:            ${wall.toFixed(2)} s`);
    console.log(
      `  throughput:       ${(tarBytes / MiB / wall).toFixed(1)} MiB/s of layers (uncompressed) to ext4`,
    );
    console.log(`                    ${(compressed / MiB / wall).toFixed(1)} MiB/s of compressed download`);
    console.log(
      `  download (wall):  ${(median(runs.map((r) => r.download)) / 1000).toFixed(2)} s (overlaps with apply)`,
    );
    console.log(
      `  apply:            ${(median(runs.map((r) => r.apply)) / 1000).toFixed(2)} s (decompress + tar + files)`,
    );
    console.log(`  mkfs.ext4 -d:     ${(median(runs.map((r) => r.mkfs)) / 1000).toFixed(2)} s`);
  } finally {
    await registry.stop();
    await fs.rm(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
