import { openFirecrackerConsole } from '../drivers/firecracker/console';
import type { VmHandle } from '../drivers/types';

/**
 * What the agent needs of a VM's serial console, whichever VMM holds it: the recent output.
 * QEMU handles carry a ConsoleHub the driver owns; Firecracker's console is opened from the run
 * record (a log file beside the VM).
 */
export interface VmConsole {
  /** The most recent output, at most `bytes`. Still answers after the VM ended. */
  tail(bytes: number): Promise<Buffer>;
  /** Lets go of the console (the VMM keeps it). */
  close(): Promise<void>;
}

/** Opens the console of a VM the agent just booted or adopted; null when it has none. */
export type ConsoleOpener = (handle: VmHandle) => Promise<VmConsole | null>;

interface HandleWithConsole extends VmHandle {
  console: { tail(bytes?: number): Buffer };
}

function hasConsole(h: VmHandle): h is HandleWithConsole {
  const c = (h as Partial<HandleWithConsole>).console;
  return typeof c?.tail === 'function';
}

/**
 * The console a handle carries (QEMU's ConsoleHub) or, for Firecracker, the one its run record
 * names. A handle's own console is closed by its driver with the VM, so `close()` here only
 * drops the agent's reference to it.
 */
export const openVmConsole: ConsoleOpener = async (h) => {
  if (hasConsole(h)) {
    const hub = h.console;
    return { tail: async (bytes) => hub.tail(bytes), close: async () => {} };
  }
  if (h.record.kind === 'firecracker') {
    const con = openFirecrackerConsole(h.record);
    return { tail: (bytes) => con.tail(bytes), close: () => con.close() };
  }
  return null;
};
