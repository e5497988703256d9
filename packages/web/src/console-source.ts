/**
 * Where console bytes come from. Today: polling the tail endpoint every second. The interactive
 * WebSocket console will be another ConsoleSource (with send/resize); the terminal component
 * does not change.
 */
import { ApiError, request } from './api';

export type ConsoleStatus =
  | { state: 'connecting' }
  | { state: 'live' }
  | { state: 'waiting'; message: string }
  | { state: 'error'; message: string };

export interface ConsoleSink {
  /** Bytes to append to the terminal. */
  write(data: Uint8Array): void;
  /** The history changed beyond appending (agent restart, gap): clear before the next write. */
  reset(): void;
  status(s: ConsoleStatus): void;
}

export interface ConsoleSource {
  /** Whether keystrokes go to the guest (then send/resize exist). */
  readonly interactive: boolean;
  start(sink: ConsoleSink): () => void;
  send?(data: string): void;
  resize?(cols: number, rows: number): void;
}

// windows-1252 per WHATWG maps each byte to exactly one code point: string indices = byte offsets.
const bytesAsText = new TextDecoder('windows-1252');

/**
 * What to write to go from the previous tail to the next one: the appended bytes, or a reset
 * with the whole tail when the two windows do not overlap.
 */
export function tailDelta(prev: Uint8Array, next: Uint8Array): { reset: boolean; data: Uint8Array } | null {
  if (prev.length === 0) return next.length ? { reset: false, data: next } : null;
  const p = bytesAsText.decode(prev);
  const n = bytesAsText.decode(next);
  if (p === n) return null;
  if (n.startsWith(p)) return { reset: false, data: next.subarray(prev.length) };
  // The window slid: next = prev[d:] + appended. Find d through the end of prev, then verify.
  const k = Math.min(256, p.length);
  const needle = p.slice(p.length - k);
  for (let at = n.lastIndexOf(needle); at >= 0; at = at ? n.lastIndexOf(needle, at - 1) : -1) {
    const overlap = at + k;
    if (overlap <= p.length && p.endsWith(n.slice(0, overlap)))
      return { reset: false, data: next.subarray(overlap) };
  }
  return { reset: true, data: next };
}

export function pollingTailSource(
  vmId: string,
  opts: { tail?: number; intervalMs?: number } = {},
): ConsoleSource {
  const tail = opts.tail ?? 65_536;
  const interval = opts.intervalMs ?? 1000;
  return {
    interactive: false,
    start(sink) {
      let prev = new Uint8Array(0);
      let stopped = false;
      let timer: ReturnType<typeof setTimeout> | undefined;
      let ctl: AbortController | undefined;
      sink.status({ state: 'connecting' });

      const poll = async () => {
        if (stopped) return;
        if (document.hidden) {
          timer = setTimeout(poll, interval);
          return;
        }
        ctl = new AbortController();
        try {
          const res = await request('GET', `/api/v1/vms/${vmId}/console?tail=${tail}`, undefined, ctl.signal);
          const next = new Uint8Array(await res.arrayBuffer());
          if (stopped) return;
          const d = tailDelta(prev, next);
          prev = next;
          if (d?.reset) sink.reset();
          if (d?.data.length) sink.write(d.data);
          sink.status({ state: 'live' });
        } catch (err) {
          if (stopped || (err as Error).name === 'AbortError') return;
          const message = err instanceof Error ? err.message : String(err);
          if (err instanceof ApiError && err.status === 404) {
            sink.status({ state: 'error', message });
            return; // the VM is gone
          }
          sink.status(
            err instanceof ApiError && err.status === 409
              ? { state: 'waiting', message }
              : { state: 'error', message },
          );
        }
        if (!stopped) timer = setTimeout(poll, interval);
      };
      void poll();
      return () => {
        stopped = true;
        if (timer) clearTimeout(timer);
        ctl?.abort();
      };
    },
  };
}
