/**
 * The contract every VMM driver (firecracker, qemu) implements. The agent's boot pipeline,
 * reconciler and console code talk only to this interface.
 */

export type VmmKind = 'firecracker' | 'qemu';

export interface DriverInfo {
  kind: VmmKind;
  /** Whether the driver's binary was found and answers. */
  available: boolean;
  /** e.g. "7.2.19" for QEMU, "1.13.1" for Firecracker. */
  version: string | null;
  /** Absolute path of the VMM binary in use. */
  binary: string | null;
  /** Hardware acceleration actually usable for an ordinary guest (probed, not assumed). */
  kvm: boolean;
  /** Named optional capabilities, e.g. "snapshot", "diff-snapshot", "mmds", "entropy", "vsock". */
  features: string[];
  /** Why the driver is unavailable, for the host report. */
  reason?: string;
}

export interface DiskSpec {
  /** Stable id, e.g. "root", "cidata", "vol-<uuid>". [a-z0-9-]{1,32} */
  id: string;
  /** Absolute host path of the file the VM writes to (never the shared image). */
  path: string;
  format: 'raw' | 'qcow2';
  readOnly: boolean;
  isRoot: boolean;
}

/** A VM NIC on a TAP made by the network module (`HostNetwork.ensureTap`, see `nicSpec()`). */
export interface NicSpec {
  id: string; // "eth0"
  /** Host TAP device name, derived and validated by the agent (<= 15 chars). */
  tap: string;
  /** `macFor(vmId, nicIndex)` unless the manager chose one: "02:xx:xx:xx:xx:xx". */
  mac: string;
}

export interface VmSpec {
  /** The VM's UUID; every host-side name derives from it. */
  id: string;
  /** Monotonic generation from the manager; commands are idempotent per (id, generation). */
  generation: number;
  vcpu: number;
  memMib: number;
  kernelPath: string;
  initrdPath?: string;
  bootArgs: string;
  disks: DiskSpec[];
  nics: NicSpec[];
  /** Per-VM folder owned by the agent: sockets, logs, console, pid files live here. */
  vmDir: string;
  /** Firecracker only: MMDS V2 data, configured before InstanceStart. */
  mmds?: Record<string, unknown>;
  /** Optional vsock (Firecracker) / virtio-serial (QEMU) host-to-guest channel. */
  vsockCid?: number;
}

/** What the agent persists to adopt a running VMM after its own restart. */
export interface RunRecord {
  vmId: string;
  generation: number;
  kind: VmmKind;
  pid: number;
  /** Process start time in clock ticks since boot (/proc/PID/stat field 22): guards pid reuse. */
  pidStartTime: number;
  vmDir: string;
  /** Control socket: QMP for QEMU, API socket for Firecracker. */
  controlSocket: string;
  /** Where the console holder exposes the serial console (a Unix socket path). */
  consoleSocket: string;
  /** Driver-specific extras (e.g. jailer chroot, holder pid). */
  extra?: Record<string, unknown>;
}

export interface VmHandle {
  readonly record: RunRecord;
  /** Resolves once when the VMM process is gone, with how it ended. */
  readonly exited: Promise<VmExit>;
  /**
   * Tells `listener` when the VMM pauses the guest by itself (QEMU: a disk write failed, e.g.
   * the host's disk is full) and when it runs again; a pause already in force is told at once.
   * Returns the unsubscribe function. Absent: the VMM never pauses by itself.
   */
  onVmmPause?(listener: (event: VmmPauseEvent) => void): () => void;
  /** How long each of the driver's own boot steps took (empty for an adopted VMM). */
  readonly bootSteps?: readonly StepTiming[];
}

/** One named step of a boot and how long it took. */
export interface StepTiming {
  name: string;
  ms: number;
}

/** The VMM paused the guest by itself (`reason` in words for the user), or it runs again. */
export type VmmPauseEvent =
  | { kind: 'paused'; reason: string }
  /** `note`: what resumed it when the driver did (space came back); null when a command did. */
  | { kind: 'resumed'; note: string | null };

export interface VmExit {
  /** "shutdown" when the guest powered off / was stopped by us, "crashed" otherwise. */
  reason: 'shutdown' | 'crashed' | 'killed';
  code: number | null;
  signal: string | null;
  message?: string;
}

export interface SnapshotFiles {
  /** Device/VM state file. */
  statePath: string;
  /** Guest memory file (Firecracker); QEMU may keep memory in statePath and leave this undefined. */
  memPath?: string;
  type: 'Full' | 'Diff';
  /**
   * Diff: the snapshot its memory builds on (the previous one of the same VMM run), down to a
   * Full one or a Diff without a base (which holds every page the run wrote). Restore merges
   * the chain.
   */
  base?: SnapshotFiles;
}

export interface ShutdownOptions {
  /** true: ask the guest (ACPI power button / Ctrl-Alt-Del) first, then kill after timeoutMs. */
  graceful: boolean;
  timeoutMs: number;
}

export interface VmmDriver {
  readonly kind: VmmKind;
  probe(): Promise<DriverInfo>;
  /** Configure and start; resolves once the VMM runs the guest and the console is held. */
  boot(spec: VmSpec, signal?: AbortSignal): Promise<VmHandle>;
  pause(h: VmHandle): Promise<void>;
  resume(h: VmHandle): Promise<void>;
  /** Resolves once the VMM process is gone. Reports whether the guest went down by itself. */
  shutdown(h: VmHandle, opts: ShutdownOptions): Promise<{ graceful: boolean }>;
  snapshot(h: VmHandle, dir: string, type: 'Full' | 'Diff'): Promise<SnapshotFiles>;
  restore(spec: VmSpec, snap: SnapshotFiles): Promise<VmHandle>;
  /** Re-attach to a VMM that outlived the agent; null if it is gone or the pid was reused. */
  adopt(record: RunRecord): Promise<VmHandle | null>;
  /** The drives' I/O counters since the VMM started (absent: this VMM does not count them). */
  diskUsage?(h: VmHandle): Promise<DiskUsage[]>;
}

/** Cumulative I/O counters of one drive of a running VM, as its VMM counts them. */
export interface DiskUsage {
  /** The drive's id in the VmSpec ("root", "cidata", "vol-<uuid>"). */
  drive: string;
  readBytes: number;
  writeBytes: number;
  readOps: number;
  writeOps: number;
}

/** A failure that names the pipeline step that failed. */
export class BootStepError extends Error {
  constructor(
    readonly step: string,
    override readonly cause: unknown,
  ) {
    super(`boot step "${step}" failed: ${cause instanceof Error ? cause.message : String(cause)}`);
    this.name = 'BootStepError';
  }
}
