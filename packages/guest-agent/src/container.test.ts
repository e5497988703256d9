/** The real agent in container mode (--no-halt), on this host over its --unix transport. */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureGuestAgent } from './build';
import { GuestAgentClient, type WorkloadExit } from './client';
import { type ContainerConfig, type LocalAgent, startLocalAgent } from './local-agent';
import type { LogRecord } from './protocol';

let binary: string;
const agents: LocalAgent[] = [];
const clients: GuestAgentClient[] = [];

async function container(config: ContainerConfig): Promise<LocalAgent> {
  const agent = await startLocalAgent({ mode: 'container', binary, container: config });
  agents.push(agent);
  return agent;
}

interface Recorder {
  client: GuestAgentClient;
  logs: LogRecord[];
  lines: () => [string, string][];
  started: Promise<{ pid: number; ts: number }>;
  exit: Promise<WorkloadExit>;
}

/** Connects and records every container event from the first one on. */
async function record(agent: LocalAgent): Promise<Recorder> {
  const client = await GuestAgentClient.connect(agent.endpoint);
  clients.push(client);
  const logs: LogRecord[] = [];
  client.on('log', (r) => logs.push(r));
  return {
    client,
    logs,
    lines: () => logs.map((r) => [r.stream, r.data.toString()]),
    started: new Promise((r) => client.once('workload-started', r)),
    exit: new Promise((r) => client.once('workload-exit', r)),
  };
}

