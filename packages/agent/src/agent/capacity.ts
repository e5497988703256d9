import { statfs } from 'node:fs/promises';
import os from 'node:os';
import type { HostCapacity } from '@nqvm/api';
import { type HostInterface, isInterfaceName, MAX_HOST_INTERFACES } from '@nqvm/api/interface-names';
import type { z } from 'zod';
import type { AgentConfig } from '../config';
import type { DriverInfo } from '../drivers/types';
import type { HostNames } from '../network';
import type { Link } from '../network/iproute';

const MiB = 1024 * 1024;

function capped(value: number, cap: number | null): number {
  return cap === null ? value : Math.min(value, cap);
}

/**
 * The interfaces a network could name on this host (as its bridge or uplink), so the manager
 * knows where a bridged network is available: every link but loopback, nqvm's own (tagged, or
 * named like this agent's bridges and TAPs) and names nqvm would refuse anyway.
 *
 * @example
 * hostInterfaces(await listLinks(host), network.names); // [{ name: 'eth0', kind: 'ether', up: true }]
 */
export function hostInterfaces(links: ReadonlyMap<string, Link>, names: HostNames): HostInterface[] {
  const out: HostInterface[] = [];
  for (const l of links.values()) {
    const nqvms =
      l.alias?.startsWith('nqvm:') || names.bridgePattern.test(l.name) || names.tapPattern.test(l.name);
    if (l.linkType === 'loopback' || nqvms || !isInterfaceName(l.name)) continue;
    out.push({ name: l.name, kind: (l.kind ?? l.linkType ?? 'device').slice(0, 32), up: l.up });
  }
  return out.slice(0, MAX_HOST_INTERFACES);
}

/**
 * What this host offers the scheduler: its vCPUs, memory and the size of the file system
 * holding the state directory, each capped by the configuration, plus the VMM drivers found
 * and the interfaces networks can use.
 *
 * @example
 * const capacity = await measureCapacity('/var/lib/nqvm/agent', config.caps, await drivers.all(), []);
 */
export async function measureCapacity(
  stateDir: string,
  caps: AgentConfig['caps'],
  drivers: readonly DriverInfo[],
  interfaces: HostInterface[],
): Promise<z.infer<typeof HostCapacity>> {
  const fsInfo = await statfs(stateDir);
  return {
    vcpu: capped(os.availableParallelism(), caps.vcpu),
    mem_mib: capped(Math.floor(os.totalmem() / MiB), caps.memMib),
    disk_mib: capped(Math.floor((Number(fsInfo.blocks) * Number(fsInfo.bsize)) / MiB), caps.diskMib),
    // What is free now: a VM whose disk cannot fit is refused at create (INSUFFICIENT_STORAGE).
    disk_free_mib: capped(Math.floor((Number(fsInfo.bavail) * Number(fsInfo.bsize)) / MiB), caps.diskMib),
    kvm: drivers.some((d) => d.available && d.kvm),
    drivers: drivers.map((d) => ({
      kind: d.kind,
      available: d.available,
      version: d.version,
      kvm: d.kvm,
      features: d.features.slice(0, 64),
      ...(d.reason ? { reason: d.reason.slice(0, 1000) } : {}),
    })),
    interfaces,
  };
}
