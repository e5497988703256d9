/** The real agent in serve mode, on this host over its --unix transport (tests run as root). */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureGuestAgent } from './build';
import { type ExecSession, GuestAgentClient } from './client';
import { FrameSocket } from './frame-socket';
import { type LocalAgent, startLocalAgent } from './local-agent';
import {
  decodeError,
  decodeExit,
  decodeTlv,
  encodeExec,
  encodeFrame,
  FrameDecoder,
  FrameType,
} from './protocol';

let binary: string;
const agents: LocalAgent[] = [];
const clients: GuestAgentClient[] = [];

async function serve(): Promise<LocalAgent> {
  const agent = await startLocalAgent({ mode: 'serve', binary });
  agents.push(agent);
  return agent;
}

async function connect(agent: LocalAgent, token = agent.endpoint.token): Promise<GuestAgentClient> {
  const client = await GuestAgentClient.connect({ ...agent.endpoint, token });
  clients.push(client);
  return client;
}

/** Gone, or a zombie nobody reaped yet (a grandchild reparented to this host's init). */
function isRunning(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

async function waitGone(pid: number, ms = 10_000): Promise<boolean> {
  const until = Date.now() + ms;
  while (isRunning(pid)) {
    if (Date.now() > until) return false;
    await sleep(25);
  }
  return true;
}

function output(session: ExecSession): { text: () => string; waitFor: (s: string) => Promise<void> } {
  let text = '';
  session.on('stdout', (b) => {
    text += b.toString();
  });
  return {
    text: () => text,
    waitFor: async (s) => {
      const until = Date.now() + 10_000;
      while (!text.includes(s)) {
        if (Date.now() > until) throw new Error(`no "${s}" in ${JSON.stringify(text)}`);
        await sleep(10);
      }
    },
  };
}

beforeAll(async () => {
  binary = (await ensureGuestAgent()).path;
});

afterAll(async () => {
  for (const c of clients) c.close();
  await Promise.all(agents.map((a) => a.stop()));
});

describe('authentication', () => {
  let agent: LocalAgent;
  beforeAll(async () => {
    agent = await serve();
  });

  it('sends HELLO on accept and refuses everything before a good AUTH', async () => {
    const raw = await FrameSocket.connect(agent.endpoint.socketPath);
    const hello = await raw.next();
    expect(hello.type).toBe(FrameType.Hello);
    expect(decodeTlv(hello.payload).map((t) => t.value.toString())).toEqual(['1', 'serve']);

    raw.send(FrameType.Exec, 1, encodeExec({ argv: ['touch', join(agent.dir, 'ran')] }));
    const refused = await raw.next();
    expect([refused.type, refused.channel]).toEqual([FrameType.Error, 1]);
    expect(decodeError(refused.payload).code).toBe('AUTH_REQUIRED');

    raw.send(FrameType.Auth, 0, Buffer.from('x'.repeat(32)));
    const bad = await raw.next();
    expect(decodeError(bad.payload).code).toBe('AUTH_FAILED');
    raw.send(FrameType.Exec, 2, encodeExec({ argv: ['touch', join(agent.dir, 'ran')] }));
    expect(decodeError((await raw.next()).payload).code).toBe('AUTH_REQUIRED');
    raw.close();
    await sleep(200);
    expect(existsSync(join(agent.dir, 'ran'))).toBe(false);
  });

  it('rejects connect with a wrong token as AUTH_FAILED', async () => {
    await expect(
      GuestAgentClient.connect({ ...agent.endpoint, token: `${agent.endpoint.token}x` }),
    ).rejects.toMatchObject({ code: 'AUTH_FAILED' });
  });

  it('connects with the right token and reports the agent', async () => {
    const client = await connect(agent);
    expect(client.info).toMatchObject({ version: '1', mode: 'serve', pid: agent.process.pid });
    expect(client.info.uptimeS).toBeGreaterThan(0);
    expect(await client.ping()).toBeLessThan(5000);
  });

  it('SET_TOKEN: a new connection needs the new token, and the token file is rewritten', async () => {
    const own = await serve();
    const client = await connect(own);
    const next = randomBytes(20).toString('hex');
    await client.setToken(next);
    client.close();
    await expect(connect(own)).rejects.toMatchObject({ code: 'AUTH_FAILED' });
    const again = await connect(own, next);
    expect((await again.exec(['true'])).exitCode).toBe(0);
    expect((await readFile(own.tokenFile, 'utf8')).trim()).toBe(next);
    await expect(again.setToken('short')).rejects.toMatchObject({ code: 'BAD_REQUEST' });
  });

  it('a protocol error (oversize frame, unknown type) resets the session', async () => {
    for (const bad of [
      (() => {
        const b = Buffer.alloc(9);
        b.writeUInt32BE(5 + 65536 + 1, 0);
        return b;
      })(),
      encodeFrame(0x7f, 0),
    ]) {
      const raw = await FrameSocket.connect(agent.endpoint.socketPath);
      await raw.next();
      raw.send(FrameType.Auth, 0, Buffer.from(agent.endpoint.token));
      expect((await raw.next()).type).toBe(FrameType.AuthOk);
      raw.socket.write(bad);
      await raw.closed;
    }
    expect(agent.stderr()).toMatch(/protocol error: frame of 65542 bytes/);
    expect(agent.stderr()).toMatch(/protocol error: unknown frame type 0x7f/);
    const client = await connect(agent);
    expect((await client.exec(['true'])).exitCode).toBe(0);
  });
});

describe('exec', () => {
  let agent: LocalAgent;
  let client: GuestAgentClient;
  beforeAll(async () => {
    agent = await serve();
    client = await connect(agent);
  });

  it('runs a command with env and cwd, stdout and stderr apart', async () => {
    const r = await client.exec(['sh', '-c', 'echo "$A|$B"; pwd; echo oops >&2; echo "$PATH"'], {
      env: { A: '1', B: 'two words' },
      cwd: agent.dir,
    });
    expect(r.stdout.toString()).toBe(
      `1|two words\n${agent.dir}\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n`,
    );
    expect(r.stderr.toString()).toBe('oops\n');
    expect(r).toMatchObject({ exitCode: 0, signal: null, truncated: false });
  });

  it('defaults to / as root', async () => {
    const r = await client.exec(['sh', '-c', 'pwd; id -u']);
    expect(r.stdout.toString()).toBe('/\n0\n');
  });

  it('reports exit codes and deaths by signal', async () => {
    expect((await client.exec(['sh', '-c', 'exit 7'])).exitCode).toBe(7);
    expect((await client.exec(['false'])).exitCode).toBe(1);
    const killed = await client.exec(['sh', '-c', 'kill -9 $$']);
    expect(killed).toMatchObject({ exitCode: null, signal: 9 });
  });

  it('pipes stdin (larger than a pipe buffer) to cat', async () => {
    const input = randomBytes(300 * 1024);
    const r = await client.exec(['cat'], { stdin: input });
    expect(r.stdout.equals(input)).toBe(true);
    expect((await client.exec(['cat'], { stdin: 'hello' })).stdout.toString()).toBe('hello');
    // Without stdin, the command reads /dev/null.
    expect((await client.exec(['cat'], { timeoutMs: 5000 })).stdout.length).toBe(0);
  });

  it('rejects what cannot start with EXEC_FAILED and the reason', async () => {
    await expect(client.exec(['does-not-exist-anywhere'])).rejects.toMatchObject({
      code: 'EXEC_FAILED',
      message: 'no such file: does-not-exist-anywhere',
    });
    await expect(client.exec(['/nonexistent/bin/x'])).rejects.toMatchObject({ code: 'EXEC_FAILED' });
    await expect(client.exec(['true'], { user: 'nobody2' })).rejects.toMatchObject({
      code: 'EXEC_FAILED',
      message: 'no user nobody2',
    });
    await expect(client.exec(['true'], { cwd: '/nonexistent-dir' })).rejects.toMatchObject({
      code: 'EXEC_FAILED',
      message: 'cwd /nonexistent-dir: No such file or directory',
    });
    await writeFile(join(agent.dir, 'not-executable'), 'echo hi\n', { mode: 0o644 });
    await expect(client.exec([join(agent.dir, 'not-executable')], { user: 'nobody' })).rejects.toMatchObject({
      code: 'EXEC_FAILED',
    });
  });

  it('switches user by name and by uid, with HOME and USER from /etc/passwd', async () => {
    const byName = await client.exec(['sh', '-c', 'id -u; id -g; echo "$HOME $USER $LOGNAME"'], {
      user: 'nobody',
    });
    expect(byName.stdout.toString()).toBe('65534\n65534\n/nonexistent nobody nobody\n');
    const byUid = await client.exec(['id', '-u'], { user: '65534' });
    expect(byUid.stdout.toString()).toBe('65534\n');
    const withGroup = await client.exec(['sh', '-c', 'id -u; id -g'], { user: '65534:123' });
    expect(withGroup.stdout.toString()).toBe('65534\n123\n');
    const noEntry = await client.exec(['sh', '-c', 'id -u; id -g; echo $HOME'], { user: '4242' });
    expect(noEntry.stdout.toString()).toBe('4242\n0\n/\n');
    const env = await client.exec(['sh', '-c', 'echo $HOME'], { user: 'nobody', env: { HOME: '/x' } });
    expect(env.stdout.toString()).toBe('/x\n');
  });

  it('returns 5 MiB of output intact, and truncates at maxOutputBytes', async () => {
    const data = randomBytes(5 * 1024 * 1024);
    const file = join(agent.dir, 'big');
    await writeFile(file, data);
    const r = await client.exec(['cat', file], { maxOutputBytes: 8 * 1024 * 1024 });
    expect(r.truncated).toBe(false);
    expect(r.stdout.length).toBe(data.length);
    expect(createHash('sha256').update(r.stdout).digest('hex')).toBe(
      createHash('sha256').update(data).digest('hex'),
    );
    const cut = await client.exec(['cat', file], { maxOutputBytes: 1024 * 1024 });
    expect(cut.truncated).toBe(true);
    expect(cut.stdout.equals(data.subarray(0, 1024 * 1024))).toBe(true);
    expect(cut.exitCode).toBe(0);
  });

  it('runs several execs at once, each with its own output', async () => {
    const runs = Array.from({ length: 20 }, (_, i) =>
      client.exec(['sh', '-c', 'sleep 0.3; echo $N; echo e$N >&2'], { env: { N: String(i) } }),
    );
    const started = Date.now();
    const results = await Promise.all(runs);
    expect(results.map((r) => r.stdout.toString())).toEqual(results.map((_, i) => `${i}\n`));
    expect(results.map((r) => r.stderr.toString())).toEqual(results.map((_, i) => `e${i}\n`));
    expect(Date.now() - started).toBeLessThan(20 * 300);
  });

  it('a timeout SIGKILLs the whole process group', async () => {
    const pidFile = join(agent.dir, 'bg.pid');
    await expect(
      client.exec(['sh', '-c', `sleep 60 & echo $! > ${pidFile}; wait`], { timeoutMs: 1000 }),
    ).rejects.toMatchObject({ code: 'TIMEOUT' });
    const pid = Number(await readFile(pidFile, 'utf8'));
    expect(await waitGone(pid)).toBe(true);
  });

  it('an AbortSignal kills the command too', async () => {
    const ac = new AbortController();
    const run = expect(client.exec(['sleep', '60'], { signal: ac.signal })).rejects.toMatchObject({
      code: 'ABORTED',
    });
    setTimeout(() => ac.abort(), 200);
    await run;
  });

  it('gives up on output held open by a grandchild 2 s after the command exits', async () => {
    const started = Date.now();
    const r = await client.exec(['sh', '-c', 'echo before; sleep 30 & exit 4'], { timeoutMs: 15_000 });
    expect(r).toMatchObject({ exitCode: 4 });
    expect(r.stdout.toString()).toBe('before\n');
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('answers BUSY beyond 64 concurrent execs', async () => {
    const own = await connect(await serve());
    const sessions = Array.from({ length: 64 }, () => own.spawn(['sleep', '30'], { stdin: false }));
    await Promise.all(sessions.map((s) => new Promise((r) => s.once('started', r))));
    await expect(own.exec(['true'])).rejects.toMatchObject({ code: 'BUSY' });
    for (const s of sessions) s.on('error', () => {});
    own.close();
  });
});

describe('interactive sessions', () => {
  let agent: LocalAgent;
  let client: GuestAgentClient;
  beforeAll(async () => {
    agent = await serve();
    client = await connect(agent);
  });

  it('runs a shell in a pty: input, output, resize, exit', async () => {
    const sh = client.spawn(['sh'], { tty: { rows: 24, cols: 80 } });
    const out = output(sh);
    const exited = new Promise((resolve) => sh.on('exit', resolve));
    sh.on('error', (err) => {
      throw err;
    });
    sh.write('stty size; tty\n');
    await out.waitFor('24 80');
    await out.waitFor('/dev/pts/');
    sh.write('echo h""i\n');
    await out.waitFor('\nhi\r\n');
    sh.resize(40, 100);
    sh.write('stty size\n');
    await out.waitFor('40 100');
    sh.write('exit 5\n');
    expect(await exited).toEqual({ exitCode: 5, signal: null });
  });

  it('streams a piped session and closes its stdin on end()', async () => {
    const cat = client.spawn(['sh', '-c', 'cat; echo done >&2']);
    const out = output(cat);
    let err = '';
    cat.on('stderr', (b) => {
      err += b.toString();
    });
    const pid = await new Promise<number>((r) => cat.once('started', r));
    expect(pid).toBeGreaterThan(1);
    cat.write('abc');
    await out.waitFor('abc');
    cat.end();
    expect(await new Promise((r) => cat.on('exit', r))).toEqual({ exitCode: 0, signal: null });
    expect(err).toBe('done\n');
  });

  it('kill() signals the process group', async () => {
    const s = client.spawn(['sleep', '60'], { stdin: false });
    await new Promise((r) => s.once('started', r));
    s.kill(15);
    expect(await new Promise((r) => s.on('exit', r))).toEqual({ exitCode: null, signal: 15 });
  });

  it('a spawn that cannot start ends with an error event', async () => {
    const s = client.spawn(['no-such-command-here']);
    const err = await new Promise<Error>((r) => s.on('error', r));
    expect(err).toMatchObject({ code: 'EXEC_FAILED', message: 'no such file: no-such-command-here' });
  });
});

describe('sessions end with the transport', () => {
  it('a disconnect SIGKILLs the running exec children', async () => {
    const agent = await serve();
    const client = await connect(agent);
    const s = client.spawn(['sleep', '60'], { stdin: false });
    const pid = await new Promise<number>((r) => s.once('started', r));
    const ended = new Promise((r) => s.on('error', r));
    expect(isRunning(pid)).toBe(true);
    client.close();
    expect(await ended).toMatchObject({ code: 'CLOSED' });
    expect(await waitGone(pid)).toBe(true);
    // The agent itself carries on.
    expect((await (await connect(agent)).exec(['true'])).exitCode).toBe(0);
  });

  it('a new connection replaces the old one, whose execs are killed', async () => {
    const agent = await serve();
    const first = await connect(agent);
    const closed = new Promise((r) => first.once('close', r));
    const run = expect(first.exec(['sleep', '60'])).rejects.toMatchObject({ code: 'CLOSED' });
    await sleep(200);
    const second = await connect(agent);
    await run;
    expect(await closed).toMatchObject({ code: 'CLOSED' });
    expect((await second.exec(['echo', 'ok'])).stdout.toString()).toBe('ok\n');
  });

  it('a host that stops reading holds the command back (1 MiB per channel, no unbounded buffer)', async () => {
    const agent = await serve();
    const raw = await FrameSocket.connect(agent.endpoint.socketPath);
    await raw.next();
    raw.send(FrameType.Auth, 0, Buffer.from(agent.endpoint.token));
    await raw.next((f) => f.type === FrameType.AuthOk);
    const total = 64 * 1024 * 1024;
    raw.socket.pause();
    raw.send(FrameType.Exec, 1, encodeExec({ argv: ['head', '-c', String(total), '/dev/zero'] }));
    await sleep(1500);
    const status = await readFile(`/proc/${agent.process.pid}/status`, 'utf8');
    const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(status)![1]);
    expect(rssKiB).toBeLessThan(12 * 1024);

    let received = 0;
    const frames: number[] = [];
    raw.socket.removeAllListeners('data');
    const decoder = new FrameDecoder();
    const exit = new Promise<Buffer>((resolve) => {
      raw.socket.on('data', (chunk: Buffer) => {
        for (const f of decoder.push(chunk)) {
          frames.push(f.type);
          if (f.type === FrameType.Stdout) received += f.payload.length;
          if (f.type === FrameType.Exit) resolve(f.payload);
        }
      });
    });
    raw.socket.resume();
    expect(decodeExit(await exit)).toEqual({ kind: 'exited', value: 0 });
    expect(received).toBe(total);
    expect(frames[0]).toBe(FrameType.Started);
    raw.close();
  }, 60_000);
});
