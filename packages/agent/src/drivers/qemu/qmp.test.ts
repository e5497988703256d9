import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { QmpClient, type QmpError, type QmpEvent } from './qmp';

type Handler = (
  cmd: { execute: string; arguments?: Record<string, unknown>; id?: unknown },
  s: Socket,
) => void;

/** A fake QEMU monitor: greets, then hands each command line to `handler`. */
class FakeQmpServer {
  readonly sockets: Socket[] = [];
  readonly commands: string[] = [];
  handler: Handler = (cmd, s) => reply(s, cmd.id, {});
  greet = true;
  private server!: Server;

  constructor(readonly path: string) {}

  async listen(): Promise<void> {
    this.server = createServer((s) => {
      this.sockets.push(s);
      if (this.greet)
        s.write(
          '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}, "capabilities": []}}\r\n',
        );
      let buf = '';
      s.setEncoding('utf8').on('data', (chunk: string) => {
        buf += chunk;
        for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          const cmd = JSON.parse(line);
          this.commands.push(cmd.execute);
          this.handler(cmd, s);
        }
      });
      s.on('error', () => {});
    });
    await new Promise<void>((resolve) => this.server.listen(this.path, resolve));
  }

  event(name: string, data?: Record<string, unknown>): void {
    for (const s of this.sockets) {
      s.write(`${JSON.stringify({ event: name, data, timestamp: { seconds: 1, microseconds: 2 } })}\r\n`);
    }
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

function reply(s: Socket, id: unknown, ret: unknown): void {
  s.write(`${JSON.stringify({ return: ret, id })}\r\n`);
}

describe('QmpClient', () => {
  let dir: string;
  let server: FakeQmpServer;
  let client: QmpClient | null = null;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nqvm-qmp-test-'));
    server = new FakeQmpServer(join(dir, 'qmp.sock'));
    await server.listen();
  });

  afterEach(async () => {
    client?.close();
    client = null;
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('negotiates capabilities after the greeting, then runs commands', async () => {
    server.handler = (cmd, s) =>
      reply(s, cmd.id, cmd.execute === 'query-status' ? { status: 'running' } : {});
    client = await QmpClient.connect(server.path);
    expect(server.commands).toEqual(['qmp_capabilities']);
    await expect(client.execute('query-status')).resolves.toEqual({ status: 'running' });
  });

  it('matches answers to commands by id, even out of order', async () => {
    const held: Array<{ id: unknown; name: string; s: Socket }> = [];
    server.handler = (cmd, s) => {
      if (cmd.execute === 'qmp_capabilities') return reply(s, cmd.id, {});
      held.push({ id: cmd.id, name: String(cmd.arguments?.name), s });
      if (held.length === 3) for (const h of held.reverse()) reply(h.s, h.id, h.name);
    };
    client = await QmpClient.connect(server.path);
    const results = await Promise.all(['a', 'b', 'c'].map((name) => client!.execute('echo', { name })));
    expect(results).toEqual(['a', 'b', 'c']);
  });

  it('rejects a failed command with its QMP error class', async () => {
    server.handler = (cmd, s) => {
      if (cmd.execute === 'qmp_capabilities') return reply(s, cmd.id, {});
      s.write(
        `${JSON.stringify({ error: { class: 'CommandNotFound', desc: 'The command nope has not been found' }, id: cmd.id })}\n`,
      );
    };
    client = await QmpClient.connect(server.path);
    const err = (await client.execute('nope').catch((e: unknown) => e)) as QmpError;
    expect(err.code).toBe('QMP_COMMAND_FAILED');
    expect(err.qmpClass).toBe('CommandNotFound');
    expect(err.message).toContain('has not been found');
  });

  it('delivers events to listeners and to waitForEvent', async () => {
    client = await QmpClient.connect(server.path);
    const seen: QmpEvent[] = [];
    const off = client.onEvent((e) => seen.push(e));
    const waited = client.waitForEvent('SHUTDOWN', 2_000, (e) => e.data?.reason === 'guest-shutdown');
    server.event('STOP');
    server.event('SHUTDOWN', { guest: true, reason: 'host-qmp-quit' });
    server.event('SHUTDOWN', { guest: true, reason: 'guest-shutdown' });
    await expect(waited).resolves.toMatchObject({ event: 'SHUTDOWN', data: { reason: 'guest-shutdown' } });
    expect(seen.map((e) => e.event)).toEqual(['STOP', 'SHUTDOWN', 'SHUTDOWN']);
    off();
    server.event('RESUME');
    await client.execute('query-status');
    expect(seen).toHaveLength(3);
  });

  it('times out a command that gets no answer and ignores the late answer', async () => {
    let late: (() => void) | null = null;
    server.handler = (cmd, s) => {
      if (cmd.execute === 'slow') late = () => reply(s, cmd.id, 'late');
      else reply(s, cmd.id, cmd.execute);
    };
    client = await QmpClient.connect(server.path);
    const err = (await client
      .execute('slow', undefined, { timeoutMs: 50 })
      .catch((e: unknown) => e)) as QmpError;
    expect(err.code).toBe('QMP_TIMEOUT');
    late!();
    await expect(client.execute('next')).resolves.toBe('next');
  });

  it('notices the socket closing: pending commands fail, closed resolves, new commands fail', async () => {
    server.handler = (cmd, s) => {
      if (cmd.execute === 'qmp_capabilities') reply(s, cmd.id, {});
      else s.destroy();
    };
    client = await QmpClient.connect(server.path);
    const waiting = client.waitForEvent('SHUTDOWN', 10_000);
    const err = (await client.execute('quit').catch((e: unknown) => e)) as QmpError;
    expect(err.code).toBe('QMP_CLOSED');
    await client.closed;
    expect(client.isOpen).toBe(false);
    await expect(waiting).rejects.toMatchObject({ code: 'QMP_CLOSED' });
    await expect(client.execute('query-status')).rejects.toMatchObject({ code: 'QMP_CLOSED' });
  });

  it('fails to connect to a missing socket, or one that never greets', async () => {
    await expect(QmpClient.connect(join(dir, 'missing.sock'))).rejects.toMatchObject({ code: 'QMP_CLOSED' });
    server.greet = false;
    await expect(QmpClient.connect(server.path, { timeoutMs: 100 })).rejects.toMatchObject({
      code: 'QMP_TIMEOUT',
    });
  });

  it('treats a line that is not JSON as a protocol error and disconnects', async () => {
    server.handler = (cmd, s) => {
      if (cmd.execute === 'qmp_capabilities') reply(s, cmd.id, {});
      else s.write('this is not json\n');
    };
    client = await QmpClient.connect(server.path);
    await expect(client.execute('query-status')).rejects.toMatchObject({ code: 'QMP_PROTOCOL' });
    await client.closed;
  });

  it('reassembles messages split across reads', async () => {
    server.handler = (cmd, s) => {
      const text = `${JSON.stringify({ return: { status: 'paused' }, id: cmd.id })}\r\n`;
      s.write(text.slice(0, 7));
      setTimeout(() => s.write(text.slice(7)), 20);
    };
    client = await QmpClient.connect(server.path);
    await expect(client.execute('query-status')).resolves.toEqual({ status: 'paused' });
  });
});
