/**
 * The agent's interactive exec WebSocket, `GET /v1/vms/{id}/exec/ws` (signed by the manager
 * like every agent request): one command in the VM's guest, through its guest agent, in a pty
 * by default. Protocol: @nqvm/api exec (ExecWsQuery, ExecClientMessage, ExecServerMessage).
 */
import { ExecClientMessage, type ExecServerMessage, ExecWsQuery, NqvmError, parseExecArgv } from '@nqvm/api';
import type { WebSocket } from 'ws';
import { z } from 'zod';
import { type AgentApp, rawDataBuffer } from './console-ws';
import { errorMessage } from './logger';
import { isVmId } from './state-files';
import type { VmRegistry } from './vm-registry';

const VmIdParams = z.object({ id: z.string().refine(isVmId, 'a lowercase UUID') });
/** Output waiting for a slow client beyond this pauses nothing in the guest: the client is dropped. */
const MAX_BUFFERED_BYTES = 4 * 1024 * 1024;

function send(socket: WebSocket, message: ExecServerMessage): void {
  if (socket.readyState === socket.OPEN) socket.send(JSON.stringify(message));
}

function fail(socket: WebSocket, code: string, message: string): void {
  send(socket, { type: 'error', code, message });
  socket.close(1011, code.slice(0, 100));
}

/**
 * Registers the route (the WebSocket plugin is registered by the console's setup).
 *
 * @example
 * execWsRoutes(app, registry);
 */
export function execWsRoutes(app: AgentApp, vms: VmRegistry): void {
  app.route({
    method: 'GET',
    url: '/v1/vms/:id/exec/ws',
    schema: { params: VmIdParams, querystring: ExecWsQuery },
    preHandler: async (req) => {
      if (!vms.runtime(req.params.id)) throw new NqvmError('VM_NOT_FOUND', { id: req.params.id });
      if (!parseExecArgv(req.query.command))
        throw new NqvmError('VALIDATION_FAILED', 'command must be a JSON array of 1 to 256 strings');
    },
    handler: async () => {
      throw new NqvmError('UPGRADE_REQUIRED', 'this route speaks WebSocket: send an upgrade request');
    },
    wsHandler: (socket, req) => {
      const vm = vms.runtime(req.params.id);
      const argv = parseExecArgv(req.query.command);
      if (!vm || !argv) return fail(socket, 'VM_NOT_FOUND', 'the VM is gone');
      const q = req.query;
      const pending: Array<{ data: Buffer } | ExecClientMessage> = [];
      let session: Awaited<ReturnType<typeof vm.spawn>> | null = null;
      let closed = false;
      const apply = (m: { data: Buffer } | ExecClientMessage) => {
        if (!session) return void pending.push(m);
        if ('data' in m) session.write(m.data);
        else if (m.type === 'resize') session.resize(m.rows, m.cols);
        else if (m.type === 'eof') session.end();
        else session.kill(m.signal);
      };
      socket.on('message', (data, isBinary) => {
        const bytes = rawDataBuffer(data);
        if (isBinary) return apply({ data: bytes });
        let message: ExecClientMessage;
        try {
          message = ExecClientMessage.parse(JSON.parse(bytes.toString('utf8')));
        } catch {
          return fail(socket, 'PROTOCOL_ERROR', 'a text frame must be a valid exec control message');
        }
        apply(message);
      });
      socket.on('close', () => {
        closed = true;
        // The client went away: the command goes with it, as a terminal's does.
        session?.kill(9);
      });
      vm.spawn(argv, {
        tty: q.tty === '1' ? { rows: q.rows, cols: q.cols } : undefined,
        ...(q.user ? { user: q.user } : {}),
        ...(q.working_dir ? { cwd: q.working_dir } : {}),
      })
        .then((s) => {
          session = s;
          if (closed) return s.kill(9);
          const out = (chunk: Buffer) => {
            if (socket.bufferedAmount > MAX_BUFFERED_BYTES)
              return fail(socket, 'SLOW_CLIENT', 'the client does not read its output; dropped');
            socket.send(chunk, { binary: true });
          };
          s.on('started', (pid) => send(socket, { type: 'started', pid }));
          s.on('stdout', out);
          s.on('stderr', out);
          s.on('exit', (e) => {
            send(socket, { type: 'exit', exit_code: e.exitCode, signal: e.signal });
            socket.close(1000, 'exited');
          });
          s.on('error', (err) => fail(socket, err.code, err.message));
          for (const m of pending.splice(0)) apply(m);
        })
        .catch((err: unknown) =>
          fail(socket, err instanceof NqvmError ? err.code : 'GUEST_AGENT_UNAVAILABLE', errorMessage(err)),
        );
    },
  });
}
