/**
 * The console WebSocket for browsers and the CLI, `GET /api/v1/vms/{id}/console/ws` (and the
 * reference system's `/api/v1/vms/{id}/shell/ws`): authenticated on the upgrade request, then
 * relayed frame by frame to the agent of the VM's host, which runs the sessions (protocol:
 * @nqvm/api console-protocol).
 */
import websocket from '@fastify/websocket';
import {
  CONSOLE_KEEPALIVE_MS,
  CONSOLE_MAX_BUFFERED_BYTES,
  ConsoleCloseCode,
  type ConsoleCloseReason,
  ConsoleServerMessage,
  ConsoleWsQuery,
  closeConsoleSocket,
  consoleCloseCodeOf,
  endSessionsOnShutdown,
  IdParams,
  NqvmError,
  startConsoleKeepAlive,
} from '@nqvm/api';
import { WebSocket } from 'ws';
import { actorOf } from '../auth/principal';
import { roleAtLeast } from '../auth/roles';
import type { App } from '../http/app-type';
import type { Services } from '../services';
import { placedHost } from '../vms/vm-host';
import {
  AgentUpstreams,
  checkUpgradeOrigin,
  type EarlyFrame,
  forwardInput,
  type RelaySession,
  type RelaySessions,
  rawDataBuffer,
} from './ws-relay';

export interface ConsoleWsOptions {
  /** WebSocket ping interval towards clients and agents. Default 20 s. */
  keepAliveMs?: number;
}

/** Keystrokes and control messages are small; a larger frame is a misbehaving client. */
const MAX_CLIENT_FRAME_BYTES = 64 * 1024;
const SHUTDOWN_GRACE_MS = 1_000;

export const CONSOLE_WS_DESCRIPTION = `WebSocket (send an upgrade request; a plain GET answers 426 once the checks pass).

**Auth**: the session cookie (the Origin header must then be this manager's own origin) or \`Authorization: Bearer <token>\`. Viewers watch; operators and admins may write.

**Frames**: binary frames carry terminal bytes both ways (output: first up to \`scrollback\` bytes of recent output, then live; input: keystrokes, applied only from the writer). Text frames carry one JSON control message each.

**Client -> server**: \`{"type":"resize","cols":N,"rows":N}\` (from the writer: the size is kept and told to every client; a serial console has no size the guest can read), \`{"type":"take"}\` (become the writer; operator or admin), \`{"type":"release"}\`, \`{"type":"ping"}\`.

**Server -> client**: \`{"type":"hello","role":"writer"|"viewer","can_write":bool,"writer":name|null,"size":{cols,rows}|null}\` first; \`{"type":"writer","you":bool,"writer":name|null}\` on every change of writer; \`{"type":"resize","cols","rows"}\`; \`{"type":"denied","what":"input"|"take","message"}\` (input from a client that is not the writer is dropped and it is told once); \`{"type":"closed","reason","message"}\` before the server closes; \`{"type":"pong"}\`.

**Writer**: the first client that may write becomes the writer; another one takes over with \`take\` (the previous writer is told and watches), or by typing while nobody writes.

**Close codes**: 1000 the console ended (\`vm-stopped\`, \`vm-deleted\`, \`vm-not-running\`: reconnect once the VM runs again); 1001 the manager is shutting down; 1008 a malformed control message; 1011 internal error; 4000 the connection to the host agent broke (\`agent-restart\`): reconnect with backoff, the scrollback comes again; 4001 the client did not read its output (more than 1 MiB queued, \`slow-consumer\`). The server pings every 20 s and drops a peer that does not answer.

**Errors before the upgrade**: 401 no valid session or token; 403 a cookie session from another origin; 404 no such VM; 409 the VM is not placed on a host (or the host does not hold it yet); 503 its host is unreachable.`;

function sendClosed(socket: WebSocket, reason: ConsoleCloseReason, message: string): void {
  if (socket.readyState !== WebSocket.OPEN) return;
  socket.send(JSON.stringify({ type: 'closed', reason, message }));
  closeConsoleSocket(socket, consoleCloseCodeOf(reason), reason);
}

/** The `closed` reason in a text frame from the agent, if it is one. */
function closedReason(frame: Buffer): ConsoleCloseReason | null {
  if (!frame.includes('"closed"')) return null;
  try {
    const m = ConsoleServerMessage.safeParse(JSON.parse(frame.toString('utf8')));
    return m.success && m.data.type === 'closed' ? m.data.reason : null;
  } catch {
    return null;
  }
}

/**
 * One client's session: frames both ways between the client and the agent. Output to a client
 * that does not read is never queued past 1 MiB (the client is dropped, not the agent slowed);
 * input waits while the agent's side is backed up.
 */
class ConsoleRelay implements RelaySession {
  /** The agent sent `closed` already: the client heard the reason. */
  private agentReason: ConsoleCloseReason | null = null;

