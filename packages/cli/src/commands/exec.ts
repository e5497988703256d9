/**
 * `nqvm vm exec` and `nqvm container exec`: a command in the guest, through nqvm's guest agent.
 * By default one request: standard input goes with it when piped (or with -i), its output comes
 * back whole, and the CLI exits with the command's code (128+signal when it was killed, 124 when
 * it timed out, as timeout(1) does). With -t the command gets a terminal over the exec WebSocket:
 * yours in raw mode, its size sent again on SIGWINCH.
 */
import type { ExecResult, ExecServerMessage } from '@nqvm/api/exec';
import type { Command } from 'commander';
import WebSocket from 'ws';
import { type ApiClient, ApiError } from '../client/api';
import { printData, UsageError } from '../client/output';
import { action, type ResourceKind, resolveId, session } from '../client/session';
import { attachTerminal, terminalSize } from '../client/terminal';
import { openApiWebSocket } from '../client/websocket';

/** The API takes at most this much standard input (as text) with one exec. */
const MAX_STDIN_BYTES = 1_048_576;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;

interface ExecOptions {
  interactive?: boolean;
  tty?: boolean;
  env: string[];
  workdir?: string;
  user?: string;
  timeout?: string;
}

/**
 * `-e` values as an environment: `NAME=value`, or `NAME` alone for its value in this shell
 * (left out when unset), as docker does.
 *
 * @example
 * parseEnv(['MODE=fast', 'HOME'], { HOME: '/root' }) // { MODE: 'fast', HOME: '/root' }
 */
export function parseEnv(list: string[], from: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of list) {
    const at = item.indexOf('=');
    const name = at < 0 ? item : item.slice(0, at);
    if (!ENV_NAME.test(name)) throw new UsageError(`-e must be NAME=value or NAME, not "${item}"`);
    if (at >= 0) out[name] = item.slice(at + 1);
    else if (from[name] !== undefined) out[name] = from[name] as string;
  }
  return out;
}

/** The CLI's exit code for a command's end: its own code, 128+signal when killed, 124 on timeout. */
export function exitCodeOf(r: Pick<ExecResult, 'exit_code' | 'signal' | 'timed_out'>): number {
  if (r.timed_out) return 124;
  if (r.signal !== null) return 128 + r.signal;
  return r.exit_code ?? 1;
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    chunks.push(chunk as Buffer);
    size += (chunk as Buffer).length;
    if (size > MAX_STDIN_BYTES) {
      throw new UsageError('standard input is over 1 MiB: pass a smaller one, or use -it and type it');
    }
  }
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * Adds `exec` to `parent` (`vm` or `container`); `kind` resolves the name and gives the API path
 * (`/api/v1/vms/{id}/exec`, `/api/v1/containers/{id}/exec`).
 */