async function until(what: string, check: () => boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

async function running(agent: LocalAgent): Promise<boolean> {
  return Promise.race([agent.exited.then(() => false), sleep(300).then(() => true)]);
}

beforeAll(async () => {
  binary = (await ensureGuestAgent()).path;
});

afterAll(async () => {
  for (const c of clients) c.close();
  await Promise.all(agents.map((a) => a.stop()));
});

describe('container mode', () => {
  it('streams the workload as timestamped log lines, reports its exit, and exits after EXIT_ACK', async () => {
    const before = Date.now();
    // Pauses between writes to different pipes: lines of one stream are always in order, across
    // stdout and stderr only in the order the agent reads them.
    const agent = await container({
      argv: [
        'sh',
        '-c',
        'sleep 0.5; echo out; sleep 0.1; echo err >&2; sleep 0.1; printf "A=$A\\npartial"; exit 3',
      ],
      env: { A: '1' },
    });
    const rec = await record(agent);
    const started = await rec.started;
    expect(started.pid).toBeGreaterThan(1);
    const exit = await rec.exit;
    expect(exit).toMatchObject({ kind: 'exited', value: 3 });
    expect(rec.lines()).toEqual([
      ['stdout', 'out'],
      ['stderr', 'err'],
      ['stdout', 'A=1'],
      ['stdout', 'partial'],
    ]);
    const stamps = [started.ts, ...rec.logs.map((r) => r.ts), exit.ts];
    expect(stamps).toEqual([...stamps].sort((a, b) => a - b));
    expect(stamps[0]).toBeGreaterThanOrEqual(before - 1000);
    expect(stamps.at(-1)).toBeLessThanOrEqual(Date.now() + 1000);
    expect(rec.logs[1]!.ts - rec.logs[0]!.ts).toBeGreaterThanOrEqual(90);

    // The console (the agent's stdout) shows the output raw, then the exit line.
    await until('the exit line', () => agent.stdout().includes('NQVM-CONTAINER-EXIT kind=exited value=3\n'));
    expect(agent.stdout()).toBe('out\nerr\nA=1\npartial\nNQVM-CONTAINER-EXIT kind=exited value=3\n');

    expect(await running(agent)).toBe(true); // waits for the host's acknowledgement
    rec.client.ackExit();
    expect(await agent.exited).toEqual({ code: 3, signal: null });
  });

  it('keeps the logs of a workload that ran before any host connected, and delivers them after AUTH', async () => {
    const agent = await container({ argv: ['sh', '-c', 'echo early; echo late >&2; exit 0'] });
    await until('the workload to end', () => agent.stdout().includes('NQVM-CONTAINER-EXIT'));
    const rec = await record(agent);
    expect(await rec.exit).toMatchObject({ kind: 'exited', value: 0 });
    await rec.started;
    expect(rec.lines()).toEqual([
      ['stdout', 'early'],
      ['stderr', 'late'],
    ]);
    rec.client.ackExit();
    expect(await agent.exited).toEqual({ code: 0, signal: null });
  });

  it('drops the oldest lines beyond 1 MiB while no host is there, and says so', async () => {
    const agent = await container({ argv: ['seq', '1', '200000'] });
    await until('the workload to end', () => agent.stdout().includes('NQVM-CONTAINER-EXIT'));
    const rec = await record(agent);
    await rec.exit;
    const [note, ...lines] = rec.lines();
    expect(note![0]).toBe('nqvm');
    const dropped = Number(/^nqvm: (\d+) bytes of logs dropped while the host was away$/.exec(note![1])![1]);
    const numbers = lines.map(([, l]) => Number(l));
    expect(numbers.at(-1)).toBe(200000);
    // What is left is the newest part, without holes, and the count is right.
    const first = numbers[0]!;
    expect(numbers).toEqual(Array.from({ length: 200000 - first + 1 }, (_, i) => first + i));
    const lostBytes = Array.from({ length: first - 1 }, (_, i) => String(i + 1).length).reduce(
      (a, b) => a + b,
      0,
    );
    expect(dropped).toBe(lostBytes);
    const kept = lines.reduce((sum, [, l]) => sum + 9 + 9 + l.length, 0) + (9 + 12) + (9 + 13);
    expect(kept).toBeLessThanOrEqual(1024 * 1024);
    rec.client.ackExit();
    expect((await agent.exited).code).toBe(0);
  });

  it('reports a workload that cannot start as unstartable, with the reason', async () => {
    const cases: [ContainerConfig, number, string][] = [
      [{ argv: ['/no/such/program'] }, 127, 'nqvm: exec failed: no such file: /no/such/program'],
      [{ argv: ['true'], user: 'nobody2' }, 127, 'nqvm: exec failed: no user nobody2'],
      [
        { argv: ['true'], cwd: '/no/such/dir' },
        127,
        'nqvm: exec failed: cwd /no/such/dir: No such file or directory',
      ],
      [{ argv: ['/etc/passwd'] }, 126, 'nqvm: exec failed: permission denied: /etc/passwd'],
    ];
    for (const [config, value, reason] of cases) {
      const agent = await container(config);
      const rec = await record(agent);
      expect(await rec.exit).toMatchObject({ kind: 'unstartable', value });
      expect(rec.lines()).toEqual([['nqvm', reason]]);
      await until('the exit line', () =>
        agent.stdout().includes(`NQVM-CONTAINER-EXIT kind=unstartable value=${value}`),
      );
      rec.client.ackExit();
      expect((await agent.exited).code).toBe(value);
    }
  });

  it('forwards SIGTERM to the workload', async () => {
    const agent = await container({
      argv: ['sh', '-c', 'trap "echo got-term; exit 7" TERM; echo ready; while :; do sleep 0.1; done'],
    });
    const rec = await record(agent);
    await until('ready', () => rec.lines().some(([, l]) => l === 'ready'));
    agent.process.kill('SIGTERM');
    expect(await rec.exit).toMatchObject({ kind: 'exited', value: 7 });
    expect(rec.lines()).toContainEqual(['stdout', 'got-term']);
    rec.client.ackExit();
    expect((await agent.exited).code).toBe(7);
  });

  it('STOP sends the signal, then SIGKILL after the timeout', async () => {
    const agent = await container({ argv: ['sh', '-c', 'trap "" TERM; echo ready; sleep 60'] });
    const rec = await record(agent);
    await until('ready', () => rec.lines().some(([, l]) => l === 'ready'));
    const stopAt = Date.now();
    rec.client.stopWorkload(15, 1);
    expect(await rec.exit).toMatchObject({ kind: 'signal', value: 9 });
    expect(Date.now() - stopAt).toBeGreaterThanOrEqual(900);
    await until('the exit line', () => agent.stdout().includes('NQVM-CONTAINER-EXIT kind=signal value=9'));
    rec.client.ackExit();
    expect((await agent.exited).code).toBe(128 + 9);
  });

  it('exec defaults to the container env, cwd and user', async () => {
    const agent = await container({
      argv: ['sleep', '60'],
      env: { A: 'from-container', PATH: '/usr/bin:/bin' },
      cwd: '/tmp',
      user: 'nobody',
    });
    const rec = await record(agent);
    await rec.started;
    const r = await rec.client.exec(['sh', '-c', 'echo "$A $PATH"; pwd; id -u; echo $HOME']);
    expect(r.stdout.toString()).toBe('from-container /usr/bin:/bin\n/tmp\n65534\n/nonexistent\n');
    const root = await rec.client.exec(['id', '-u'], { user: '0', cwd: '/' });
    expect(root.stdout.toString()).toBe('0\n');
    rec.client.stopWorkload(9, 0);
    expect(await rec.exit).toMatchObject({ kind: 'signal', value: 9 });
    rec.client.ackExit();
    await agent.exited;
  });

  it('a host disconnect does not touch the workload; a new host gets what it missed', async () => {
    const agent = await container({
      argv: ['sh', '-c', 'echo one; sleep 1; echo two; exit 0'],
    });
    const first = await record(agent);
    await until('one', () => first.lines().some(([, l]) => l === 'one'));
    first.client.close();
    await until('the workload to end', () => agent.stdout().includes('NQVM-CONTAINER-EXIT'));
    const second = await record(agent);
    expect(await second.exit).toMatchObject({ kind: 'exited', value: 0 });
    expect(second.lines()).toEqual([['stdout', 'two']]);
    second.client.ackExit();
    expect((await agent.exited).code).toBe(0);
  });

  it('without EXIT_ACK a connected host is waited for 5 s, then the agent ends anyway', async () => {
    const agent = await container({ argv: ['sh', '-c', 'sleep 1; exit 2'] });
    const rec = await record(agent);
    await rec.exit;
    const t = Date.now();
    expect(await agent.exited).toEqual({ code: 2, signal: null });
    expect(Date.now() - t).toBeGreaterThan(4000);
    expect(Date.now() - t).toBeLessThan(10_000);
    expect(agent.stderr()).toContain('no acknowledgement from the host');
  }, 20_000);
});
