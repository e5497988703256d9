import { execFile, spawn } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeJailerBinary, writeSimulatorBinary } from './binary';
import { fcRequest } from './client';
import { readJournal } from './journal';
import { writeTinyElfKernel } from './kernel-fixture';

const run = promisify(execFile);

describe('jailer simulator', () => {
  let dir: string;
  let fc: string;
  let jailer: string;
  let journal: string;
  const pids: number[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'fc-jailer-test-'));
    fc = await writeSimulatorBinary(join(dir, 'bin'), '1.13.1');
    jailer = await writeJailerBinary(join(dir, 'bin'), '1.13.1');
    journal = join(dir, 'journal.jsonl');
  });

  afterAll(async () => {
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
    await rm(dir, { recursive: true, force: true });
  });

  it('reports its version like the real jailer', async () => {
    const { stdout } = await run(jailer, ['--version']);
    expect(stdout.trim()).toBe('Jailer v1.13.1');
  });

  it('refuses an exec file whose name lacks "firecracker"', async () => {
    const other = join(dir, 'bin', 'vmm');
    await copyFile(fc, other);
    await expect(
      run(jailer, [
        '--id',
        'x1',
        '--exec-file',
        other,
        '--uid',
        '1000',
        '--gid',
        '1000',
        '--chroot-base-dir',
        dir,
      ]),
    ).rejects.toThrow(/must contain "firecracker"/);
  });

  it('stages the chroot, records cgroups and execs Firecracker in place with paths inside the jail', async () => {
    const base = join(dir, 'jail');
    const id = 'vm-0001';
    const child = spawn(
      jailer,
      [
        '--id',
        id,
        '--exec-file',
        fc,
        '--uid',
        '123',
        '--gid',
        '456',
        '--cgroup-version',
        '2',
        '--cgroup',
        'cpu.max=200000 100000',
        '--cgroup',
        'memory.max=201326592',
        '--parent-cgroup',
        'nqvm',
        '--chroot-base-dir',
        base,
        '--',
        '--api-sock',
        '/api.sock',
      ],
      { stdio: 'ignore', env: { ...process.env, FC_SIM_JOURNAL: journal } },
    );
    pids.push(child.pid!);
    const instance = join(base, 'firecracker-v1.13.1', id);
    const root = join(instance, 'root');
    const sock = join(root, 'api.sock');
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        if ((await fcRequest(sock, 'GET', '/')).status === 200) break;
      } catch {
        if (Date.now() > deadline) throw new Error('jailed simulator did not answer');
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    expect((await stat(join(root, 'firecracker-v1.13.1'))).mode & 0o111).toBeTruthy();
    const record = JSON.parse(await readFile(join(instance, 'jailer.json'), 'utf8'));
    expect(record).toMatchObject({
      uid: 123,
      gid: 456,
      cgroupVersion: 2,
      parentCgroup: 'nqvm',
      cgroups: { 'cpu.max': '200000 100000', 'memory.max': '201326592' },
    });
    // The jailer execs Firecracker: same pid, and Firecracker gets --id from the jailer.
    const start = (await readJournal(journal)).find((e) => e.kind === 'event' && e.event === 'start');
    expect(start?.pid).toBe(child.pid);
    expect(start).toMatchObject({ instance: id, detail: { root } });

    const hostKernel = await writeTinyElfKernel(join(dir, 'vmlinux'));
    const outside = await fcRequest(sock, 'PUT', '/boot-source', { kernel_image_path: hostKernel });
    expect(outside.status).toBe(400);
    await mkdir(join(root, 'boot'));
    await copyFile(hostKernel, join(root, 'boot', 'vmlinux'));
    expect(
      (await fcRequest(sock, 'PUT', '/boot-source', { kernel_image_path: '/boot/vmlinux' })).status,
    ).toBe(204);
    expect(
      (await fcRequest(sock, 'PUT', '/boot-source', { kernel_image_path: '/../../vmlinux' })).status,
    ).toBe(400);
    child.kill('SIGKILL');
  });
});
