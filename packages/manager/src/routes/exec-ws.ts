/**
 * The interactive exec WebSocket, `GET /api/v1/vms/{id}/exec/ws` and
 * `GET /api/v1/containers/{id}/exec/ws`: authenticated on the upgrade as the console is (operators
 * and admins only), then relayed frame by frame to the agent's `/v1/vms/{id}/exec/ws`, which runs
 * the command through the guest agent (protocol: @nqvm/api exec).
 */
import {
  CONSOLE_KEEPALIVE_MS,
  closeConsoleSocket,
  type ExecServerMessage,
  ExecWsQuery,
  IdParams,
  NqvmError,
  parseExecArgv,
  startConsoleKeepAlive,
} from '@nqvm/api';
import { WebSocket } from 'ws';
import { actorOf } from '../auth/principal';
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

/** Output waiting for a client that does not read, past this, drops the client (as the agent does). */
const MAX_BUFFERED_BYTES = 4 * 1024 * 1024;

export const EXEC_WS_DESCRIPTION = `WebSocket (send an upgrade request; a plain GET answers 426 once the checks pass). Runs one command in the guest through nqvm's guest agent (a host-to-guest channel; nothing listens on the guest's network).

**Auth**: the session cookie (the Origin header must then be this manager's own origin) or \`Authorization: Bearer <token>\`; operators and admins only.

**Query**: \`command\` the argv as a JSON array of strings (e.g. \`["/bin/sh"]\`), \`tty\` 1 (default: a pty, stdout and stderr one stream) or 0, \`rows\`/\`cols\` the pty's size, \`user\`, \`working_dir\` (a container's default to its own).

**Frames**: binary frames carry the command's input (client to server, up to 64 KiB each) and its output (server to client). Text frames carry one JSON message each. Client -> server: \`{"type":"resize","rows":N,"cols":N}\`, \`{"type":"eof"}\` (the end of the input; a tty ignores it), \`{"type":"signal","signal":N}\`. Server -> client: \`{"type":"started","pid":N}\`, \`{"type":"exit","exit_code":N|null,"signal":N|null}\` then close 1000, \`{"type":"error","code","message"}\` then close 1011 (also when the connection to the host agent breaks, the client does not read its output, or the manager shuts down). Leaving kills the command.

**Errors before the upgrade**: 400 a command that is not a JSON array of 1 to 256 strings; 401 no valid session or token; 403 a viewer, or a cookie session from another origin; 404 no such VM or container; 409 the VM is not running (or its host does not hold it); 503 its host is unreachable.`;

