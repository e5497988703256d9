/**
 * The one place the networking module reaches the host: every `ip`, `nft`, `sysctl`, `dnsmasq`
 * runs through here as an argument array (never a shell), optionally inside a named network
 * namespace (tests; production uses the host's own).
 */
import { spawn } from 'node:child_process';
import { NqvmError } from '@nqvm/api/errors';

/** Names under /run/netns that nqvm accepts. */
const NETNS_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** `/run/netns/<name>` after checking the name. */
export function netnsPath(name: string): string {
  if (!NETNS_NAME.test(name))
    throw new NqvmError('VALIDATION_FAILED', `invalid network namespace name ${JSON.stringify(name)}`);
  return `/run/netns/${name}`;
}

/** argv that runs `cmd args` inside `netns` (as the same process: nsenter execs it). */
export function inNetns(netns: string | undefined, cmd: string, args: readonly string[]): string[] {
  return netns ? ['nsenter', `--net=${netnsPath(netns)}`, '--', cmd, ...args] : [cmd, ...args];
}

export class HostCommandError extends Error {
  constructor(
    readonly argv: readonly string[],
    readonly exitCode: number | null,
    readonly stderr: string,
  ) {
    super(`${argv.join(' ')} failed (${exitCode ?? 'killed'}): ${stderr.trim().slice(0, 2_000)}`);
    this.name = 'HostCommandError';
  }
}

export interface RunOptions {
  /** Written to the command's stdin (e.g. an nft script for `nft -f -`). */
  input?: string;
  timeoutMs?: number;
}

export interface HostRunner {
  /** The network namespace commands run in; undefined: the agent's own. */
  readonly netns: string | undefined;
  /** Runs one command to its end and answers its stdout; a non-zero exit throws HostCommandError. */
  run(cmd: string, args: readonly string[], opts?: RunOptions): Promise<string>;
}

export interface HostRunnerOptions {
  netns?: string;
  /** Sees every argv before it runs (logging, tests that check nothing ran). */
  onCommand?: (argv: readonly string[]) => void;
}

const DEFAULT_TIMEOUT_MS = 20_000;

/**
 * @example
 * const host = hostRunner({ netns: 'nqvm-test-host' });
 * const links = JSON.parse(await host.run('ip', ['-json', 'link', 'show']));
 */
export function hostRunner(opts: HostRunnerOptions = {}): HostRunner {
  const netns = opts.netns;
  if (netns !== undefined) netnsPath(netns);
  return {
    netns,
    run(cmd, args, runOpts = {}) {
      const argv = inNetns(netns, cmd, args);
      opts.onCommand?.(argv);
      return runArgv(argv, runOpts);
    },
  };
}

function runArgv(argv: readonly string[], opts: RunOptions): Promise<string> {
  const [cmd, ...args] = argv as [string, ...string[]];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new HostCommandError(argv, null, e.message));
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(Buffer.concat(out).toString('utf8'));
      else reject(new HostCommandError(argv, code, Buffer.concat(err).toString('utf8')));
    });
    // A command that exits without reading its stdin makes the write fail with EPIPE: its exit
    // code tells what happened.
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
  });
}