  constructor(
    readonly client: WebSocket,
    readonly agent: WebSocket,
    early: EarlyFrame[],
    keepAliveMs: number,
    onEnd: () => void,
  ) {
    for (const m of early) this.toClient(m.data, m.binary);
    agent.on('message', (data, binary) => this.toClient(rawDataBuffer(data), binary));
    agent.on('close', () => this.agentClosed());
    forwardInput(client, agent);
    client.on('close', () => {
      onEnd();
      closeConsoleSocket(agent, ConsoleCloseCode.ended, 'client-left');
    });
    startConsoleKeepAlive(client, keepAliveMs);
    startConsoleKeepAlive(agent, keepAliveMs);
    if (agent.readyState !== WebSocket.OPEN) this.agentClosed();
  }

  shutdown(): void {
    this.end('manager-shutdown', 'the manager is shutting down; reconnect');
  }

  /** Ends the session from the manager's side. */
  end(reason: ConsoleCloseReason, message: string): void {
    sendClosed(this.client, reason, message);
    closeConsoleSocket(this.agent, ConsoleCloseCode.ended, reason);
  }

  private toClient(data: Buffer, binary: boolean): void {
    if (this.client.readyState !== WebSocket.OPEN) return;
    if (this.client.bufferedAmount > CONSOLE_MAX_BUFFERED_BYTES) {
      this.end('slow-consumer', 'more than 1 MiB of output was waiting for this client');
      return;
    }
    if (!binary) this.agentReason = closedReason(data) ?? this.agentReason;
    this.client.send(data, { binary });
  }

  private agentClosed(): void {
    if (this.client.readyState !== WebSocket.OPEN) return;
    if (this.agentReason) {
      closeConsoleSocket(this.client, consoleCloseCodeOf(this.agentReason), this.agentReason);
      return;
    }
    sendClosed(this.client, 'agent-restart', 'the connection to the host agent broke; reconnect');
  }
}

/**
 * Registers @fastify/websocket. Call it before adding the auth hook: the plugin's own hook must
 * run first to close the socket of an upgrade that auth refuses. The sessions it answers (console
 * and exec) are ended when the manager shuts down.
 *
 * @example
 * const sessions = await registerConsoleWebSocket(app);
 * app.addHook('onRequest', authHook(s));
 * consoleWsRoutes(app, s, sessions);
 */
export async function registerConsoleWebSocket(app: App): Promise<RelaySessions> {
  const relays = new Set<RelaySession>();
  await app.register(websocket, {
    options: { maxPayload: MAX_CLIENT_FRAME_BYTES, perMessageDeflate: false },
    preClose: (done) =>
      endSessionsOnShutdown(
        [...relays],
        (r) => r.client,
        (r) => r.shutdown(),
        SHUTDOWN_GRACE_MS,
        done,
      ),
  });
  return { relays };
}

/**
 * The console routes: `/api/v1/vms/{id}/console/ws` and its alias `/api/v1/vms/{id}/shell/ws`.
 *
 * @example
 * consoleWsRoutes(app, services, sessions);
 */
export function consoleWsRoutes(
  app: App,
  s: Services,
  { relays }: RelaySessions,
  opts: ConsoleWsOptions = {},
): void {
  const keepAliveMs = opts.keepAliveMs ?? CONSOLE_KEEPALIVE_MS;
  const upstreams = new AgentUpstreams();

  for (const [url, summary] of [
    ['/api/v1/vms/:id/console/ws', "The VM's interactive serial console (WebSocket)"],
    ['/api/v1/vms/:id/shell/ws', 'Alias of /api/v1/vms/{id}/console/ws (the reference API path)'],
  ] as const) {
    app.route({
      method: 'GET',
      url,
      config: { access: 'viewer' },
      schema: {
        tags: ['vms'],
        summary,
        description: CONSOLE_WS_DESCRIPTION,
        params: IdParams,
        querystring: ConsoleWsQuery,
      },
      preHandler: async (req) => {
        const p = req.principal;
        checkUpgradeOrigin(req, 'console');
        const { vm, host } = await placedHost(s, req.params.id);
        if (!req.ws) return;
        const canWrite = p.kind === 'user' && roleAtLeast(p.role, 'operator');
        // The agent sends hello and the scrollback at once: kept until the client is upgraded.
        await upstreams.open(
          req,
          s.agents.connectConsole(host.address, vm.id, {
            write: canWrite,
            user: p.kind === 'user' ? p.username : 'unknown',
            scrollback: req.query.scrollback,
          }),
        );
      },
      handler: async () => {
        throw new NqvmError('UPGRADE_REQUIRED', 'this route speaks WebSocket: send an upgrade request');
      },
      wsHandler: (client, req) => {
        const up = upstreams.take(req);
        if (!up) {
          sendClosed(client, 'internal-error', 'no connection to the host agent');
          return;
        }
        const relay = new ConsoleRelay(client, up.socket, up.early, keepAliveMs, () => relays.delete(relay));
        relays.add(relay);
        void s.audit
          .record({
            actor: actorOf(req.principal),
            action: 'vm.console',
            target: { type: 'vm', id: req.params.id },
            statusCode: 101,
            ip: req.ip,
          })
          .catch((err: unknown) => req.log.error({ err }, 'could not write the audit record'));
      },
    });
  }
}