function send(socket: WebSocket, message: ExecServerMessage): void {
  if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

/** One client's command: frames both ways; the agent's ending (exit 1000, error 1011) is the client's. */
class ExecRelay implements RelaySession {
  constructor(
    readonly client: WebSocket,
    readonly agent: WebSocket,
    early: EarlyFrame[],
    keepAliveMs: number,
    onEnd: () => void,
  ) {
    for (const m of early) this.toClient(m.data, m.binary);
    agent.on('message', (data, binary) => this.toClient(rawDataBuffer(data), binary));
    agent.on('close', (code, reason) => this.agentClosed(code, reason.toString()));
    forwardInput(client, agent);
    client.on('close', () => {
      onEnd();
      closeConsoleSocket(agent, 1000, 'client-left');
    });
    startConsoleKeepAlive(client, keepAliveMs);
    startConsoleKeepAlive(agent, keepAliveMs);
    if (agent.readyState !== WebSocket.OPEN) this.agentClosed(1006, '');
  }

  shutdown(): void {
    this.fail('MANAGER_SHUTDOWN', 'the manager is shutting down; the command was ended');
    closeConsoleSocket(this.agent, 1000, 'manager-shutdown');
  }

  private toClient(data: Buffer, binary: boolean): void {
    if (this.client.readyState !== WebSocket.OPEN) return;
    if (this.client.bufferedAmount > MAX_BUFFERED_BYTES) {
      this.fail('SLOW_CLIENT', 'the client does not read its output; dropped');
      closeConsoleSocket(this.agent, 1000, 'slow-client');
      return;
    }
    this.client.send(data, { binary });
  }

  private agentClosed(code: number, reason: string): void {
    if (this.client.readyState !== WebSocket.OPEN) return;
    // The agent said `exit` or `error` before these; the client has heard why.
    if (code === 1000 || code === 1011) closeConsoleSocket(this.client, code, reason.slice(0, 120));
    else this.fail('HOST_UNAVAILABLE', 'the connection to the host agent broke; the command may still run');
  }

  private fail(code: string, message: string): void {
    send(this.client, { type: 'error', code, message });
    closeConsoleSocket(this.client, 1011, code);
  }
}

export interface ExecWsOptions {
  /** WebSocket ping interval towards clients and agents. Default 20 s. */
  keepAliveMs?: number;
}

/**
 * The exec routes of VMs and containers (call after registerConsoleWebSocket, as the console's).
 *
 * @example
 * execWsRoutes(app, services, sessions);
 */
export function execWsRoutes(
  app: App,
  s: Services,
  { relays }: RelaySessions,
  opts: ExecWsOptions = {},
): void {
  const keepAliveMs = opts.keepAliveMs ?? CONSOLE_KEEPALIVE_MS;
  const upstreams = new AgentUpstreams();

  const routes = [
    {
      url: '/api/v1/vms/:id/exec/ws',
      tags: ['vms'],
      summary: 'Run a command interactively in a running VM (WebSocket)',
      audit: { action: 'vm.exec', type: 'vm' },
      defaults: async (_id: string) => ({}),
    },
    {
      url: '/api/v1/containers/:id/exec/ws',
      tags: ['containers'],
      summary: "Run a command interactively in a running container's environment (WebSocket)",
      audit: { action: 'container.exec', type: 'container' },
      defaults: (id: string) => s.containers.execDefaults(id),
    },
  ];
  for (const r of routes) {
    app.route({
      method: 'GET',
      url: r.url,
      config: { access: 'operator' },
      schema: {
        tags: r.tags,
        summary: r.summary,
        description: EXEC_WS_DESCRIPTION,
        params: IdParams,
        querystring: ExecWsQuery,
      },
      preHandler: async (req) => {
        checkUpgradeOrigin(req, 'exec');
        const argv = parseExecArgv(req.query.command);
        if (!argv)
          throw new NqvmError(
            'VALIDATION_FAILED',
            'command must be the argv as a JSON array of 1 to 256 strings',
            {
              fields: [{ path: 'querystring.command', message: 'a JSON array of 1 to 256 strings' }],
            },
          );
        const defaults: { user?: string; working_dir?: string } = await r.defaults(req.params.id);
        const { vm, host } = await placedHost(s, req.params.id);
        if (vm.state !== 'running')
          throw new NqvmError('VM_INVALID_STATE', `commands run in running VMs only (it is ${vm.state})`, {
            state: vm.state,
          });
        if (!req.ws) return;
        const q = req.query;
        await upstreams.open(
          req,
          s.agents.connectExec(host.address, vm.id, {
            argv,
            tty: q.tty === '1',
            rows: q.rows,
            cols: q.cols,
            user: q.user ?? defaults.user,
            working_dir: q.working_dir ?? defaults.working_dir,
          }),
        );
      },
      handler: async () => {
        throw new NqvmError('UPGRADE_REQUIRED', 'this route speaks WebSocket: send an upgrade request');
      },
      wsHandler: (client, req) => {
        const up = upstreams.take(req);
        if (!up) {
          send(client, {
            type: 'error',
            code: 'HOST_UNAVAILABLE',
            message: 'no connection to the host agent',
          });
          closeConsoleSocket(client, 1011, 'HOST_UNAVAILABLE');
          return;
        }
        const relay = new ExecRelay(client, up.socket, up.early, keepAliveMs, () => relays.delete(relay));
        relays.add(relay);
        void s.audit
          .record({
            actor: actorOf(req.principal),
            action: r.audit.action,
            target: { type: r.audit.type, id: req.params.id },
            statusCode: 101,
            ip: req.ip,
          })
          .catch((err: unknown) => req.log.error({ err }, 'could not write the audit record'));
      },
    });
  }
}
