/**
 * Runs the guest agent on this host, on its `--unix` test transport: for tests and benchmarks
 * that need a real agent but no VM. Container mode always runs with `--no-halt` (without it the
 * agent would power the machine off when the workload ends).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ensureGuestAgent } from './build';
import type { GuestAgentEndpoint } from './client';

export interface ContainerConfig {
  argv: string[];
  env?: Record<string, string>;
  cwd?: string;
  user?: string;
}

export interface LocalAgentOptions {
  mode: 'serve' | 'container';
  /** Required in container mode. */
  container?: ContainerConfig;
  /** Default: ensureGuestAgent()'s. */
  binary?: string;
  /** Default: a random 32-character token. */
  token?: string;
}

export interface LocalAgent {
  endpoint: GuestAgentEndpoint;
  /** Holds the socket, the token file and the container config; removed by stop(). */
  dir: string;
  tokenFile: string;
  process: ChildProcess;
  /** Everything the agent wrote so far. */
  stdout(): string;
  stderr(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGKILLs the agent if it still runs and removes dir. */
  stop(): Promise<void>;
}

/** Writes a container config folder as the agent reads it (NUL-separated argv and env). */
export async function writeContainerConfig(dir: string, config: ContainerConfig): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'argv'), config.argv.map((a) => `${a}\0`).join(''));
  if (config.env)
    await writeFile(
      join(dir, 'env'),
      Object.entries(config.env)
        .map(([k, v]) => `${k}=${v}\0`)
        .join(''),
    );
  if (config.cwd !== undefined) await writeFile(join(dir, 'cwd'), `${config.cwd}\n`);
  if (config.user !== undefined) await writeFile(join(dir, 'user'), `${config.user}\n`);
}

/**
 * @example
 * const agent = await startLocalAgent({ mode: 'serve' });
 * const client = await GuestAgentClient.connect(agent.endpoint);
 */
export async function startLocalAgent(opts: LocalAgentOptions): Promise<LocalAgent> {
  const binary = opts.binary ?? (await ensureGuestAgent()).path;
  const dir = await mkdtemp(join(tmpdir(), 'nqvm-guest-agent-'));
  const token = opts.token ?? randomBytes(16).toString('hex');
  const socketPath = join(dir, 'agent.sock');
  const tokenFile = join(dir, 'token');
  await writeFile(tokenFile, `${token}\n`, { mode: 0o600 });
  const args = [opts.mode, '--unix', socketPath, '--token-file', tokenFile];
  if (opts.mode === 'container') {
    if (!opts.container) throw new Error('container mode needs a container config');
    await writeContainerConfig(join(dir, 'config'), opts.container);
    args.push('--config', join(dir, 'config'), '--no-halt');
  }
  const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (b: Buffer) => {
    out += b.toString();
  });
  child.stderr.on('data', (b: Buffer) => {
    err += b.toString();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 10_000;
  while (!existsSync(socketPath)) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`the guest agent did not start: ${err.trim()}`);
    }
    await sleep(10);
  }
  return {
    endpoint: { kind: 'unix', socketPath, token },
    dir,
    tokenFile,
    process: child,
    stdout: () => out,
    stderr: () => err,
    exited,
    stop,
  };
}
