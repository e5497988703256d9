import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';

/** The socket file appears at bind(), a moment before listen(): probe with a connection. */
function accepts(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = connect(socket);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

export interface LaunchedSim {
  child: ChildProcess;
  pid: number;
  socket: string;
  /** Resolves with the exit code (or signal name) once the process is gone. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(): Promise<void>;
}

export interface LaunchOptions {
  /** The binary from writeSimulatorBinary. */
  bin: string;
  /** Folder for the socket, console FIFO and console log. */
  dir: string;
  args?: string[];
  /** 'fifo' (default): stdin is a FIFO held read-write; 'null': /dev/null. */
  stdin?: 'fifo' | 'null';
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
}

/**
 * Starts a simulator binary with `--api-sock <dir>/api.sock`, stdout appended to
 * `<dir>/console.log`, and waits for the socket (test helper).
 */
export async function launchSimulator(opts: LaunchOptions): Promise<LaunchedSim> {
  const socket = join(opts.dir, 'api.sock');
  let stdinFd: number;
  if ((opts.stdin ?? 'fifo') === 'fifo') {
    const fifo = join(opts.dir, 'console.in');
    execFileSync('mkfifo', ['-m', '600', fifo]);
    stdinFd = openSync(fifo, constants.O_RDWR);
  } else stdinFd = openSync('/dev/null', 'r');
  const out = openSync(join(opts.dir, 'console.log'), 'a');
  const child = spawn(opts.bin, ['--api-sock', socket, ...(opts.args ?? [])], {
    stdio: [stdinFd, out, out],
    env: { ...process.env, ...opts.env },
  });
  closeSync(stdinFd);
  closeSync(out);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  let gone = false;
  void exited.then(() => {
    gone = true;
  });
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  for (;;) {
    if (gone) throw new Error(`simulator exited before its socket appeared (${opts.bin})`);
    try {
      if ((await stat(socket)).isSocket() && (await accepts(socket))) break;
    } catch {
      // Not there yet.
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`no API socket after ${opts.timeoutMs ?? 10_000} ms`);
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  return {
    child,
    pid: child.pid!,
    socket,
    exited,
    async kill() {
      if (!gone) child.kill('SIGKILL');
      await exited;
    },
  };
}
