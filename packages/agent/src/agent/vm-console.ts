import { type ConsoleViewer, DEFAULT_MAX_VIEWER_PENDING_BYTES } from '../console/console-hub';
import type { RoomConsole } from '../console/console-room';
import { type FirecrackerConsole, openFirecrackerConsole } from '../drivers/firecracker/console';
import type { VmHandle } from '../drivers/types';

/**
 * What the agent needs of a VM's serial console, whichever VMM holds it: the recent output and,
 * for the console WebSocket, live output and input. QEMU handles carry a ConsoleHub the driver
 * owns; Firecracker's console is opened from the run record (a log file beside the VM).
 */
export interface VmConsole extends RoomConsole {
  /** Lets go of the console (the VMM keeps it). */
  close(): Promise<void>;
}

/** Opens the console of a VM the agent just booted or adopted; null when it has none. */
export type ConsoleOpener = (handle: VmHandle) => Promise<VmConsole | null>;

interface HandleWithConsole extends VmHandle {
  console: Partial<Pick<Required<RoomConsole>, 'subscribe' | 'write'>> & { tail(bytes?: number): Buffer };
}

function hasConsole(h: VmHandle): h is HandleWithConsole {
  const c = (h as Partial<HandleWithConsole>).console;
  return typeof c?.tail === 'function';
}

/** Input queued towards a Firecracker FIFO beyond this is dropped (the guest is not reading). */
const MAX_FIFO_PENDING_BYTES = 64 * 1024;

/**
 * A Firecracker console as a VmConsole: its log is tailed (from the scrollback on) for each
 * viewer, and input goes through the FIFO one write after the other.
 */
export function firecrackerVmConsole(con: FirecrackerConsole): VmConsole {
  let writing: Promise<void> = Promise.resolve();
  let pendingInput = 0;
  return {
    tail: (bytes) => con.tail(bytes),
    subscribe(viewer: ConsoleViewer, opts) {
      let closed = false;
      let off: (() => void) | null = null;
      const deliver = (chunk: Buffer) => {
        if (closed) return;
        try {
          if ((viewer.pendingBytes?.() ?? 0) > DEFAULT_MAX_VIEWER_PENDING_BYTES) return drop('slow');
          viewer.onData(chunk);
        } catch {
          drop('error');
        }
      };
      const drop = (reason: 'slow' | 'error') => {
        closed = true;
        off?.();
        viewer.onClose?.(reason);
      };
      // Output written between the tail and the watch starting is not shown (a few ms at most).
      void con.tail(opts.replayBytes ?? 0).then(
        (scrollback) => {
          if (closed) return;
          if (scrollback.length > 0) deliver(scrollback);
          if (!closed) off = con.onData(deliver);
        },
        () => drop('error'),
      );
      return () => {
        closed = true;
        off?.();
      };
    },
    write(data) {
      if (pendingInput > MAX_FIFO_PENDING_BYTES) return false;
      pendingInput += data.length;
      writing = writing
        .then(() => con.write(data))
        .catch(() => {})
        .finally(() => {
          pendingInput -= data.length;
        });
      return true;
    },
    close: () => con.close(),
  };
}

/**
 * The console a handle carries (QEMU's ConsoleHub) or, for Firecracker, the one its run record
 * names. A handle's own console is closed by its driver with the VM, so `close()` here only
 * drops the agent's reference to it.
 */
export const openVmConsole: ConsoleOpener = async (h) => {
  if (hasConsole(h)) {
    const hub = h.console;
    return {
      tail: async (bytes) => hub.tail(bytes),
      ...(hub.subscribe && hub.write
        ? { subscribe: hub.subscribe.bind(hub), write: hub.write.bind(hub) }
        : {}),
      close: async () => {},
    };
  }
  if (h.record.kind === 'firecracker') return firecrackerVmConsole(openFirecrackerConsole(h.record));
  return null;
};
