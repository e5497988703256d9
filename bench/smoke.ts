/**
 * Every benchmark once at its smallest size (BENCH_SMOKE=1), one after another: shows that
 * each still runs to the end. Fails when one fails (exit code, crash, timeout), never on a
 * figure. The benchmarks that drive the built CLI need `npm run build` first.
 *
 *   npm run build && npm run bench:smoke
 *   npm run bench:smoke -- snapshot-restore vm-faults     (only these)
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { table } from './bench-kit';

const DIR = import.meta.dirname;
const ROOT = path.resolve(DIR, '..');
/** Not benchmarks: this runner and the shared helpers. */
const NOT_BENCHMARKS = new Set(['smoke.ts', 'bench-kit.ts']);
const TIMEOUT_MS = 300_000;

const all = fs
  .readdirSync(DIR)
  .filter((f) => f.endsWith('.ts') && !NOT_BENCHMARKS.has(f))
  .map((f) => f.slice(0, -3))
  .sort();
const asked = process.argv.slice(2);
const unknown = asked.filter((a) => !all.includes(a));
if (unknown.length) {
  console.error(`no such benchmark: ${unknown.join(', ')} (there are: ${all.join(', ')})`);
  process.exit(2);
}
if (!fs.existsSync(path.join(ROOT, 'packages', 'cli', 'dist', 'nqvm.mjs'))) {
  console.error('packages/cli/dist/nqvm.mjs is missing: run `npm run build` first');
  process.exit(2);
}

/** Runs one benchmark with its output passed through, each line prefixed with its name. */
function run(name: string): Promise<{ ok: boolean; why: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(DIR, `${name}.ts`)], {
      cwd: ROOT,
      env: { ...process.env, BENCH_SMOKE: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    const prefix = (chunk: Buffer, out: NodeJS.WriteStream) => {
      for (const line of chunk.toString().split('\n')) if (line) out.write(`[${name}] ${line}\n`);
    };
    child.stdout.on('data', (d: Buffer) => prefix(d, process.stdout));
    child.stderr.on('data', (d: Buffer) => prefix(d, process.stderr));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      // The whole group: a benchmark's QEMU and agents go with it.
      if (child.pid) process.kill(-child.pid, 'SIGKILL');
    }, TIMEOUT_MS);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (timedOut) resolve({ ok: false, why: `timed out after ${TIMEOUT_MS / 1000} s` });
      else if (code === 0) resolve({ ok: true, why: '' });
      else resolve({ ok: false, why: signal ? `killed by ${signal}` : `exit code ${code}` });
    });
  });
}

const rows: string[][] = [];
let failed = 0;
const t0 = performance.now();
for (const name of asked.length ? asked : all) {
  console.log(`\n== bench/${name}.ts (BENCH_SMOKE=1)`);
  const start = performance.now();
  const { ok, why } = await run(name);
  const took = ((performance.now() - start) / 1000).toFixed(1);
  if (!ok) failed++;
  rows.push([name, `${took} s`, ok ? 'ran' : `FAILED: ${why}`]);
}
console.log(`\nbench:smoke, ${((performance.now() - t0) / 1000).toFixed(0)} s in all\n`);
console.log(table(['benchmark', 'time', 'result'], rows));
if (failed) {
  console.error(`\n${failed} benchmark(s) failed`);
  process.exit(1);
}
