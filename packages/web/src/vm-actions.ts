/** The lifecycle actions of a VM's page: when each is offered, and the request it sends. */
import type { ActionDef as GenericActionDef } from './actions-bar';
import { api } from './api';
import type { Vm, VmActionResponse, VmState } from './types';

export type VmActionKey = 'start' | 'stop' | 'force-stop' | 'pause' | 'resume' | 'reboot' | 'delete';

const STOPPABLE: VmState[] = ['creating', 'starting', 'running', 'pausing', 'paused', 'unknown', 'failed'];
/** Force stop stays offered during a graceful shutdown (a guest that ignores the power button). */
const FORCE_STOPPABLE: VmState[] = [...STOPPABLE, 'stopping'];
const LIVE: VmState[] = ['starting', 'running', 'pausing', 'paused', 'stopping'];

type ActionDef = GenericActionDef<VmActionKey, VmState, Vm>;

export const VM_ACTIONS: readonly ActionDef[] = [
  { key: 'start', label: 'Start', allowed: (s) => s === 'stopped' || s === 'failed' },
  {
    key: 'stop',
    label: 'Shut down',
    allowed: (s) => STOPPABLE.includes(s),
    confirm: (vm) =>
      `Shut down ${vm.name}? The guest is asked to power off; after 30 s it is stopped by force.`,
  },
  { key: 'pause', label: 'Pause', allowed: (s) => s === 'running' },
  { key: 'resume', label: 'Resume', allowed: (s) => s === 'paused' },
  {
    key: 'reboot',
    label: 'Reboot',
    allowed: (s) => s === 'running',
    confirm: (vm) => `Reboot ${vm.name}?`,
  },
  {
    key: 'force-stop',
    label: 'Force stop',
    allowed: (s) => FORCE_STOPPABLE.includes(s),
    confirm: (vm) =>
      `Stop ${vm.name} immediately? The guest gets no chance to shut down; unsaved data is lost.`,
    danger: true,
  },
  {
    key: 'delete',
    label: 'Delete',
    allowed: (s) => s !== 'deleting',
    confirm: (vm) =>
      LIVE.includes(vm.state)
        ? `${vm.name} is ${vm.state}: deleting stops it by force and removes its disks. This cannot be undone.`
        : `Delete ${vm.name} and its disks? This cannot be undone.`,
    danger: true,
  },
];

export function runVmAction(vm: Vm, key: VmActionKey): Promise<VmActionResponse> {
  const base = `/api/v1/vms/${vm.id}`;
  switch (key) {
    case 'delete':
      return api('DELETE', LIVE.includes(vm.state) ? `${base}?force=true` : base);
    case 'stop':
      return api('POST', `${base}/stop`, { force: false });
    case 'force-stop':
      return api('POST', `${base}/stop`, { force: true });
    default:
      return api('POST', `${base}/${key}`);
  }
}

/** Whether `key` is offered for a VM in `state`. */
export function vmActionAllowed(key: VmActionKey, state: VmState): boolean {
  return VM_ACTIONS.find((a) => a.key === key)?.allowed(state) ?? false;
}
