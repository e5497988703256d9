/**
 * Where console bytes come from: the console WebSocket (interactive, live, reconnecting), or
 * polling the tail endpoint (read-only). The terminal component does not care which.
 */
import type { ConsoleCloseReason, ConsoleServerMessage } from '@nqvm/api';
import { ApiError, request } from './api';

export type ConsoleStatus =
  | { state: 'connecting' }
  | { state: 'live' }
  | { state: 'waiting'; message: string }
  | { state: 'error'; message: string };

/** This browser's part in a shared console session. */
export interface ConsoleSession {
  /** Whether keystrokes from here reach the guest now. */
  writer: boolean;
  /** Whether this user may write at all (operator or admin). */
  canWrite: boolean;
  /** Who writes now (a user name), null when nobody does. */
  writerName: string | null;
}

export interface ConsoleSink {
  /** Bytes to append to the terminal. */
  write(data: Uint8Array): void;
  /** The history changed beyond appending (agent restart, gap): clear before the next write. */
  reset(): void;
  status(s: ConsoleStatus): void;
  /** The session changed (interactive sources). */
  session?(s: ConsoleSession): void;
  /** Something the user should know, e.g. why typing had no effect. */
  notice?(message: string): void;
}

export interface ConsoleSource {
  /** Whether keystrokes go to the guest (then send/resize exist). */
  readonly interactive: boolean;
  start(sink: ConsoleSink): () => void;
  send?(data: string): void;
  resize?(cols: number, rows: number): void;
  /** Become the writer (interactive sources). */
  take?(): void;
  /** Connect again now, e.g. once a stopped VM runs again. */
  retry?(): void;
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

/** Close codes after which the console does not come back by itself (console-protocol.ts). */
const ENDED = 1000;
const PROTOCOL_ERROR = 1008;
/** An application ping when the connection was quiet this long; no answer within as long: reconnect. */
const QUIET_MS = 25_000;
const FRAME_BYTES = 16 * 1024;

export interface WebSocketSourceOptions {
  /** Bytes of scrollback asked for on every (re)connect. Default 256 KiB. */
  scrollback?: number;
  /** Reconnect backoff bounds. Defaults 500 ms and 15 s. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

/**
 * The interactive console over `/api/v1/vms/{id}/console/ws` (same origin, session cookie):
 * the scrollback on every connect, then live output; keystrokes and terminal size from here;
 * reconnects with backoff when the way to the VM breaks (agent restart, network), and waits
 * for `retry()` when the VM stopped.
 *
 * @example
 * const source = webSocketConsoleSource(vm.id);
 * const stop = source.start({ write: (d) => term.write(d), reset: () => term.reset(), status: setStatus });
 * term.onData((d) => source.send?.(d));
 */
export function webSocketConsoleSource(vmId: string, opts: WebSocketSourceOptions = {}): ConsoleSource {
  const scrollback = opts.scrollback ?? 256 * 1024;
  const minBackoff = opts.minBackoffMs ?? 500;
  const maxBackoff = opts.maxBackoffMs ?? 15_000;
  const path = `/api/v1/vms/${encodeURIComponent(vmId)}/console/ws?scrollback=${scrollback}`;
  const encoder = new TextEncoder();

  let sink: ConsoleSink | null = null;
  let ws: WebSocket | null = null;
  let stopped = true;
  let attempt = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let quietTimer: ReturnType<typeof setInterval> | undefined;
  let size: { cols: number; rows: number } | null = null;
  let session: ConsoleSession = { writer: false, canWrite: false, writerName: null };

  const sendJson = (m: object) => {
    if (ws?.readyState === WebSocket.OPEN) ws.send(JSON.stringify(m));
  };
  const setSession = (next: ConsoleSession) => {
    const becameWriter = next.writer && !session.writer;
    session = next;
    sink?.session?.(next);
    // The size counts only from the writer: tell it whenever this browser becomes the writer.
    if (becameWriter && size) sendJson({ type: 'resize', ...size });
  };

  const scheduleReconnect = (why: string) => {
    const delay = Math.min(maxBackoff, minBackoff * 2 ** attempt) * (0.8 + Math.random() * 0.4);
    attempt++;
    sink?.status({
      state: 'waiting',
      message: `${why}; reconnecting in ${Math.max(1, Math.round(delay / 1000))} s`,
    });
    timer = setTimeout(connect, delay);
  };

  /** A browser cannot read why an upgrade failed: the same URL without upgrade says. */
  const diagnose = async () => {
    try {
      await request('GET', path);
      scheduleReconnect('the console connection failed');
    } catch (err) {
      if (stopped) return;
      const e = err instanceof ApiError ? err : new ApiError(0, 'NETWORK', String(err));
      if (e.status === 426) scheduleReconnect('the console connection failed');
      else if (e.status === 409 || e.status === 503 || e.status === 0) scheduleReconnect(e.message);
      else sink?.status({ state: 'error', message: e.message });
    }
  };

  function connect() {
    if (stopped) return;
    timer = undefined;
    let opened = false;
    let closedBy: { reason: ConsoleCloseReason; message: string } | null = null;
    let lastHeard = Date.now();
    sink?.status({ state: 'connecting' });
    const socket = new WebSocket(
      `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${path}`,
    );
    socket.binaryType = 'arraybuffer';
    ws = socket;
    socket.onopen = () => {
      opened = true;
    };
    socket.onmessage = (ev: MessageEvent<ArrayBuffer | string>) => {
      lastHeard = Date.now();
      if (typeof ev.data !== 'string') {
        sink?.write(new Uint8Array(ev.data));
        return;
      }
      let m: ConsoleServerMessage;
      try {
        m = JSON.parse(ev.data) as ConsoleServerMessage;
      } catch {
        return;
      }
      switch (m.type) {
        case 'hello':
          attempt = 0;
          sink?.reset();
          sink?.status({ state: 'live' });
          session = { writer: false, canWrite: m.can_write, writerName: m.writer };
          setSession({ writer: m.role === 'writer', canWrite: m.can_write, writerName: m.writer });
          break;
        case 'writer':
          setSession({ ...session, writer: m.you, writerName: m.writer });
          break;
        case 'denied':
          sink?.notice?.(m.message);
          break;
        case 'closed':
          closedBy = { reason: m.reason, message: m.message };
          break;
      }
    };
    socket.onclose = (ev) => {
      if (ws === socket) ws = null;
      if (stopped) return;
      setSession({ writer: false, canWrite: session.canWrite, writerName: null });
      if (ev.code === ENDED) {
        sink?.status({ state: 'waiting', message: closedBy?.message ?? 'the console ended' });
      } else if (ev.code === PROTOCOL_ERROR) {
        sink?.status({ state: 'error', message: closedBy?.message ?? 'the console refused a message' });
      } else if (!opened) {
        void diagnose();
      } else {
        scheduleReconnect(closedBy?.message ?? 'the console connection broke');
      }
    };
    // Browsers answer the server's pings but cannot send their own: a quiet link is probed.
    clearInterval(quietTimer);
    quietTimer = setInterval(() => {
      if (socket.readyState !== WebSocket.OPEN) return;
      const quiet = Date.now() - lastHeard;
      if (quiet > 2 * QUIET_MS) socket.close(4000, 'no answer');
      else if (quiet > QUIET_MS) sendJson({ type: 'ping' });
    }, QUIET_MS / 2);
  }

  return {
    interactive: true,
    start(s) {
      sink = s;
      stopped = false;
      connect();
      return () => {
        stopped = true;
        sink = null;
        clearTimeout(timer);
        clearInterval(quietTimer);
        ws?.close(1000, 'closed by the user');
        ws = null;
      };
    },
    send(data) {
      if (ws?.readyState !== WebSocket.OPEN) return;
      // The server takes frames up to 64 KiB: a large paste goes in pieces.
      const bytes = encoder.encode(data);
      for (let at = 0; at < bytes.length; at += FRAME_BYTES) ws.send(bytes.subarray(at, at + FRAME_BYTES));
    },
    resize(cols, rows) {
      if (size?.cols === cols && size.rows === rows) return;
      size = { cols, rows };
      if (session.writer) sendJson({ type: 'resize', cols, rows });
    },
    take() {
      sendJson({ type: 'take' });
    },
    retry() {
      if (stopped || ws) return;
      clearTimeout(timer);
      attempt = 0;
      connect();
    },
  };
}
