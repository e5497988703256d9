/** The client against fake guests (misbehaving on purpose), and through a fake Firecracker vsock muxer. */
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { GuestAgentClient } from './client';
import { FrameSocket } from './frame-socket';
import { type LocalAgent, startLocalAgent } from './local-agent';
import {
  decodeTlv,
  encodeError,
  encodeExit,
  encodeFrame,
  encodeInfo,
  encodeLog,
  encodeTlv,
  FrameType,
  type LogRecord,
} from './protocol';

const TOKEN = 'fake-guest-token-0123456789';
const INFO = { version: '1', mode: 'serve' as const, hostname: 'fake', uptimeS: 5, pid: 77 };
let dir: string;
const servers: net.Server[] = [];
const serverSockets = new Set<net.Socket>();

function track(server: net.Server): net.Server {
  servers.push(server);
  server.on('connection', (s) => {
    serverSockets.add(s);
    s.on('close', () => serverSockets.delete(s));
  });
  return server;
}
const clients: GuestAgentClient[] = [];

/** A unix socket whose connections are handed to `guest`; resolves to its path. */
async function fakeGuest(guest: (peer: FrameSocket) => void): Promise<string> {
  const path = join(dir, `guest-${servers.length}.sock`);
  const server = track(net.createServer((s) => guest(new FrameSocket(s))));
  await new Promise<void>((r) => server.listen(path, r));
  return path;
}

/** Answers HELLO at once and AUTH_OK to every good AUTH. */
function politeGuest(peer: FrameSocket, onFrame?: (type: number, channel: number, payload: Buffer) => void) {
  peer.send(FrameType.Hello, 0, encodeTlv([[1, '1']]));
  void (async () => {
    for (;;) {
      const f = await peer.next(() => true, 60_000).catch(() => undefined);
      if (!f) return;
      if (f.type === FrameType.Auth && f.payload.toString() === TOKEN)
        peer.send(FrameType.AuthOk, 0, encodeInfo(INFO));
      else if (f.type === FrameType.Auth)
        peer.send(FrameType.Error, 0, encodeError('AUTH_FAILED', 'wrong token'));
      else onFrame?.(f.type, f.channel, f.payload);
    }
  })();
}

async function connect(socketPath: string, timeoutMs?: number): Promise<GuestAgentClient> {
  const c = await GuestAgentClient.connect({ kind: 'unix', socketPath, token: TOKEN }, { timeoutMs });
  clients.push(c);
  return c;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'nqvm-guest-client-'));
});

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

afterAll(async () => {
  for (const s of serverSockets) s.destroy();
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  await rm(dir, { recursive: true, force: true });
});

describe('connect', () => {
  it('rejects UNREACHABLE when nothing listens', async () => {
    await expect(connect(join(dir, 'nobody-here.sock'))).rejects.toMatchObject({ code: 'UNREACHABLE' });
  });

  it('rejects TIMEOUT when the guest never answers', async () => {
    const path = await fakeGuest(() => {});
    const t = Date.now();
    await expect(connect(path, 300)).rejects.toMatchObject({ code: 'TIMEOUT' });
    expect(Date.now() - t).toBeLessThan(3000);
  });

  it('rejects AUTH_FAILED when the guest refuses the token', async () => {
    const path = await fakeGuest((peer) =>
      peer.next().then(() => peer.send(FrameType.Error, 0, encodeError('AUTH_FAILED', 'wrong token'))),
    );
    await expect(connect(path)).rejects.toMatchObject({ code: 'AUTH_FAILED' });
  });

  it('rejects ABORTED on its signal', async () => {
    const path = await fakeGuest(() => {});
    const ac = new AbortController();
    const pending = GuestAgentClient.connect(
      { kind: 'unix', socketPath: path, token: TOKEN },
      { signal: ac.signal },
    );
    ac.abort();
    await expect(pending).rejects.toMatchObject({ code: 'ABORTED' });
  });

  it('reads frames split at every byte', async () => {
    const path = await fakeGuest(async (peer) => {
      await peer.next((f) => f.type === FrameType.Auth);
      const stream = Buffer.concat([
        encodeFrame(FrameType.Hello, 0, encodeTlv([[1, '1']])),
        encodeFrame(FrameType.AuthOk, 0, encodeInfo(INFO)),
      ]);
      for (const b of stream) {
        peer.socket.write(Buffer.from([b]));
        await sleep(0);
      }
    });
    const client = await connect(path);
    expect(client.info).toEqual(INFO);
  });

  it('hands over logs that arrived in the same chunk as AUTH_OK to listeners attached after connect', async () => {
    const record: LogRecord = { ts: 1_700_000_000_000, stream: 'stdout', data: Buffer.from('first line') };
    const path = await fakeGuest(async (peer) => {
      await peer.next((f) => f.type === FrameType.Auth);
      // What a container guest does after AUTH_OK: the logs it kept follow at once.
      peer.socket.write(
        Buffer.concat([
          encodeFrame(FrameType.Hello, 0, encodeTlv([[1, '1']])),
          encodeFrame(FrameType.AuthOk, 0, encodeInfo(INFO)),
          encodeFrame(FrameType.Log, 0, encodeLog(record)),
          encodeFrame(FrameType.Log, 0, encodeLog({ ...record, stream: 'nqvm' })),
        ]),
      );
    });
    const client = await connect(path);
    const logs: LogRecord[] = [];
    client.on('log', (r) => logs.push(r));
    await sleep(100);
    expect(logs.map((l) => [l.stream, l.data.toString(), l.ts])).toEqual([
      ['stdout', 'first line', record.ts],
      ['nqvm', 'first line', record.ts],
    ]);
  });
});

