/**
 * Boot figures of the Firecracker driver against the simulator: per boot, API requests sent and
 * wall time from spawn to InstanceStart answered (p50/p99), split into process start (spawn to
 * API socket answering) and configuration (socket to InstanceStart).
 *
 *   npx tsx bench/firecracker-boot.ts [runs=50] [versions=1.1.0,1.13.1,1.16.1] [--jailer]
 *   (runs: also BENCH_RUNS; BENCH_SMOKE=1 makes it 2)
 *
 * The simulator is node + tsx, so "spawn to socket" measures node's start (~0.3-0.5 s), not
 * Firecracker's (~12 ms documented); the configuration part is the driver's own cost.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FirecrackerDriver } from '@nqvm/agent/drivers/firecracker/index';
import type { VmSpec } from '@nqvm/agent/drivers/types';
import {
  FIRECRACKER_SIM_VERSIONS,
  type FirecrackerSimVersion,
  isSimVersion,
  writeJailerBinary,
  writeSimulatorBinary,
  writeTinyElfKernel,
} from '@nqvm/testkit/firecracker-sim/index';
import { size } from './bench-kit';

const args = process.argv.slice(2);
const jailer = args.includes('--jailer');
const positional = args.filter((a) => !a.startsWith('--'));
const runs = positional[0] ? Number(positional[0]) : size('BENCH_RUNS', 50, 2);
const versions = (positional[1]?.split(',') ?? [...FIRECRACKER_SIM_VERSIONS]).filter(isSimVersion);

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

const fmt = (ms: number) => `${ms.toFixed(1)} ms`;

async function bench(version: FirecrackerSimVersion, root: string): Promise<void> {
  const dir = join(root, version);
  await mkdir(join(dir, 'disks'), { recursive: true });
  const firecrackerBin = await writeSimulatorBinary(join(dir, 'bin'), version);
  const jailerBin = jailer ? await writeJailerBinary(join(dir, 'bin'), version) : undefined;
  const kernelPath = await writeTinyElfKernel(join(dir, 'vmlinux'));
  const driver = new FirecrackerDriver({
    firecrackerBin,
    jailerBin,
    chrootBaseDir: join(dir, 'jail'),
    cgroupRoot: join(dir, 'cgroup'),
    socketTimeoutMs: 30_000,
  });
  const info = await driver.probe();
  if (!info.available) throw new Error(`simulator ${version} unavailable: ${info.reason}`);
  const total: number[] = [];
  const processStart: number[] = [];
  const configure: number[] = [];
  const requests = new Set<number>();
  for (let i = 0; i < runs; i++) {
    const disk = join(dir, 'disks', `vm${i}.ext4`);
    await writeFile(disk, Buffer.alloc(4096));
    const spec: VmSpec = {
      id: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`,
      generation: 1,
      vcpu: 1,
      memMib: 128,
      kernelPath,
      bootArgs: 'console=ttyS0 reboot=k panic=1',
      disks: [{ id: 'root', path: disk, format: 'raw', readOnly: false, isRoot: true }],
      nics: [{ id: 'eth0', tap: `tapb${i}`, mac: '02:fc:00:00:00:01' }],
      vmDir: join(dir, 'vms', String(i)),
      mmds: { latest: { 'meta-data': { 'instance-id': `vm${i}` } } },
    };
    const vm = await driver.boot(spec);
    const step = (name: string) => vm.stats.steps.find((s) => s.name === name)?.ms ?? 0;
    total.push(vm.stats.spawnToStartMs);
    processStart.push(step('spawn') + step('wait-socket'));
    configure.push(vm.stats.spawnToStartMs - step('spawn') - step('wait-socket'));
    requests.add(vm.stats.requests);
    await driver.shutdown(vm, { graceful: false, timeoutMs: 0 });
  }
  console.log(
    [
      `firecracker-sim v${version}${jailer ? ' (jailer)' : ''}, ${runs} boots:`,
      `  requests per boot: ${[...requests].join(', ')}`,
      `  spawn -> InstanceStart answered: p50 ${fmt(percentile(total, 50))}, p99 ${fmt(percentile(total, 99))}`,
      `    process start (spawn -> socket answers): p50 ${fmt(percentile(processStart, 50))}, p99 ${fmt(percentile(processStart, 99))}`,
      `    configuration (socket -> InstanceStart): p50 ${fmt(percentile(configure, 50))}, p99 ${fmt(percentile(configure, 99))}`,
    ].join('\n'),
  );
}

const root = await mkdtemp(join(tmpdir(), 'nqvm-bench-fc-'));
try {
  for (const v of versions) await bench(v, root);
} finally {
  await rm(root, { recursive: true, force: true });
}
