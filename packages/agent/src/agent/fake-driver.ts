/**
 * An in-memory VmmDriver for the agent's tests: "processes" are records in a map that outlive
 * any one agent (so adoption can be tested), and tests make VMs crash or power off at will.
 */
import { rmSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type {
  DriverInfo,
  RunRecord,
  ShutdownOptions,
  SnapshotFiles,
  VmExit,
  VmHandle,
  VmmDriver,
  VmmKind,
  VmSpec,
} from '../drivers/types';

class FakeVm implements VmHandle {
  readonly exited: Promise<VmExit>;
  paused = false;
  lastSnapshot: SnapshotFiles | null = null;
  private resolveExit!: (exit: VmExit) => void;

  constructor(
    readonly record: RunRecord,
    readonly console = {
      tail: (bytes?: number) => Buffer.from(`console of ${record.vmId}\n`).subarray(-(bytes ?? 1e9)),
    },
  ) {
    this.exited = new Promise((resolve) => {
      this.resolveExit = resolve;
    });
  }

  end(exit: VmExit): void {
    this.resolveExit(exit);
  }
}

export class FakeDriver implements VmmDriver {
  boots: VmSpec[] = [];
  /** When each boot began (ms since the epoch). */
  bootedAt: number[] = [];
  shutdowns: ShutdownOptions[] = [];
  pauses = 0;
  resumes = 0;
  /** When set, adopt fails with it. */
  adoptError: Error | null = null;
  /** When set, boot fails with it (after `bootDelayMs`). */
  failBoot: Error | null = null;
  bootDelayMs = 0;
  /** When set, snapshots fail with it. */
  failSnapshot: Error | null = null;
  snapshots: Array<{ vmId: string; dir: string; type: 'Full' | 'Diff' }> = [];
  restores: Array<{ spec: VmSpec; snap: SnapshotFiles }> = [];
  available = true;
  kvm = false;
  features: string[] = [];
  /** "Processes" alive by pid; they survive agents, as VMMs do. */
  readonly alive = new Map<number, FakeVm>();
  private nextPid = 10_000;

  constructor(readonly kind: VmmKind = 'qemu') {}

  async probe(): Promise<DriverInfo> {
    return {
      kind: this.kind,
      available: this.available,
      version: '0.0.1',
      binary: '/fake/vmm',
      kvm: this.kvm,
      features: this.features,
      ...(this.available ? {} : { reason: 'fake VMM switched off' }),
    };
  }

  async boot(spec: VmSpec, signal?: AbortSignal): Promise<VmHandle> {
    this.boots.push(spec);
    this.bootedAt.push(Date.now());
    if (this.bootDelayMs > 0) {
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(resolve, this.bootDelayMs);
        signal?.addEventListener('abort', () => {
          clearTimeout(t);
          reject(signal.reason);
        });
      });
    }
    if (this.failBoot) throw this.failBoot;
    const record: RunRecord = {
      vmId: spec.id,
      generation: spec.generation,
      kind: this.kind,
      pid: this.nextPid++,
      pidStartTime: 1,
      vmDir: spec.vmDir,
      controlSocket: path.join(spec.vmDir, 'control.sock'),
      consoleSocket: path.join(spec.vmDir, 'console.sock'),
    };
    await writeFile(record.controlSocket, '');
    const vm = new FakeVm(record);
    this.alive.set(record.pid, vm);
    return vm;
  }

  async pause(h: VmHandle): Promise<void> {
    this.pauses++;
    this.vm(h).paused = true;
  }

  async resume(h: VmHandle): Promise<void> {
    this.resumes++;
    this.vm(h).paused = false;
  }

  async shutdown(h: VmHandle, opts: ShutdownOptions): Promise<{ graceful: boolean }> {
    this.shutdowns.push(opts);
    this.end(h.record.pid, { reason: opts.graceful ? 'shutdown' : 'killed', code: null, signal: null });
    return { graceful: opts.graceful };
  }

  /** Writes a state file naming the VM and its pid; `failSnapshot` makes it fail instead. */
  /**
   * Writes a state file naming the VM and its pid; `failSnapshot` makes it fail instead. A Diff
   * builds on the previous snapshot of the same "process", as Firecracker's dirty tracking does.
   */
  async snapshot(h: VmHandle, dir: string, type: 'Full' | 'Diff'): Promise<SnapshotFiles> {
    const vm = this.vm(h);
    if (this.failSnapshot) throw this.failSnapshot;
    const statePath = path.join(dir, 'vmstate');
    await mkdir(dir, { recursive: true });
    await writeFile(statePath, JSON.stringify({ vmId: h.record.vmId, pid: h.record.pid, type }));
    this.snapshots.push({ vmId: h.record.vmId, dir, type });
    const files: SnapshotFiles = {
      statePath,
      type,
      ...(type === 'Diff' && vm.lastSnapshot ? { base: vm.lastSnapshot } : {}),
    };
    vm.lastSnapshot = files;
    return files;
  }

  /** Boots like `boot`, recording the snapshot it restores. */
  async restore(spec: VmSpec, snap: SnapshotFiles): Promise<VmHandle> {
    this.restores.push({ spec, snap });
    return this.boot(spec);
  }

  async adopt(record: RunRecord): Promise<VmHandle | null> {
    if (this.adoptError) throw this.adoptError;
    const running = this.alive.get(record.pid);
    if (!running) return null;
    const vm = new FakeVm(record);
    vm.paused = running.paused;
    this.alive.set(record.pid, vm);
    return vm;
  }

  async release(): Promise<void> {}

  /** Ends the VM's "process" as if it crashed (or the guest powered off). */
  exit(vmId: string, exit: VmExit): void {
    const vm = [...this.alive.values()].find((v) => v.record.vmId === vmId);
    if (!vm) throw new Error(`no live fake VM ${vmId}`);
    this.end(vm.record.pid, exit);
  }

  /** Forgets every "process", as a host reboot does. */
  rebootHost(): void {
    this.alive.clear();
  }

  isAlive(vmId: string): boolean {
    return [...this.alive.values()].some((v) => v.record.vmId === vmId);
  }

  private end(pid: number, exit: VmExit): void {
    const vm = this.alive.get(pid);
    if (!vm) return;
    this.alive.delete(pid);
    // Like a real driver: the VMM's runtime files go with it.
    rmSync(vm.record.controlSocket, { force: true });
    vm.end(exit);
  }

  private vm(h: VmHandle): FakeVm {
    const vm = this.alive.get(h.record.pid);
    if (!vm) throw new Error('fake VM is gone');
    return vm;
  }
}