export function addExecCommand(parent: Command, kind: ResourceKind): void {
  const noun = parent.name();
  parent
    .command('exec')
    .argument(`<${noun}>`, 'name or id')
    .argument('<command...>', 'the command and its arguments, after --')
    .description(`run a command in the ${kind.label} and exit with its exit code`)
    .option('-i, --interactive', 'send standard input even when it is a terminal (read to its end)')
    .option('-t, --tty', 'give the command a terminal (with -i: type into it)')
    .option(
      '-e, --env <name=value>',
      'an environment variable; NAME alone passes its value here (repeatable)',
      (v: string, prev: string[]) => [...prev, v],
      [],
    )
    .option('-w, --workdir <dir>', 'working directory (an absolute path)')
    .option('-u, --user <user>', 'run as this user, uid, user:group or uid:gid')
    .option('--timeout <s>', 'kill the command after this many seconds: exit 124 (default 60; not with -t)')
    .addHelpText(
      'after',
      `
Without -t the command's output is printed once it ended; piped standard input goes to it
(text, at most 1 MiB). The exit code is the command's, 128+N when signal N killed it, 124
when it outlived --timeout. With -t it runs in a terminal, interactive with -it.

Examples:
  $ nqvm ${noun} exec web1 -- uname -a
  $ echo hello | nqvm ${noun} exec web1 -- sh -c 'cat > /tmp/greeting'
  $ nqvm ${noun} exec web1 -e MODE=debug -w /srv -u www-data -- ./check.sh
  $ nqvm ${noun} exec -it web1 -- sh`,
    )
    .action(
      action(async (target: string, command: string[], opts: ExecOptions, cmd: Command) => {
        const { api, print } = await session(cmd);
        const base = `${kind.path}/${await resolveId(api, kind, target)}`;
        if (opts.tty) {
          process.exitCode = await execInTerminal(api, base, command, opts);
          return;
        }
        const timeoutS = opts.timeout === undefined ? 60 : Number(opts.timeout);
        if (!Number.isInteger(timeoutS) || timeoutS < 1 || timeoutS > 3600) {
          throw new UsageError(`--timeout must be 1 to 3600 seconds, not "${opts.timeout}"`);
        }
        const env = parseEnv(opts.env);
        const stdin = opts.interactive || !process.stdin.isTTY ? await readStdin() : '';
        const result = await api.request<ExecResult>('POST', `${base}/exec`, {
          body: {
            command,
            env: Object.keys(env).length ? env : undefined,
            working_dir: opts.workdir,
            user: opts.user,
            stdin: stdin || undefined,
            timeout_s: timeoutS,
          },
          // The answer comes once the command ended: give it its timeout and some.
          timeoutMs: (timeoutS + 30) * 1000,
        });
        if (print.format === 'table') {
          process.stdout.write(result.stdout);
          process.stderr.write(result.stderr);
        } else {
          printData(print, result);
        }
        if (result.truncated) process.stderr.write('nqvm: output past 4 MiB per stream was dropped\n');
        if (result.timed_out) process.stderr.write(`nqvm: the command was killed after ${timeoutS} s\n`);
        process.exitCode = exitCodeOf(result);
      }),
    );
}

/** Runs `argv` in a terminal over the exec WebSocket; resolves with its exit code. */
async function execInTerminal(
  api: ApiClient,
  base: string,
  argv: string[],
  opts: ExecOptions,
): Promise<number> {
  if (opts.env.length)
    throw new UsageError('-e does not go with -t: the exec WebSocket takes no environment');
  if (opts.timeout !== undefined) throw new UsageError('--timeout does not go with -t');
  if (opts.interactive && !process.stdin.isTTY) {
    throw new UsageError('-it needs a terminal as standard input (pipe input without -t)');
  }
  const size = terminalSize() ?? { cols: 80, rows: 24 };
  return new Promise<number>((resolve, reject) => {
    let exit: number | null = null;
    let failure: Error | null = null;
    const pending: Buffer[] = [];
    const ws = openApiWebSocket(
      api,
      `${base}/exec/ws`,
      { command: JSON.stringify(argv), tty: '1', ...size, user: opts.user, working_dir: opts.workdir },
      (refusal) => {
        release();
        reject(refusal);
      },
    );
    const sendSize = () => {
      const now = terminalSize();
      if (now && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'resize', ...now }));
    };
    const release = attachTerminal({
      onInput: opts.interactive
        ? (data) => (ws.readyState === WebSocket.OPEN ? ws.send(data) : pending.push(data))
        : undefined,
      onResize: sendSize,
    });
    ws.on('open', () => {
      for (const data of pending.splice(0)) ws.send(data);
    });
    ws.on('message', (data, isBinary) => {
      if (isBinary) {
        process.stdout.write(data as Buffer);
        return;
      }
      let m: ExecServerMessage;
      try {
        m = JSON.parse(data.toString()) as ExecServerMessage;
      } catch {
        return;
      }
      if (m.type === 'exit')
        exit = exitCodeOf({ exit_code: m.exit_code, signal: m.signal, timed_out: false });
      else if (m.type === 'error') failure = new ApiError(0, m.code, m.message);
    });
    ws.on('error', (err) => {
      failure ??= err;
    });
    ws.on('close', () => {
      release();
      if (exit !== null) resolve(exit);
      else
        reject(
          failure ?? new ApiError(0, 'EXEC_DISCONNECTED', 'the connection ended before the command did'),
        );
    });
  });
}
