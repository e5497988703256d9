/**
 * Test tooling for the driver suites: Firecracker simulator binaries, a kernel and VM specs in a
 * temporary folder, and the VMMs the tests start (killed at the end).
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  type FirecrackerSimVersion,
  type JournalRequest,
  journalRequests,
  readJournal,
  type SimulatorBinaryOptions,
  writeSimulatorBinary,
  writeTinyElfKernel,
} from '@nqvm/testkit/firecracker-sim/index';
import { afterAll, beforeAll } from 'vitest';
import type { VmSpec } from '../types';
import type { FirecrackerVmHandle } from './driver';
import { isSameProcess } from './process';

export interface SimFixture {
  dir: string;
  journal: string;
  kernel: string;
  bin: string;
  /** A spec with one writable root disk of its own, a NIC, MMDS data and vsock CID 3. */
  spec(name: string, extra?: Partial<VmSpec>): Promise<VmSpec>;
}

export interface SimFixtures {
  fixture(version: FirecrackerSimVersion, sub: string, binary?: SimulatorBinaryOptions): Promise<SimFixture>;
  /** Registers a VMM for the final kill. */
  keep<T extends FirecrackerVmHandle>(h: T): T;
  /** The error of a boot or restore meant to fail; a VMM that started anyway is kept (and returned). */
  failure(launch: Promise<FirecrackerVmHandle>): Promise<unknown>;
}

/** Registers the suite's hooks: one temporary root, every kept VMM killed and the root removed. */
export function useSimFixtures(prefix: string): SimFixtures {
  let root = '';
  const handles: FirecrackerVmHandle[] = [];
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), prefix));
  });
  afterAll(async () => {
    for (const h of handles) {
      if (await isSameProcess(h.record.pid, h.record.pidStartTime)) process.kill(h.record.pid, 'SIGKILL');
    }
    // A killed VMM's cleanup may still be writing into its folder.
    await rm(root, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  });
  return {
    keep(h) {
      handles.push(h);
      return h;
    },
    async failure(launch) {
      try {
        const h = await launch;
        handles.push(h);
        return h;
      } catch (err) {
        return err;
      }
    },
    async fixture(version, sub, binary = {}) {
      const dir = join(root, version, sub);
      await mkdir(dir, { recursive: true });
      const journal = join(dir, 'journal.jsonl');
      const bin = await writeSimulatorBinary(join(dir, 'bin'), version, { journal, ...binary });
      const kernel = await writeTinyElfKernel(join(dir, 'vmlinux'));
      let n = 0;
      return {
        dir,
        journal,
        kernel,
        bin,
        async spec(name, extra = {}) {
          const vmDir = join(dir, 'vms', name);
          const disk = join(dir, 'disks', `${name}.ext4`);
          await mkdir(join(dir, 'disks'), { recursive: true });
          await writeFile(disk, Buffer.alloc(64 * 1024, 7));
          n++;
          return {
            id: `00000000-0000-4000-8000-${String(n).padStart(4, '0')}${name
              .padEnd(8, '0')
              .slice(0, 8)
              .replace(/[^a-f0-9]/g, 'a')}`,
            generation: 1,
            vcpu: 2,
            memMib: 16,
            kernelPath: kernel,
            bootArgs: 'console=ttyS0 reboot=k panic=1',
            disks: [{ id: 'root', path: disk, format: 'raw', readOnly: false, isRoot: true }],
            nics: [{ id: 'eth0', tap: `tap-${name}`.slice(0, 15), mac: '02:fc:00:00:00:01' }],
            vmDir,
            mmds: { latest: { 'meta-data': { 'instance-id': name } } },
            vsockCid: 3,
            ...extra,
          };
        },
      };
    },
  };
}

export async function until(cond: () => Promise<boolean> | boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The requests one simulator process received. */
export async function requestsOf(journal: string, pid: number): Promise<JournalRequest[]> {
  return journalRequests(await readJournal(journal), pid);
}

/** The ticks the simulated guest printed on the VM's console since its latest boot or restore. */
export async function consoleTicks(vmDir: string): Promise<number[]> {
  const text = await readFile(join(vmDir, 'console.log'), 'utf8').catch(() => '');
  const run = Math.max(
    text.lastIndexOf('nqvm-sim: guest booted'),
    text.lastIndexOf('nqvm-sim: guest resumed'),
  );
  return [...text.slice(Math.max(run, 0)).matchAll(/nqvm-sim: guest tick (\d+)/g)].map((m) => Number(m[1]));
}
