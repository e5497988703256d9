/**
 * What one running VM uses on this host, read where the host keeps it: CPU time and resident
 * memory of its VMM process (/proc), its drives' I/O as the VMM counts it (QEMU's
 * `query-blockstats`), and its NICs' traffic on their TAPs (the kernel's counters).
 */

import type { RunningVmm } from '../agent/vm-runtime';
import type { DiskUsage, VmmKind } from '../drivers/types';
import { type InterfaceCounters, readNetDevOf } from '../host/net-dev';
import { processUsage } from '../host/proc';

/** A NIC's traffic from the guest's side: what the guest received is what its TAP sent. */
export interface NicUsage {
  nic: string;
  rxBytes: number;
  rxPackets: number;
  txBytes: number;
  txPackets: number;
}

export interface VmUsage {
  vmId: string;
  vmm: VmmKind;
  state: string;
  vcpu: number;
  memMib: number;
  cpuSeconds: number;
  rssBytes: number;
  /** null: this VMM does not count its drives' I/O (Firecracker), or it did not answer. */
  disks: DiskUsage[] | null;
  nics: NicUsage[];
}

/** The guest's view of a TAP's counters: the host side's receive is the guest's transmit. */
export function guestSide(nic: string, tap: InterfaceCounters): NicUsage {
  return {
    nic,
    rxBytes: tap.txBytes,
    rxPackets: tap.txPackets,
    txBytes: tap.rxBytes,
    txPackets: tap.rxPackets,
  };
}

/**
 * Measures a running VM; null when its VMM process is gone by now.
 *
 * @example
 * const taps = await network.tapsByVm();
 * const u = await measureVm(vm, taps.get(vm.vmId) ?? []); // { cpuSeconds: 12.3, rssBytes: 201326592, ... }
 */
export async function measureVm(
  vm: RunningVmm,
  taps: ReadonlyArray<{ nicIndex: number; tap: string }>,
): Promise<VmUsage | null> {
  const pid = vm.handle.record.pid;
  const [proc, disks, netDev] = await Promise.all([
    processUsage(pid),
    vm.driver?.diskUsage ? vm.driver.diskUsage(vm.handle).catch(() => null) : Promise.resolve(null),
    taps.length ? readNetDevOf(pid) : Promise.resolve(new Map<string, InterfaceCounters>()),
  ]);
  if (!proc) return null;
  const nics: NicUsage[] = [];
  for (const t of [...taps].sort((a, b) => a.nicIndex - b.nicIndex)) {
    const c = netDev.get(t.tap);
    if (c) nics.push(guestSide(`eth${t.nicIndex}`, c));
  }
  return {
    vmId: vm.vmId,
    vmm: vm.vmm,
    state: vm.state,
    vcpu: vm.vcpu,
    memMib: vm.memMib,
    cpuSeconds: proc.cpuSeconds,
    rssBytes: proc.rssBytes,
    disks,
    nics,
  };
}
