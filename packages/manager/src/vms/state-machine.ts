/**
 * Which action is allowed from which state, and where it leads. Anything else answers
 * 409 VM_INVALID_STATE and changes nothing.
 */
import type { DesiredState, VmState } from '@nqvm/api';

export type VmAction = 'start' | 'stop' | 'pause' | 'resume' | 'reboot' | 'restore';

interface Transition {
  from: readonly VmState[];
  to: VmState;
  desired: DesiredState;
}

export const TRANSITIONS: Record<VmAction, Transition> = {
  start: { from: ['stopped', 'failed'], to: 'starting', desired: 'running' },
  // From stopping too: a force stop may follow a graceful one (a guest that ignores it).
  stop: {
    from: ['creating', 'starting', 'running', 'pausing', 'paused', 'stopping', 'unknown', 'failed'],
    to: 'stopping',
    desired: 'stopped',
  },
  pause: { from: ['running'], to: 'pausing', desired: 'paused' },
  resume: { from: ['paused'], to: 'starting', desired: 'running' },
  reboot: { from: ['running'], to: 'starting', desired: 'running' },
  // The host stops the VMM (if any) and boots the VM from a snapshot of it.
  restore: { from: ['running', 'paused', 'stopped', 'failed'], to: 'starting', desired: 'running' },
};

/** States in which a VM holds a VMM process: deleting one needs `force`. */
export const LIVE_STATES: ReadonlySet<VmState> = new Set([
  'starting',
  'running',
  'pausing',
  'paused',
  'stopping',
]);

export function canTransition(action: VmAction, from: VmState): boolean {
  return TRANSITIONS[action].from.includes(from);
}
