/** The host a VM is placed on, for the routes that reach its agent (console, exec, logs, stats). */
import { NqvmError } from '@nqvm/api';
import type { HostRow, VmRow } from '../db/schema';
import type { Hosts } from '../hosts/hosts';
import type { Vms } from './vms';

/**
 * The VM and its ready host: 404 VM_NOT_FOUND, 409 VM_INVALID_STATE while it is not placed, 503
 * HOST_UNAVAILABLE while its host is not ready.
 */
export async function placedHost(
  s: { vms: Vms; hosts: Hosts },
  vmId: string,
): Promise<{ vm: VmRow; host: HostRow }> {
  const vm = await s.vms.getRow(vmId);
  if (!vm.host_id)
    throw new NqvmError('VM_INVALID_STATE', 'the VM has not been placed on a host yet', {
      state: vm.state,
    });
  const host = await s.hosts.getRow(vm.host_id);
  if (host.status !== 'ready')
    throw new NqvmError('HOST_UNAVAILABLE', `the VM's host ${host.name} is ${host.status}`, {
      host_id: host.id,
    });
  return { vm, host };
}
