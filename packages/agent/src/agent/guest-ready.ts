/**
 * When a guest is up, as opposed to its VMM running: its guest agent said hello, or, for guests
 * without one, its serial console shows that boot finished (a login prompt, or cloud-init's
 * closing line). A Debian cloud image needs over a minute between the two under emulation.
 */
import type { ConsoleViewer } from '../console/console-hub';
import type { RoomConsole } from '../console/console-room';

/** How much console output is kept to match a line split across chunks. */
const WINDOW_BYTES = 4096;
/** Scrollback read when the watch starts (an adopted VM may have printed its prompt already). */
const REPLAY_BYTES = 16 * 1024;

/** A login prompt waiting for input (getty, busybox login), or cloud-init's last boot stage. */
const CONSOLE_READY = [/\S login: *$/, /Cloud-init v\. \S+ finished at /];

/**
 * Whether console output of the current boot says the guest is up.
 *
 * @example
 * consoleSaysReady('Debian GNU/Linux 12 web1 ttyS0\n\nweb1 login: '); // true
 */
export function consoleSaysReady(text: string): boolean {
  const clean = text.replace(/\r/g, '');
  return CONSOLE_READY.some((re) => re.test(clean));
}

/**
 * Watches `console` until it says the guest is up, then calls `onReady` once and stops. A fresh
 * boot is watched from now on (the scrollback is an earlier boot's); an adopted VM's scrollback
 * is read too. Output before the last kernel banner belongs to an earlier boot.
 *
 * @example
 * const stop = watchConsoleReady(vmConsole, false, () => markReady('console'));
 */
export function watchConsoleReady(console: RoomConsole, adopted: boolean, onReady: () => void): () => void {
  if (!console.subscribe) return () => {};
  let window = '';
  let done = false;
  let off: (() => void) | null = null;
  const stop = () => {
    done = true;
    off?.();
  };
  const viewer: ConsoleViewer = {
    onData(chunk) {
      if (done) return;
      window = (window + chunk.toString('latin1')).slice(-WINDOW_BYTES);
      const banner = window.lastIndexOf('Linux version ');
      if (banner >= 0) window = window.slice(banner);
      if (consoleSaysReady(window)) {
        stop();
        onReady();
      }
    },
  };
  off = console.subscribe(viewer, { replayBytes: adopted ? REPLAY_BYTES : 0 });
  if (done) off();
  return stop;
}
