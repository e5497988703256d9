/**
 * The agent's console WebSocket, `GET /v1/vms/{id}/console/ws`: one VM's serial console for the
 * manager, which relays it to browsers and the CLI (protocol: @nqvm/api console-protocol). The
 * upgrade is signed by the manager like every agent request, and the signed query says whether
 * the client may write and the name others see for it.
 */
import websocket from '@fastify/websocket';
import {
  AgentConsoleWsQuery,
  CONSOLE_KEEPALIVE_MS,
  ConsoleCloseCode,
  type ConsoleServerMessage,
  closeConsoleSocket,
  endSessionsOnShutdown,
  NqvmError,
  parseConsoleClientMessage,
  startConsoleKeepAlive,
} from '@nqvm/api';
import type {
  FastifyBaseLogger,
  FastifyInstance,
  RawReplyDefaultExpression,
  RawRequestDefaultExpression,
  RawServerDefault,
} from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { RawData, WebSocket } from 'ws';
import { z } from 'zod';
import type { ConsolePeer } from '../console/console-room';
import { isVmId } from './state-files';
import type { VmRegistry } from './vm-registry';

/** The agent's Fastify app, as its WebSocket routes see it. */
export type AgentApp = FastifyInstance<
  RawServerDefault,
  RawRequestDefaultExpression,
  RawReplyDefaultExpression,
  FastifyBaseLogger,
  ZodTypeProvider
>;

export interface ConsoleWsOptions {
  /** WebSocket ping interval; a peer that misses one pong is dropped. Default 20 s. */
  keepAliveMs?: number;
}

/** Keystrokes and control messages are small; a larger frame is a misbehaving client. */
const MAX_CLIENT_FRAME_BYTES = 64 * 1024;
/** Agent shutdown: how long sessions get to finish their close handshake. */
const SHUTDOWN_GRACE_MS = 1_000;

const VmIdParams = z.object({ id: z.string().refine(isVmId, 'a lowercase UUID') });

export function rawDataBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

function sendControl(socket: WebSocket, message: ConsoleServerMessage): void {
  socket.send(JSON.stringify(message));
}

/** The console sessions being served, closed with `agent-restart` when the agent stops. */
export interface ConsoleWsSessions {
  readonly sockets: Set<WebSocket>;
}

/**
 * Registers @fastify/websocket. Call it before adding the hooks that may refuse a request (the
 * signature check): the plugin's own hook must run first to close a refused upgrade's socket.
 * At agent shutdown every session is told `agent-restart` (close 4000), so clients reconnect to
 * the next agent and get the scrollback again.
 *
 * @example
 * const sessions = await registerConsoleWebSocket(app);
 * app.addHook('onRequest', checkSignature);
 * consoleWsRoutes(app, sessions, registry);
 */
export async function registerConsoleWebSocket(app: AgentApp): Promise<ConsoleWsSessions> {
  const sockets = new Set<WebSocket>();
  await app.register(websocket, {
    options: { maxPayload: MAX_CLIENT_FRAME_BYTES, perMessageDeflate: false },
    preClose: (done) =>
      endSessionsOnShutdown(
        [...sockets],
        (socket) => socket,
        (socket) => {
          sendControl(socket, {
            type: 'closed',
            reason: 'agent-restart',
            message: 'the host agent is restarting; reconnect',
          });
          closeConsoleSocket(socket, ConsoleCloseCode.reconnect, 'agent-restart', SHUTDOWN_GRACE_MS);
        },
        SHUTDOWN_GRACE_MS,
        done,
      ),
  });
  return { sockets };
}

/**
 * The console route, `GET /v1/vms/{id}/console/ws` (signed by the manager).
 *
 * @example
 * consoleWsRoutes(app, sessions, registry);
 */
export function consoleWsRoutes(
  app: AgentApp,
  { sockets }: ConsoleWsSessions,
  vms: VmRegistry,
  opts: ConsoleWsOptions = {},
): void {
  app.route({
    method: 'GET',
    url: '/v1/vms/:id/console/ws',
    schema: { params: VmIdParams, querystring: AgentConsoleWsQuery },
    preHandler: async (req) => {
      if (!vms.consoleRoom(req.params.id)) throw new NqvmError('VM_NOT_FOUND', { id: req.params.id });
    },
    handler: async () => {
      throw new NqvmError('UPGRADE_REQUIRED', 'this route speaks WebSocket: send an upgrade request');
    },
    wsHandler: (socket, req) => {
      const room = vms.consoleRoom(req.params.id);
      if (!room) {
        sendControl(socket, { type: 'closed', reason: 'vm-deleted', message: 'the VM was deleted' });
        closeConsoleSocket(socket, ConsoleCloseCode.ended, 'vm-deleted');
        return;
      }
      sockets.add(socket);
      const peer: ConsolePeer = {
        sendBytes: (chunk) => socket.send(chunk, { binary: true }),
        sendControl: (message) => sendControl(socket, message),
        bufferedBytes: () => socket.bufferedAmount,
        close: (code, reason) => closeConsoleSocket(socket, code, reason),
      };
      const member = room.join(peer, {
        name: req.query.user,
        canWrite: req.query.write === '1',
        scrollbackBytes: req.query.scrollback,
      });
      socket.on('message', (data, isBinary) => {
        if (isBinary) return member.input(rawDataBuffer(data));
        const message = parseConsoleClientMessage(rawDataBuffer(data).toString('utf8'));
        if (message === 'invalid')
          member.end('protocol-error', 'a text frame must be a valid control message');
        else if (message !== 'ignored') member.control(message);
      });
      socket.on('close', () => {
        sockets.delete(socket);
        member.leave();
      });
      startConsoleKeepAlive(socket, opts.keepAliveMs ?? CONSOLE_KEEPALIVE_MS);
    },
  });
}
