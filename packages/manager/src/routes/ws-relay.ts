/**
 * What the WebSocket routes relaying to an agent share (console, exec): the upgrade's origin
 * check, the agent connection opened while the upgrade request is checked and handed to the
 * socket handler with the frames it sent meanwhile, flow control of the client's input towards
 * the agent, and the set of sessions ended when the manager shuts down.
 */
import { NqvmError } from '@nqvm/api';
import type { FastifyRequest } from 'fastify';
import { type RawData, WebSocket } from 'ws';
import type { AgentWsConnection } from '../hosts/agent-client';

/** Input queued towards the agent beyond this pauses reading from the client. */
const INPUT_HIGH_WATER = 64 * 1024;

export interface EarlyFrame {
  data: Buffer;
  binary: boolean;
}

/** A relayed session; the manager ends it when it shuts down. */
export interface RelaySession {
  readonly client: WebSocket;
  shutdown(): void;
}

/** The relayed sessions of one manager (console and exec). */
export interface RelaySessions {
  readonly relays: Set<RelaySession>;
}

export function rawDataBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

function sameOrigin(req: FastifyRequest): boolean {
  const origin = req.headers.origin;
  if (!origin) return false;
  try {
    return new URL(origin).host === req.headers.host;
  } catch {
    return false;
  }
}

/**
 * Browsers send Origin on every WebSocket upgrade (not on a same-origin plain GET, which only
 * reads, like any GET): a cookie session's upgrade must come from this manager's origin.
 */
export function checkUpgradeOrigin(req: FastifyRequest, what: string): void {
  const p = req.principal;
  if (req.ws && p.kind === 'user' && p.via === 'session' && !sameOrigin(req))
    throw new NqvmError('CSRF_FAILED', `cross-origin ${what} connection refused`);
}

/**
 * Agent connections opened during an upgrade request, handed to its WebSocket handler.
 *
 * @example
 * await upstreams.open(req, s.agents.connectExec(host.address, vm.id, q)); // in preHandler
 * const up = upstreams.take(req); // in wsHandler
 */
export class AgentUpstreams {
  private readonly byRequest = new WeakMap<
    FastifyRequest,
    { socket: WebSocket; early: EarlyFrame[]; keep: (data: RawData, binary: boolean) => void }
  >();

  /**
   * Waits for the agent's socket to open; what it sends before the client is upgraded is kept.
   * The client may leave while the agent answers, or the upgrade may fail after this: the
   * agent's socket goes with the client's.
   */
  async open(req: FastifyRequest, conn: AgentWsConnection): Promise<void> {
    const early: EarlyFrame[] = [];
    const keep = (data: RawData, binary: boolean) => early.push({ data: rawDataBuffer(data), binary });
    conn.socket.on('message', keep);
    req.raw.socket.once('close', () => conn.socket.terminate());
    try {
      await conn.opened;
    } catch (err) {
      conn.socket.terminate();
      throw err;
    }
    this.byRequest.set(req, { socket: conn.socket, early, keep });
  }

  /** The agent's socket opened for `req` and the frames it sent so far; undefined when none was. */
  take(req: FastifyRequest): { socket: WebSocket; early: EarlyFrame[] } | undefined {
    const up = this.byRequest.get(req);
    this.byRequest.delete(req);
    if (!up) return undefined;
    up.socket.off('message', up.keep);
    return { socket: up.socket, early: up.early };
  }
}

/**
 * Forwards the client's frames to the agent as they are; while more than 64 KiB wait to go out,
 * the client is not read (its TCP window closes), so a fast typist never grows the queue.
 */
export function forwardInput(client: WebSocket, agent: WebSocket): void {
  let inFlight = 0;
  let paused = false;
  client.on('message', (raw, binary) => {
    if (agent.readyState !== WebSocket.OPEN) return;
    const data = rawDataBuffer(raw);
    inFlight += data.length;
    agent.send(data, { binary }, () => {
      inFlight -= data.length;
      if (paused && inFlight < INPUT_HIGH_WATER / 2) {
        paused = false;
        client.resume();
      }
    });
    if (!paused && inFlight > INPUT_HIGH_WATER) {
      paused = true;
      client.pause();
    }
  });
}
