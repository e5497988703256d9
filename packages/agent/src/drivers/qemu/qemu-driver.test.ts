import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { BOOT_MARKER, ensureTestGuest, guestBootArgs, pidsWhere, type TestGuest } from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isSameProcessRunning } from '../../host/proc';
import { BootStepError, type RunRecord, type VmSpec } from '../types';
import { QemuDriver } from './qemu-driver';
import type { QemuVm } from './qemu-vm';

/**
 * Real VMs: the testkit guest booted by QEMU under TCG. Tests run one after another in this
 * file, so at most one guest boots at a time (plus the one the fake agent boots).
 */

const HERE = fileURLToPath(new URL('.', import.meta.url));
const REPO_ROOT = resolve(HERE, '../../../../..');
const BOOT_TIMEOUT_MS = 60_000;
const figures: Record<string, string> = {};
/** The marker and the `key=value` details the guest prints after it on the same line. */
const MARKER_LINE = new RegExp(`${BOOT_MARKER}[^\\n]*\\n`);

let guest: TestGuest;
let root: string;
const driver = new QemuDriver();
const started: RunRecord[] = [];
const helpers: ChildProcess[] = [];

function spec(name: string, opts: { disk?: string; memMib?: number } = {}): VmSpec {
  return {
    id: name,
    generation: 1,
    vcpu: 1,
    memMib: opts.memMib ?? 128,
    kernelPath: guest.kernel,
    initrdPath: guest.initrd,
    bootArgs: guestBootArgs(`nqvm.hostname=${name}`),
    disks: opts.disk ? [{ id: 'root', path: opts.disk, format: 'qcow2', readOnly: false, isRoot: true }] : [],
    nics: [],
    vmDir: join(root, name),
  };
}

async function boot(s: VmSpec): Promise<{ vm: QemuVm; bootMs: number; markerMs: number }> {
  const t0 = performance.now();
  const vm = await driver.boot(s);
  started.push(vm.record);
  const bootMs = performance.now() - t0;
  await vm.console.waitForOutput(MARKER_LINE, BOOT_TIMEOUT_MS);
  return { vm, bootMs, markerMs: performance.now() - t0 };
}

/** Complete `C<n>` lines printed by the counter loop. */
function counters(text: string): number[] {
  return [...text.matchAll(/^C(\d+)\r?$/gm)].map((m) => Number(m[1]));
}

function outputSince(vm: QemuVm, since: number): string {
  return vm.console.tail(vm.console.totalBytes - since).toString('latin1');
}

const COUNTER_LOOP = 'i=0; while true; do echo C$i; i=$((i+1)); sleep 0.2; done &\n';

async function startCounter(vm: QemuVm): Promise<void> {
  const from = vm.console.totalBytes;
  vm.console.write(COUNTER_LOOP);
  await vm.console.waitForOutput(/^C3\r?$/m, 20_000, from);
}

async function rssKib(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0);
}

beforeAll(async () => {
  guest = await ensureTestGuest();
  root = await mkdtemp(join(tmpdir(), 'nqvm-qemu-driver-'));
});

afterAll(async () => {
  for (const h of helpers) h.kill('SIGKILL');
  for (const r of started) {
    if (await isSameProcessRunning(r.pid, r.pidStartTime)) process.kill(r.pid, 'SIGKILL');
  }
  if (root) await rm(root, { recursive: true, force: true });
  console.info('QEMU driver figures:', figures);
});

