/**
 * The console WebSocket protocol, spoken by the manager's `GET /api/v1/vms/{id}/console/ws`
 * (browsers, the CLI) and by the agent's `GET /v1/vms/{id}/console/ws` (the manager, which
 * relays every frame unchanged in both directions).
 *
 * Frames
 * - Binary: terminal bytes. Server -> client: the console output, first the scrollback (up to
 *   `scrollback` bytes of recent output), then live output. Client -> server: keystrokes; only
 *   the writer's reach the guest.
 * - Text: one JSON control message per frame (ConsoleClientMessage, ConsoleServerMessage). A
 *   client ignores server messages of a type it does not know; the server ignores unknown client
 *   types, and closes with 1008 on a text frame that is not a valid message.
 *
 * Sessions
 * - The server first sends `hello` (the client's role, whether it may write, the writer, the last
 *   terminal size), then the scrollback, then live output. A client that reconnects gets the
 *   scrollback again: it should clear its terminal on `hello`.
 * - One writer at a time. The first client that may write (operator or admin) becomes the
 *   writer; later ones watch. A client that may write becomes the writer by sending `take`
 *   (the previous writer becomes a watcher and gets a `writer` message), or by typing while
 *   nobody is the writer. `release` gives the writer role up. Every change is sent to everyone
 *   as `writer`. Input from a client that is not the writer is dropped, and it gets one
 *   `denied` message (again only after its role changed).
 * - Clients with the viewer role never write: their `take` and input are refused with `denied`.
 * - `resize` from the writer sets the terminal size, which every client is told (`resize`).
 *   A serial console (QEMU's and Firecracker's 16550 UART) has no size the guest can read, so
 *   the size is kept and reported, not applied to the guest; a console that can carry it (a
 *   virtio console, a pty) would apply it. `resize` from another client is ignored.
 * - Keep-alive: the server sends a WebSocket ping every 20 s and drops a peer that has not
 *   answered the previous one. `{type:'ping'}` is an application-level check for clients that
 *   cannot see WebSocket pings (browsers): the server answers `{type:'pong'}`.
 * - A client with more than 1 MiB of output queued (it does not read) is closed with 4001
 *   (`slow-consumer`); it never slows the VM or the other clients.
 * - The end of a session is announced by a `closed` message with its reason, followed by a
 *   close frame with one of ConsoleCloseCode.
 */
import { z } from 'zod';

export const CONSOLE_KEEPALIVE_MS = 20_000;
/** Output queued towards one client beyond this ends its session (`slow-consumer`). */
export const CONSOLE_MAX_BUFFERED_BYTES = 1024 * 1024;
export const CONSOLE_SCROLLBACK_DEFAULT = 64 * 1024;
export const CONSOLE_SCROLLBACK_MAX = 1024 * 1024;

export const ConsoleRole = z.enum(['writer', 'viewer']);
export type ConsoleRole = z.infer<typeof ConsoleRole>;

const Cells = z.number().int().min(1).max(10_000);
export const TerminalSize = z.object({ cols: Cells, rows: Cells });
export type TerminalSize = z.infer<typeof TerminalSize>;

export const ConsoleClientMessage = z.discriminatedUnion('type', [
  z.object({ type: z.literal('resize'), cols: Cells, rows: Cells }),
  z.object({ type: z.literal('take') }),
  z.object({ type: z.literal('release') }),
  z.object({ type: z.literal('ping') }),
]);
export type ConsoleClientMessage = z.infer<typeof ConsoleClientMessage>;

export const ConsoleCloseReason = z.enum([
  /** The VM stopped (shut down, crashed, was stopped or is rebooting). */
  'vm-stopped',
  'vm-deleted',
  /** The VM is not running (yet): the scrollback of its last run was sent. */
  'vm-not-running',
  /** The agent restarted or the connection to it broke: reconnect. */
  'agent-restart',
  'manager-shutdown',
  'slow-consumer',
  'protocol-error',
  'internal-error',
]);
export type ConsoleCloseReason = z.infer<typeof ConsoleCloseReason>;

export const ConsoleServerMessage = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('hello'),
    role: ConsoleRole,
    can_write: z.boolean(),
    /** Display name of the writer; null when nobody writes. */
    writer: z.string().nullable(),
    /** The writer's last terminal size; null before any resize. */
    size: TerminalSize.nullable(),
  }),
  z.object({ type: z.literal('writer'), you: z.boolean(), writer: z.string().nullable() }),
  z.object({ type: z.literal('resize'), cols: Cells, rows: Cells }),
  z.object({
    type: z.literal('denied'),
    what: z.enum(['input', 'take']),
    message: z.string(),
  }),
  z.object({ type: z.literal('closed'), reason: ConsoleCloseReason, message: z.string() }),
  z.object({ type: z.literal('pong') }),
]);
export type ConsoleServerMessage = z.infer<typeof ConsoleServerMessage>;

/**
 * Close codes. A client reconnects (with backoff) after any close but 1000 and 1008; after 1000
 * it waits for the VM to run again (the web UI follows the VM's state, the CLI exits).
 */
export const ConsoleCloseCode = {
  /** The console ended: `vm-stopped`, `vm-deleted`, `vm-not-running`. */
  ended: 1000,
  /** The manager is shutting down. */
  goingAway: 1001,
  protocolError: 1008,
  internalError: 1011,
  /** The way to the console broke (`agent-restart`): reconnect. */
  reconnect: 4000,
  /** The client did not read its output (`slow-consumer`): it may reconnect. */
  tooSlow: 4001,
} as const;

