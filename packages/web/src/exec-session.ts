/**
 * One interactive command in a container over `/api/v1/containers/{id}/exec/ws` (same origin,
 * session cookie): binary frames carry the terminal's bytes both ways, text frames the JSON
 * messages of exec.ts. Unlike the console it does not reconnect: a command that lost its
 * connection is gone, and the user runs it again.
 */
import type { ExecClientMessage, ExecServerMessage } from '@nqvm/api';
import { ApiError, request, withQuery } from './api';

export interface ExecSink {
  output(data: Uint8Array): void;
  started(pid: number): void;
  /** The command ended (exit code, or the signal that killed it). */
  exit(exitCode: number | null, signal: number | null): void;
  /** The session ended without an exit: refused, failed, or the connection broke. */
  error(message: string): void;
}

export interface ExecSession {
  send(data: string): void;
  resize(cols: number, rows: number): void;
  close(): void;
}

const FRAME_BYTES = 16 * 1024;

/**
 * Runs `argv` with a terminal of `cols` x `rows` in the container.
 *
 * @example
 * const s = openExecSession(c.id, { argv: ['/bin/sh'], cols: term.cols, rows: term.rows }, sink);
 * term.onData((d) => s.send(d));
 */
export function openExecSession(
  containerId: string,
  opts: { argv: string[]; cols: number; rows: number },
  sink: ExecSink,
): ExecSession {
  const path = withQuery(`/api/v1/containers/${encodeURIComponent(containerId)}/exec/ws`, {
    command: JSON.stringify(opts.argv),
    tty: 1,
    rows: Math.max(1, Math.min(1000, opts.rows)),
    cols: Math.max(1, Math.min(1000, opts.cols)),
  });
  const encoder = new TextEncoder();
  const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${path}`);
  ws.binaryType = 'arraybuffer';
  let opened = false;
  let ended = false;
  let closedByUs = false;
  let resizedEarly: { cols: number; rows: number } | null = null;

  const end = (fn: () => void) => {
    if (ended) return;
    ended = true;
    fn();
  };
  const sendJson = (m: ExecClientMessage) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(m));
  };

  /** A browser cannot read why an upgrade failed: the same URL without the upgrade says. */
  const diagnose = async () => {
    try {
      await request('GET', path);
      end(() => sink.error('the exec connection failed'));
    } catch (err) {
      const e = err instanceof ApiError ? err : new ApiError(0, 'NETWORK', String(err));
      end(() => sink.error(e.status === 426 ? 'the exec connection failed' : e.message));
    }
  };

  ws.onopen = () => {
    opened = true;
    if (resizedEarly) sendJson({ type: 'resize', ...resizedEarly });
  };
  ws.onmessage = (ev: MessageEvent<ArrayBuffer | string>) => {
    if (typeof ev.data !== 'string') {
      sink.output(new Uint8Array(ev.data));
      return;
    }
    let m: ExecServerMessage;
    try {
      m = JSON.parse(ev.data) as ExecServerMessage;
    } catch {
      return;
    }
    if (m.type === 'started') sink.started(m.pid);
    else if (m.type === 'exit') end(() => sink.exit(m.exit_code, m.signal));
    else if (m.type === 'error') end(() => sink.error(m.message));
  };
  ws.onclose = (ev) => {
    if (closedByUs || ended) return;
    if (!opened) void diagnose();
    else end(() => sink.error(ev.reason || 'the exec connection broke'));
  };

  return {
    send(data) {
      if (ws.readyState !== WebSocket.OPEN) return;
      const bytes = encoder.encode(data);
      for (let at = 0; at < bytes.length; at += FRAME_BYTES) ws.send(bytes.subarray(at, at + FRAME_BYTES));
    },
    resize(cols, rows) {
      if (ws.readyState === WebSocket.CONNECTING) resizedEarly = { cols, rows };
      else sendJson({ type: 'resize', cols, rows });
    },
    close() {
      closedByUs = true;
      if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN)
        ws.close(1000, 'closed by the user');
    },
  };
}
