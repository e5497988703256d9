import path from 'node:path';
import type { AgentConfig } from '../config';
import { FirecrackerDriver } from '../drivers/firecracker/driver';
import { QemuDriver } from '../drivers/qemu/qemu-driver';
import type { VmmDriver } from '../drivers/types';
import type { AgentLogger } from './logger';

/**
 * The drivers of a real host: QEMU, and Firecracker (under the jailer when JAILER_BIN is set).
 * Firecracker trusts KVM only as far as QEMU's test boot proved it: a /dev/kvm that opens may
 * still be unable to run a guest (nested, paravirtualised KVM).
 */
export function defaultDrivers(config: AgentConfig, log: AgentLogger): VmmDriver[] {
  const qemu = new QemuDriver({
    qemuBinary: config.qemuBin ?? undefined,
    // Each VM's QEMU in its own cgroup; a bounded TCG cache keeps the memory limit tight.
    cgroups: 'detect',
    tcgTbSizeMib: 256,
    logger: log,
    ...(config.netns ? { netns: config.netns } : {}),
  });
  const firecracker = new FirecrackerDriver({
    firecrackerBin: config.firecrackerBin ?? 'firecracker',
    jailerBin: config.jailerBin ?? undefined,
    // On the VM disks' file system, so the jailer can hard-link them into each chroot.
    chrootBaseDir: path.join(config.stateDir, 'jailer'),
    // v1 or v2, as this host mounts them (the jailer supports both).
    cgroupLayout: 'detect',
    trackDirtyPages: config.fcTrackDirtyPages,
    probeKvm: async () => (await qemu.probe()).kvm,
    logger: log,
  });
  return [qemu, firecracker];
}
