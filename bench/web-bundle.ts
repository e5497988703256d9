/**
 * Size of the web UI as a browser downloads it: every built asset raw, gzipped (level 9, what a
 * reverse proxy or @fastify/compress would send) and brotli'd, split into what the first page
 * load needs (index.html and what it links) and what loads later (the console chunk with
 * xterm.js).
 *
 * Run: npx tsx bench/web-bundle.ts   (builds packages/web first unless BENCH_NO_BUILD=1)
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';

const dist = path.resolve(import.meta.dirname, '..', 'packages', 'web', 'dist');

if (!process.env.BENCH_NO_BUILD) {
  execFileSync('npm', ['run', 'build', '-w', '@nqvm/web'], { stdio: 'ignore' });
}

function files(dir: string): string[] {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? files(path.join(dir, e.name)) : [path.join(dir, e.name)]));
}

const index = fs.readFileSync(path.join(dist, 'index.html'), 'utf8');
const initial = new Set(
  [...index.matchAll(/(?:src|href)="\/?([^"]+\.(?:js|css))"/g)].map((m) => path.join(dist, m[1] as string)),
);
initial.add(path.join(dist, 'index.html'));

interface Row {
  file: string;
  raw: number;
  gzip: number;
  brotli: number;
  initial: boolean;
}

const rows: Row[] = files(dist)
  .filter((f) => /\.(js|css|html|svg)$/.test(f))
  .map((f) => {
    const bytes = fs.readFileSync(f);
    return {
      file: path.relative(dist, f),
      raw: bytes.length,
      gzip: gzipSync(bytes, { level: 9 }).length,
      brotli: brotliCompressSync(bytes, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }).length,
      initial: initial.has(f),
    };
  })
  .sort((a, b) => b.raw - a.raw);

const kib = (n: number) => `${(n / 1024).toFixed(1)} KiB`;
console.log('file'.padEnd(44), 'raw'.padStart(11), 'gzip'.padStart(11), 'brotli'.padStart(11), ' first load');
for (const r of rows) {
  console.log(
    r.file.padEnd(44),
    kib(r.raw).padStart(11),
    kib(r.gzip).padStart(11),
    kib(r.brotli).padStart(11),
    r.initial ? ' yes' : ' later',
  );
}
const sum = (pick: (r: Row) => boolean, k: 'raw' | 'gzip' | 'brotli') =>
  rows.filter(pick).reduce((n, r) => n + r[k], 0);
for (const [label, pick] of [
  ['first page load', (r: Row) => r.initial],
  ['loaded later (console)', (r: Row) => !r.initial],
  ['everything', () => true],
] as const) {
  console.log(
    `${label.padEnd(44)} ${kib(sum(pick, 'raw')).padStart(11)} ${kib(sum(pick, 'gzip')).padStart(11)} ${kib(sum(pick, 'brotli')).padStart(11)}`,
  );
}
