import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { basename, dirname } from 'node:path';
import { createInterface } from 'node:readline';

/** sun_path holds 107 bytes and a NUL. */
export const MAX_SOCKET_PATH = 107;

/**
 * A connectable name for a Unix socket whose path may exceed sun_path (a jail under a deep
 * chroot base): through an fd of its folder, `/proc/self/fd/N/name`. Call `release` after use.
 */
export function socketAddress(path: string): { path: string; release(): void } {
  if (Buffer.byteLength(path) <= MAX_SOCKET_PATH) return { path, release: () => {} };
  const fd = openSync(dirname(path), constants.O_RDONLY | constants.O_DIRECTORY);
  return { path: `/proc/self/fd/${fd}/${basename(path)}`, release: () => closeSync(fd) };
}

/** /proc/PID/stat: process state and start time (field 22, clock ticks since boot). */
export async function readProcStat(pid: number): Promise<{ state: string; startTime: number } | null> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) may hold spaces and parentheses: fields restart after the last ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const state = rest[0];
  const startTime = Number(rest[19]);
  if (!state || !Number.isFinite(startTime)) return null;
  return { state, startTime };
}

/** Alive and the same process (not a reused pid): start time matches, not a zombie. */
export async function isSameProcess(pid: number, startTime: number): Promise<boolean> {
  const st = await readProcStat(pid);
  return st !== null && st.startTime === startTime && st.state !== 'Z' && st.state !== 'X';
}

export interface ProcessExit {
  code: number | null;
  signal: string | null;
}

/**
 * Resolves when a process is gone. For our own child the exit status comes from the child
 * handle; for an adopted process (not our child) from polling /proc, with no status.
 */
export function watchProcess(
  pid: number,
  startTime: number,
  child?: ChildProcess,
  pollMs = 250,
): { exited: Promise<ProcessExit>; stop(): void } {
  let timer: NodeJS.Timeout | undefined;
  const exited = new Promise<ProcessExit>((resolve) => {
    if (child) {
      if (child.exitCode !== null || child.signalCode !== null) {
        resolve({ code: child.exitCode, signal: child.signalCode });
        return;
      }
      child.once('exit', (code, signal) => resolve({ code, signal }));
      return;
    }
    timer = setInterval(() => {
      void isSameProcess(pid, startTime).then((alive) => {
        if (!alive) {
          clearInterval(timer);
          resolve({ code: null, signal: null });
        }
      });
    }, pollMs);
    timer.unref();
  });
  return { exited, stop: () => clearInterval(timer) };
}

/**
 * Starts a process that outlives the agent: own session, stdio on the given fds (closed here
 * once the child holds them), never a shell.
 */
export async function spawnDetached(
  bin: string,
  args: string[],
  stdio: [number, number, number],
): Promise<ChildProcess> {
  const child = spawn(bin, args, { detached: true, stdio, env: process.env });
  for (const fd of new Set(stdio)) closeSync(fd);
  if (child.pid === undefined) {
    const err = await new Promise<Error>((resolve) => child.once('error', resolve));
    throw new Error(`cannot start ${bin}: ${err.message}`);
  }
  child.on('error', () => {});
  child.unref();
  return child;
}

/** The child's exit, waiting at most `waitMs` for it; null while it still runs. */
export function exitWithin(child: ChildProcess, waitMs: number): Promise<ProcessExit | null> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return new Promise((resolve) => {
    const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
      clearTimeout(timer);
      resolve({ code, signal });
    };
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolve(null);
    }, waitMs);
    child.once('exit', onExit);
  });
}

export function kill(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

function accepts(socket: string): Promise<boolean> {
  const addr = socketAddress(socket);
  return new Promise<boolean>((resolve) => {
    const c = connect(addr.path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  }).finally(addr.release);
}

/**
 * Polls for the API socket until it accepts connections (the file appears at bind(), a moment
 * before listen()). Fails at the deadline or as soon as `gone()` says the process died.
 */
export async function waitForSocket(path: string, timeoutMs: number, gone: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let delay = 2;
  for (;;) {
    if (gone()) throw new Error('the VMM exited before its API socket appeared');
    try {
      if ((await stat(path)).isSocket() && (await accepts(path))) return;
    } catch {
      // Not there yet.
    }
    if (Date.now() > deadline) throw new Error(`no API socket at ${path} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 25);
  }
}

/** Runs a tool with an argument array and returns its stdout. */
export function runTool(bin: string, args: string[], timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(bin, args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${bin} ${args.join(' ')}: ${stderr.trim() || err.message}`));
      else resolve(stdout);
    });
  });
}

/**
 * Runs a tool with an argument array and hands each line of its stdout to `onLine` as it comes
 * (for outputs too long to buffer, e.g. a file's extent list).
 */
export function runToolLines(
  bin: string,
  args: string[],
  onLine: (line: string) => void,
  timeoutMs = 60_000,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs });
    let stderr = '';
    let failed: Error | null = null;
    child.stderr.on('data', (d: Buffer) => {
      if (stderr.length < 4096) stderr += d.toString();
    });
    const lines = createInterface({ input: child.stdout });
    lines.on('line', (line) => {
      if (failed) return;
      try {
        onLine(line);
      } catch (err) {
        failed = err as Error;
        child.kill('SIGKILL');
      }
    });
    child.once('error', (err) => reject(new Error(`${bin} ${args.join(' ')}: ${err.message}`)));
    // 'close', not 'exit': every line has been read by then.
    child.once('close', (code, signal) => {
      if (failed) reject(failed);
      else if (code === 0) resolve();
      else reject(new Error(`${bin} ${args.join(' ')}: ${stderr.trim() || `exit ${code ?? signal}`}`));
    });
  });
}