describe('an established connection', () => {
  it('rejects every pending request with CLOSED when the transport ends', async () => {
    let peerSocket: FrameSocket | undefined;
    const path = await fakeGuest((peer) => {
      peerSocket = peer;
      politeGuest(peer);
    });
    const client = await connect(path);
    const closed = new Promise((r) => client.once('close', r));
    const run = expect(client.exec(['sleep', '60'])).rejects.toMatchObject({ code: 'CLOSED' });
    const session = client.spawn(['sh'], { tty: { rows: 2, cols: 2 } });
    const sessionEnd = new Promise((r) => session.on('error', r));
    const ping = expect(client.ping(60_000)).rejects.toMatchObject({ code: 'CLOSED' });
    await sleep(50);
    peerSocket!.close();
    await Promise.all([run, ping]);
    expect(await sessionEnd).toMatchObject({ code: 'CLOSED' });
    expect(await closed).toMatchObject({ code: 'CLOSED' });
    await expect(client.exec(['true'])).rejects.toMatchObject({ code: 'CLOSED' });
  });

  it('re-authenticates after HELLO, and fails what the old guest session held', async () => {
    let peer: FrameSocket | undefined;
    let auths = 0;
    const path = await fakeGuest((p) => {
      peer = p;
      p.send(FrameType.Hello, 0);
      void (async () => {
        for (;;) {
          const f = await p.next((x) => x.type === FrameType.Auth, 60_000).catch(() => undefined);
          if (!f) return;
          auths++;
          p.send(FrameType.AuthOk, 0, encodeInfo({ ...INFO, pid: 100 + auths }));
        }
      })();
    });
    const client = await connect(path);
    const hello = new Promise<void>((r) => client.once('hello', r));
    const run = expect(client.exec(['sleep', '60'])).rejects.toMatchObject({
      code: 'CLOSED',
      message: 'the guest agent restarted its session',
    });
    await sleep(50);
    const before = auths;
    peer!.send(FrameType.Hello, 0);
    await hello;
    await run;
    await sleep(50);
    expect(auths).toBe(before + 1);
    expect(client.info.pid).toBe(100 + auths);
  });

  it('closes with PROTOCOL on an oversize frame from the guest', async () => {
    let peer: FrameSocket | undefined;
    const path = await fakeGuest((p) => {
      peer = p;
      politeGuest(p);
    });
    const client = await connect(path);
    const closed = new Promise((r) => client.once('close', r));
    const bad = Buffer.alloc(9);
    bad.writeUInt32BE(1 << 20, 0);
    peer!.socket.write(bad);
    expect(await closed).toMatchObject({ code: 'PROTOCOL' });
  });

  it('an exec timeout SIGKILLs the command even when the guest is silent', async () => {
    const signals: number[] = [];
    const path = await fakeGuest((p) =>
      politeGuest(p, (type, _ch, payload) => {
        if (type === FrameType.Signal) signals.push(payload.readUInt32BE(0));
      }),
    );
    const client = await connect(path);
    await expect(client.exec(['sleep', '60'], { timeoutMs: 200 })).rejects.toMatchObject({ code: 'TIMEOUT' });
    await sleep(100);
    expect(signals).toEqual([9]);
  });

  it('exec collects output per channel and maps exits', async () => {
    const path = await fakeGuest((p) =>
      politeGuest(p, (type, ch, payload) => {
        if (type !== FrameType.Exec) return;
        const cmd = decodeTlv(payload)[0]!.value.toString();
        p.send(FrameType.Started, ch, Buffer.from([0, 0, 0, 9]));
        p.send(FrameType.Stdout, ch, Buffer.from(`out-${cmd}`));
        p.send(FrameType.Stderr, ch, Buffer.from(`err-${cmd}`));
        p.send(
          FrameType.Exit,
          ch,
          encodeExit(cmd === 'x' ? { kind: 'exited', value: 3 } : { kind: 'signal', value: 15 }),
        );
      }),
    );
    const client = await connect(path);
    const [a, b] = await Promise.all([client.exec(['x']), client.exec(['y'])]);
    expect(a).toMatchObject({ exitCode: 3, signal: null });
    expect([a.stdout.toString(), a.stderr.toString()]).toEqual(['out-x', 'err-x']);
    expect(b).toMatchObject({ exitCode: null, signal: 15 });
    expect(b.stdout.toString()).toBe('out-y');
  });

  it('stdin waits for the transport to drain instead of buffering it all', async () => {
    let peer: FrameSocket | undefined;
    const path = await fakeGuest((p) => {
      peer = p;
      politeGuest(p);
    });
    const client = await connect(path);
    peer!.socket.pause();
    void client.exec(['cat'], { stdin: Buffer.alloc(32 * 1024 * 1024) }).catch(() => {});
    await sleep(300);
    const socket = (client as unknown as { socket: net.Socket }).socket;
    expect(socket.writableLength).toBeLessThan(1024 * 1024);
  });
});

