import type { DriverInfo, VmHandle, VmmDriver, VmmKind } from '../drivers/types';

/** A driver that can let go of a VM without stopping it (agent shutdown). */
interface ReleasingDriver extends VmmDriver {
  release(h: VmHandle): Promise<void>;
}

function canRelease(d: VmmDriver): d is ReleasingDriver {
  return typeof (d as Partial<ReleasingDriver>).release === 'function';
}

/**
 * The VMM drivers of this host, their probes (run once, cached) and the choice of VMM for a VM.
 */
export class DriverSet {
  private readonly probes = new Map<VmmKind, Promise<DriverInfo>>();
  private readonly byKind = new Map<VmmKind, VmmDriver>();

  constructor(drivers: readonly VmmDriver[]) {
    for (const d of drivers) this.byKind.set(d.kind, d);
  }

  get(kind: VmmKind): VmmDriver | undefined {
    return this.byKind.get(kind);
  }

  info(kind: VmmKind): Promise<DriverInfo> {
    let p = this.probes.get(kind);
    if (!p) {
      const driver = this.byKind.get(kind);
      p = driver
        ? driver.probe().catch(
            (err: unknown): DriverInfo => ({
              ...unavailable(kind),
              reason: `probe failed: ${err instanceof Error ? err.message : String(err)}`,
            }),
          )
        : Promise.resolve({ ...unavailable(kind), reason: 'no driver for it in this agent' });
      this.probes.set(kind, p);
    }
    return p;
  }

  /** Probe results of every driver this agent has. */
  all(): Promise<DriverInfo[]> {
    return Promise.all([...this.byKind.keys()].map((k) => this.info(k)));
  }

  /**
   * The VMM for a VM: the requested one (an error when this host cannot run it), else
   * Firecracker when it is usable (binary and KVM), else QEMU.
   */
  async choose(requested: VmmKind | null): Promise<VmmDriver> {
    if (requested) {
      const info = await this.info(requested);
      const problem = !info.available
        ? (info.reason ?? 'not available')
        : requested === 'firecracker' && !info.kvm
          ? 'Firecracker needs KVM, which this host cannot use'
          : null;
      if (problem) throw new Error(`VMM ${requested} is not available on this host: ${problem}`);
      return this.byKind.get(requested)!;
    }
    const fc = await this.info('firecracker');
    if (fc.available && fc.kvm) return this.byKind.get('firecracker')!;
    const qemu = await this.info('qemu');
    if (qemu.available) return this.byKind.get('qemu')!;
    throw new Error(
      `no VMM is available on this host (firecracker: ${fc.reason ?? (fc.kvm ? 'unavailable' : 'no KVM')}; qemu: ${qemu.reason ?? 'unavailable'})`,
    );
  }

  /** Stops watching a VM and leaves its VMM running. */
  async release(kind: VmmKind, h: VmHandle): Promise<void> {
    const d = this.byKind.get(kind);
    if (d && canRelease(d)) await d.release(h);
  }
}

function unavailable(kind: VmmKind): DriverInfo {
  return { kind, available: false, version: null, binary: null, kvm: false, features: [] };
}
