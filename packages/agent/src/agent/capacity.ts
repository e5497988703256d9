import { statfs } from 'node:fs/promises';
import os from 'node:os';
import type { HostCapacity } from '@nqvm/api';
import type { z } from 'zod';
import type { AgentConfig } from '../config';
import type { DriverInfo } from '../drivers/types';

const MiB = 1024 * 1024;

function capped(value: number, cap: number | null): number {
  return cap === null ? value : Math.min(value, cap);
}

/**
 * What this host offers the scheduler: its vCPUs, memory and the size of the file system
 * holding the state directory, each capped by the configuration, plus the VMM drivers found.
 *
 * @example
 * const capacity = await measureCapacity('/var/lib/nqvm/agent', config.caps, await drivers.all());
 */
export async function measureCapacity(
  stateDir: string,
  caps: AgentConfig['caps'],
  drivers: readonly DriverInfo[],
): Promise<z.infer<typeof HostCapacity>> {
  const fsInfo = await statfs(stateDir);
  return {
    vcpu: capped(os.availableParallelism(), caps.vcpu),
    mem_mib: capped(Math.floor(os.totalmem() / MiB), caps.memMib),
    disk_mib: capped(Math.floor((Number(fsInfo.blocks) * Number(fsInfo.bsize)) / MiB), caps.diskMib),
    kvm: drivers.some((d) => d.available && d.kvm),
    drivers: drivers.map((d) => ({
      kind: d.kind,
      available: d.available,
      version: d.version,
      kvm: d.kvm,
      features: d.features.slice(0, 64),
      ...(d.reason ? { reason: d.reason.slice(0, 1000) } : {}),
    })),
  };
}