/** Whether a client should reconnect after a close with this code (1005/1006: no close frame). */
export function consoleShouldReconnect(code: number): boolean {
  return code !== ConsoleCloseCode.ended && code !== ConsoleCloseCode.protocolError;
}

/** The close code that goes with a `closed` reason. */
export function consoleCloseCodeOf(reason: ConsoleCloseReason): number {
  switch (reason) {
    case 'vm-stopped':
    case 'vm-deleted':
    case 'vm-not-running':
      return ConsoleCloseCode.ended;
    case 'agent-restart':
      return ConsoleCloseCode.reconnect;
    case 'manager-shutdown':
      return ConsoleCloseCode.goingAway;
    case 'slow-consumer':
      return ConsoleCloseCode.tooSlow;
    case 'protocol-error':
      return ConsoleCloseCode.protocolError;
    case 'internal-error':
      return ConsoleCloseCode.internalError;
  }
}

/**
 * Reads a client's text frame: the message, `ignored` for a well-formed message of an unknown
 * type, or `invalid`.
 *
 * @example
 * const m = parseConsoleClientMessage('{"type":"resize","cols":120,"rows":40}');
 * if (typeof m === 'object') room.control(m);
 */
export function parseConsoleClientMessage(text: string): ConsoleClientMessage | 'ignored' | 'invalid' {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return 'invalid';
  }
  if (typeof value !== 'object' || value === null || typeof (value as { type?: unknown }).type !== 'string')
    return 'invalid';
  const parsed = ConsoleClientMessage.safeParse(value);
  if (parsed.success) return parsed.data;
  const known = ['resize', 'take', 'release', 'ping'];
  return known.includes((value as { type: string }).type) ? 'invalid' : 'ignored';
}

/** The query of the manager's console WebSocket. */
export const ConsoleWsQuery = z.object({
  /** Bytes of recent output sent first. */
  scrollback: z.coerce.number().int().min(0).max(CONSOLE_SCROLLBACK_MAX).default(CONSOLE_SCROLLBACK_DEFAULT),
});
export type ConsoleWsQuery = z.infer<typeof ConsoleWsQuery>;

/**
 * The query of the agent's console WebSocket, set by the manager and covered by its signature:
 * whether this client may write, and the name other clients see for it.
 */
export const AgentConsoleWsQuery = ConsoleWsQuery.extend({
  write: z.enum(['0', '1']).default('0'),
  user: z.string().min(1).max(100).default('manager'),
});
export type AgentConsoleWsQuery = z.infer<typeof AgentConsoleWsQuery>;

/** The smallest part of a WebSocket that keep-alive and closing need (`ws` sockets have it). */
export interface PingableSocket {
  ping(): void;
  terminate(): void;
  on(event: 'pong' | 'close', listener: () => void): unknown;
}

export interface ClosableSocket {
  readonly readyState: number;
  close(code: number, reason: string): void;
  terminate(): void;
  once(event: 'close', listener: () => void): unknown;
}

/**
 * Starts the closing handshake and cuts the connection if the peer has not finished it within
 * `graceMs` (a peer that does not read would otherwise hold it for ws's 30 s close timeout).
 */
export function closeConsoleSocket(
  socket: ClosableSocket,
  code: number,
  reason: string,
  graceMs = 2_000,
): void {
  const CLOSED = 3;
  if (socket.readyState === CLOSED) return;
  socket.close(code, reason);
  const timer = setTimeout(() => socket.terminate(), graceMs);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
}

/**
 * Pings `socket` every `intervalMs` and terminates it when the previous ping got no pong:
 * a dead peer (a laptop that slept, a host that vanished) is dropped within two intervals.
 * Answers the function that stops it (also stopped by the socket closing).
 *
 * @example
 * wss.on('connection', (ws) => startConsoleKeepAlive(ws));
 */
export function startConsoleKeepAlive(socket: PingableSocket, intervalMs = CONSOLE_KEEPALIVE_MS): () => void {
  let alive = true;
  socket.on('pong', () => {
    alive = true;
  });
  const timer = setInterval(() => {
    if (!alive) {
      clearInterval(timer);
      socket.terminate();
      return;
    }
    alive = false;
    try {
      socket.ping();
    } catch {
      // Closing already: 'close' stops the timer.
    }
  }, intervalMs);
  timer.unref();
  const stop = () => clearInterval(timer);
  socket.on('close', stop);
  return stop;
}

/**
 * Ends every session at shutdown and calls `done` once all their sockets closed, or after
 * `graceMs` at the latest (fastify's preClose for @fastify/websocket).
 *
 * @example
 * preClose: (done) => endSessionsOnShutdown([...relays], (r) => r.client, (r) => r.end(...), GRACE, done)
 */
export function endSessionsOnShutdown<T>(
  sessions: T[],
  socketOf: (session: T) => { once(event: 'close', listener: () => void): unknown },
  end: (session: T) => void,
  graceMs: number,
  done: () => void,
): void {
  let left = sessions.length;
  let finished = false;
  const finish = () => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    done();
  };
  const timer = setTimeout(finish, graceMs + 100);
  if (left === 0) {
    finish();
    return;
  }
  for (const session of sessions) {
    socketOf(session).once('close', () => {
      if (--left === 0) finish();
    });
    end(session);
  }
}