describe('Firecracker vsock handshake', () => {
  let agent: LocalAgent;
  beforeAll(async () => {
    agent = await startLocalAgent({ mode: 'serve' });
  });
  afterAll(() => agent.stop());

  /** Firecracker's host side of vsock: `CONNECT <port>\n`, `OK <host port>\n`, then bytes. */
  async function muxer(answer: (line: string) => string | undefined): Promise<string> {
    const path = join(dir, `vsock-${servers.length}.sock`);
    const server = net.createServer((host) => {
      host.once('data', (chunk) => {
        const line = chunk.toString().split('\n')[0]!;
        const reply = answer(line);
        if (reply === undefined) return host.destroy();
        host.write(reply);
        const guest = net.createConnection(agent.endpoint.socketPath);
        host.pipe(guest).pipe(host);
        guest.on('error', () => host.destroy());
        host.on('error', () => guest.destroy());
      });
    });
    track(server);
    await new Promise<void>((r) => server.listen(path, r));
    return path;
  }

  it('connects through CONNECT/OK and runs a command', async () => {
    let asked = '';
    const path = await muxer((line) => {
      asked = line;
      return 'OK 1073741824\n';
    });
    const client = await GuestAgentClient.connect({
      kind: 'vsock',
      socketPath: path,
      vsockPort: 52,
      token: agent.endpoint.token,
    });
    clients.push(client);
    expect(asked).toBe('CONNECT 52');
    expect((await client.exec(['echo', 'via vsock'])).stdout.toString()).toBe('via vsock\n');
  });

  it('rejects UNREACHABLE when the muxer refuses or answers something else', async () => {
    const ep = { kind: 'vsock' as const, vsockPort: 52, token: agent.endpoint.token };
    const closes = await muxer(() => undefined);
    await expect(GuestAgentClient.connect({ ...ep, socketPath: closes })).rejects.toMatchObject({
      code: 'UNREACHABLE',
    });
    const garbage = await muxer(() => 'NOPE\n');
    await expect(GuestAgentClient.connect({ ...ep, socketPath: garbage })).rejects.toMatchObject({
      code: 'UNREACHABLE',
      message: 'vsock handshake refused: "NOPE"',
    });
    await expect(
      GuestAgentClient.connect({ ...ep, socketPath: closes, vsockPort: undefined }),
    ).rejects.toMatchObject({ code: 'BAD_REQUEST' });
  });
});