describe('QemuDriver (real guests, TCG)', () => {
  let main: QemuVm;

  it('probes QEMU and whether KVM runs a guest here', async () => {
    const info = await driver.probe();
    expect(info).toMatchObject({ kind: 'qemu', available: true, binary: expect.stringMatching(/^\//) });
    expect(info.version).toMatch(/^\d+\.\d+\.\d+$/);
    expect(info.features).toEqual(expect.arrayContaining(['snapshot', 'pause', 'graceful-shutdown']));
    expect(await driver.probe()).toBe(info);
    figures.kvm = `${info.kvm} (${driver.kvmProbeReason})`;
  });

  it('boots the test guest from a qcow2 overlay and shows its marker on the console', async () => {
    const overlay = join(root, 'main-root.qcow2');
    await promisify(execFile)('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-F',
      'raw',
      '-b',
      guest.rootfs,
      overlay,
    ]);
    const { vm, bootMs, markerMs } = await boot(spec('main', { disk: overlay }));
    main = vm;
    expect(main.console.tail().toString()).toContain('root=disk');
    const { record } = main;
    expect(record).toMatchObject({
      kind: 'qemu',
      vmId: 'main',
      controlSocket: join(root, 'main', 'qmp.sock'),
    });
    expect(Number(await readFile(join(root, 'main', 'qemu.pid'), 'utf8'))).toBe(record.pid);
    // Detached: QEMU leads its own session, so the agent's session or group dying kills no VM.
    const statText = await readFile(`/proc/${record.pid}/stat`, 'utf8');
    const fields = statText.slice(statText.lastIndexOf(')') + 2).split(' ');
    expect(Number(fields[3])).toBe(record.pid); // session id (field 6)
    // No helper process per VM: QEMU holds the console itself and has no children.
    const children = await readFile(`/proc/${record.pid}/task/${record.pid}/children`, 'utf8');
    expect(children.trim()).toBe('');
    figures.bootToHandleMs = bootMs.toFixed(0);
    figures.bootToMarkerMs = markerMs.toFixed(0);
    figures.qemuRssMiB = ((await rssKib(record.pid)) / 1024).toFixed(0);
    figures.extraProcessesPerVm = '0';
  });

  it('pauses (a counter stops) and resumes (it advances again)', async () => {
    await startCounter(main);
    let t = performance.now();
    await driver.pause(main);
    figures.qmpStopMs = (performance.now() - t).toFixed(2);
    await sleep(300); // Output already in flight drains.
    const pausedAt = main.console.totalBytes;
    const last = Math.max(...counters(main.console.tail().toString('latin1')));
    await sleep(1_500);
    expect(outputSince(main, pausedAt)).toBe('');
    t = performance.now();
    await driver.resume(main);
    figures.qmpContMs = (performance.now() - t).toFixed(2);
    await main.console.waitForOutput(new RegExp(`^C${last + 1}\\r?$`, 'm'), 10_000, pausedAt);
  });

  it('refuses Diff snapshots with a stable code', async () => {
    await expect(driver.snapshot(main, join(root, 'diff'), 'Diff')).rejects.toMatchObject({
      code: 'SNAPSHOT_TYPE_UNSUPPORTED',
    });
  });

  it('stops gracefully when the guest handles the power button', async () => {
    const t = performance.now();
    await expect(driver.shutdown(main, { graceful: true, timeoutMs: 30_000 })).resolves.toEqual({
      graceful: true,
    });
    figures.gracefulStopMs = (performance.now() - t).toFixed(0);
    await expect(main.exited).resolves.toMatchObject({ reason: 'shutdown', message: 'guest-shutdown' });
    await expect(stat(main.record.controlSocket)).rejects.toThrow();
    expect(await readFile(join(root, 'main', 'console.log'), 'utf8')).toContain('power button');
  });

  it('forces the stop once the timeout passes when the guest ignores the button', async () => {
    const { vm } = await boot(spec('deaf'));
    const from = vm.console.totalBytes;
    vm.console.write('kill $(cat /run/acpid.pid) && echo ACPID-$((1+1))-GONE\n');
    await vm.console.waitForOutput('ACPID-2-GONE', 10_000, from);
    const t = performance.now();
    await expect(driver.shutdown(vm, { graceful: true, timeoutMs: 2_000 })).resolves.toEqual({
      graceful: false,
    });
    expect(performance.now() - t).toBeGreaterThanOrEqual(2_000);
    await expect(vm.exited).resolves.toMatchObject({ reason: 'shutdown', message: 'host-qmp-quit' });
    expect(await isSameProcessRunning(vm.record.pid, vm.record.pidStartTime)).toBe(false);
  });

  it('kills a VMM that does not answer quit', async () => {
    const vm = await driver.boot(spec('stuck'));
    started.push(vm.record);
    process.kill(vm.record.pid, 'SIGSTOP');
    const t = performance.now();
    await expect(driver.shutdown(vm, { graceful: false, timeoutMs: 0 })).resolves.toEqual({
      graceful: false,
    });
    figures.stuckVmmKillMs = (performance.now() - t).toFixed(0);
    await expect(vm.exited).resolves.toMatchObject({ reason: 'killed', signal: 'SIGKILL' });
  });

  it('snapshots a running guest and restores it with its counter intact', async () => {
    const { vm } = await boot(spec('snap'));
    await startCounter(vm);
    const before = vm.console.totalBytes;
    const lastBefore = Math.max(...counters(vm.console.tail().toString('latin1')));
    let t = performance.now();
    const snap = await driver.snapshot(vm, join(root, 'snaps', 's1'), 'Full');
    figures.snapshotMs = (performance.now() - t).toFixed(0);
    expect(snap).toEqual({ statePath: join(root, 'snaps', 's1', 'vmstate'), type: 'Full' });
    figures.snapshotMiB = ((await stat(snap.statePath)).size / 1024 ** 2).toFixed(1);
    // The original resumes after the save; the first value it prints bounds the saved one.
    await vm.console.waitForOutput(/^C\d+\r?$/m, 10_000, before);
    const firstAfter = Math.min(...counters(outputSince(vm, before)));
    await driver.shutdown(vm, { graceful: false, timeoutMs: 0 });

    t = performance.now();
    const restored = await driver.restore({ ...spec('snap'), vmDir: join(root, 'snap-restored') }, snap);
    started.push(restored.record);
    figures.restoreMs = (performance.now() - t).toFixed(0);
    await restored.console.waitForOutput(/^C\d+\r?$/m, 10_000);
    await sleep(500);
    const values = counters(restored.console.tail().toString('latin1'));
    const first = Math.min(...values);
    expect(first).toBeGreaterThan(lastBefore);
    expect(first).toBeLessThanOrEqual(firstAfter + 1);
    // It keeps counting from there.
    expect(Math.max(...values)).toBeGreaterThan(first);

    // A VMM killed from outside is noticed as crashed.
    t = performance.now();
    process.kill(restored.record.pid, 'SIGKILL');
    const exit = await restored.exited;
    figures.crashDetectOwnChildMs = (performance.now() - t).toFixed(0);
    expect(exit).toMatchObject({ reason: 'crashed', signal: 'SIGKILL' });
    expect(performance.now() - t).toBeLessThan(10_000);
  });

  it('captures the disk with the memory: a clone on its own disk copy sees the file as it was', async () => {
    const overlay = join(root, 'disk-src.qcow2');
    await promisify(execFile)('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-F',
      'raw',
      '-b',
      guest.rootfs,
      overlay,
    ]);
    const { vm } = await boot(spec('disksrc', { disk: overlay }));
    const say = async (cmd: string, expect: RegExp) => {
      const from = vm.console.totalBytes;
      vm.console.write(`${cmd}\n`);
      await vm.console.waitForOutput(expect, 20_000, from);
    };
    await say('echo before > /root/f; sync; echo WROTE-$((1+1))', /WROTE-2/);
    const snap = await driver.snapshot(vm, join(root, 'snaps', 'disk'), 'Full');
    expect((await readdir(join(root, 'snaps', 'disk'))).sort()).toEqual([
      'disk-root.qcow2',
      'qemu-snapshot.json',
      'vmstate',
    ]);
    await say('echo after > /root/f; sync; echo WROTE-$((2+1))', /WROTE-3/);
    await driver.shutdown(vm, { graceful: false, timeoutMs: 0 });

    // The clone's own disk file: the copy replaces whatever is there.
    const cloneDisk = join(root, 'disk-clone.qcow2');
    await writeFile(cloneDisk, 'stale');
    const clone = await driver.restore({ ...spec('diskclone', { disk: cloneDisk }) }, snap);
    started.push(clone.record);
    const from = clone.console.totalBytes;
    // Dropping the page cache makes the guest read the file from the disk again.
    clone.console.write('echo 3 > /proc/sys/vm/drop_caches; echo "F=$(cat /root/f)"\n');
    await clone.console.waitForOutput(/^F=\w+\r?\n/m, 20_000, from);
    expect(outputSince(clone, from)).toMatch(/^F=before\r?$/m);
    // The source's disk keeps what the source wrote after the snapshot.
    const { stdout } = await promisify(execFile)('qemu-img', ['info', '--output=json', overlay]);
    expect(JSON.parse(stdout)['backing-filename']).toBe(guest.rootfs);
    await driver.shutdown(clone, { graceful: false, timeoutMs: 0 });
    await expect(driver.restore({ ...spec('nodisk') }, snap)).rejects.toThrow(/disks this VM lacks: root/);
  });

  describe('agent restart', () => {
    let record: RunRecord;

    it('an agent killed with -9 leaves its VM running', async () => {
      const s = spec('adopt');
      const fakeAgent = spawn(
        process.execPath,
        ['--import', 'tsx', join(HERE, 'agent-restart.fixture.ts'), JSON.stringify(s), BOOT_MARKER],
        { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'inherit'], detached: true },
      );
      helpers.push(fakeAgent);
      let out = '';
      fakeAgent.stdout?.setEncoding('utf8').on('data', (d: string) => {
        out += d;
      });
      const deadline = Date.now() + BOOT_TIMEOUT_MS;
      while (!out.includes('\n')) {
        if (Date.now() > deadline || fakeAgent.exitCode !== null)
          throw new Error(`fake agent failed: ${out}`);
        await sleep(50);
      }
      record = JSON.parse(out.trim()) as RunRecord;
      started.push(record);
      // Kill the agent and its whole process group, as a terminal's Ctrl-C or kill -9 would.
      process.kill(-fakeAgent.pid!, 'SIGKILL');
      await new Promise((r) => fakeAgent.once('exit', r));
      await sleep(500);
      expect(await isSameProcessRunning(record.pid, record.pidStartTime)).toBe(true);
    });

    it('does not adopt a reused pid (wrong start time) or a dead one', async () => {
      expect(await driver.adopt({ ...record, pidStartTime: record.pidStartTime + 1 })).toBeNull();
      expect(await driver.adopt({ ...record, pid: 2 ** 22 + 1 })).toBeNull();
    });

    it('a new driver adopts the VM with its console scrollback, and hears it crash', async () => {
      const restarted = new QemuDriver({ accel: 'tcg' });
      const vm = await restarted.adopt(record);
      expect(vm).not.toBeNull();
      if (!vm) return;
      const scrollback = vm.console.tail().toString('latin1');
      expect(scrollback).toContain(BOOT_MARKER);
      expect(scrollback).toContain('BEFORE-RESTART-42');
      const from = vm.console.totalBytes;
      vm.console.write('echo AFTER-RESTART-$((50+1))\n');
      await vm.console.waitForOutput('AFTER-RESTART-51', 10_000, from);
      await restarted.pause(vm);
      await restarted.resume(vm);

      const t = performance.now();
      process.kill(record.pid, 'SIGKILL');
      const exit = await vm.exited;
      const ms = performance.now() - t;
      figures.crashDetectAdoptedMs = ms.toFixed(0);
      expect(exit.reason).toBe('crashed');
      expect(ms).toBeLessThan(10_000);
    });
  });

  describe('failed boots leave nothing behind', () => {
    it('a missing kernel fails at validate-spec', async () => {
      const s = { ...spec('nokernel'), kernelPath: join(root, 'no-such-vmlinuz') };
      const err = await driver.boot(s).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(BootStepError);
      expect((err as BootStepError).step).toBe('validate-spec');
      await expect(stat(s.vmDir)).rejects.toThrow();
      expect(pidsWhere((c) => c.includes(s.vmDir))).toEqual([]);
    });

    it('a kernel QEMU cannot load fails while QEMU starts, and is cleaned up', async () => {
      const junk = join(root, 'junk-vmlinuz');
      await writeFile(junk, Buffer.alloc(4096, 0x5a));
      const s = { ...spec('junkkernel'), kernelPath: junk };
      const err = await driver.boot(s).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(BootStepError);
      expect(['spawn-vmm', 'connect-qmp']).toContain((err as BootStepError).step);
      expect((err as Error).message).toMatch(/QEMU/);
      await expect(stat(s.vmDir)).rejects.toThrow();
      expect(pidsWhere((c) => c.includes(s.vmDir))).toEqual([]);
    });

    it('an existing VM folder keeps what was there before', async () => {
      const s = { ...spec('keepdir'), kernelPath: join(root, 'junk-vmlinuz') };
      await rm(s.vmDir, { recursive: true, force: true });
      await mkdir(s.vmDir);
      await writeFile(join(s.vmDir, 'owned-by-agent.json'), '{}');
      await expect(driver.boot(s)).rejects.toBeInstanceOf(BootStepError);
      expect(await readdir(s.vmDir)).toEqual(['owned-by-agent.json']);
    });
  });
});
