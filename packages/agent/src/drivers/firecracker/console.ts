import { closeSync, constants, type FSWatcher, openSync, watch } from 'node:fs';
import { copyFile, type FileHandle, open, stat, truncate, unlink } from 'node:fs/promises';
import type { RunRecord } from '../types';
import { runTool } from './process';

/**
 * The guest console of a Firecracker VM needs no holder process: Firecracker's stdin is a FIFO
 * that it holds read-write (so it never reads EOF) and its stdout is appended to a log file.
 * Both outlive the agent. Output is read by tailing the file, input is written to the FIFO.
 */

export async function createConsoleFifo(path: string): Promise<void> {
  await unlink(path).catch(() => {});
  await runTool('mkfifo', ['-m', '600', path]);
}

/** The fds Firecracker gets as stdin (FIFO, read-write) and stdout/stderr (append). */
export function openConsoleFds(fifo: string, log: string, stderrLog: string): [number, number, number] {
  // Raw fds, not FileHandles: they are handed to the child and closed by the caller.
  const fds: number[] = [];
  try {
    // O_RDWR on a FIFO never blocks and keeps a writer open, so the reader never sees EOF.
    fds.push(openSync(fifo, constants.O_RDWR));
    fds.push(openSync(log, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT, 0o640));
    fds.push(openSync(stderrLog, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT, 0o640));
  } catch (err) {
    for (const fd of fds) closeSync(fd);
    throw err;
  }
  return fds as [number, number, number];
}

/**
 * Bounds the console log: past `maxBytes` its content moves to `<log>.1` and the log is
 * truncated in place (Firecracker keeps writing with O_APPEND, so its writes land at the new
 * end). Lines written between the copy and the truncation are lost, as with copytruncate.
 */
export async function rotateConsoleLog(log: string, maxBytes: number): Promise<boolean> {
  let size: number;
  try {
    size = (await stat(log)).size;
  } catch {
    return false;
  }
  if (size <= maxBytes) return false;
  await copyFile(log, `${log}.1`);
  await truncate(log, 0);
  return true;
}

export interface FirecrackerConsole {
  /** Types into the guest's serial console. */
  write(data: string | Buffer): Promise<void>;
  /** Live output from now on; returns the unsubscribe function. */
  onData(cb: (chunk: Buffer) => void): () => void;
  /** The last `bytes` of output (scrollback). */
  tail(bytes?: number): Promise<Buffer>;
  close(): Promise<void>;
}

function consolePaths(record: RunRecord): { fifo: string; log: string } {
  const log = record.extra?.consoleLog;
  if (typeof log !== 'string') throw new Error(`run record of ${record.vmId} has no console log path`);
  return { fifo: record.consoleSocket, log };
}

/**
 * Opens the console of a Firecracker VM from its run record (works after an agent restart).
 *
 * @example
 * const con = openFirecrackerConsole(handle.record);
 * const off = con.onData((b) => ws.send(b));
 * await con.write('uname -a\n');
 */
export function openFirecrackerConsole(record: RunRecord): FirecrackerConsole {
  const { fifo, log } = consolePaths(record);
  const listeners = new Set<(chunk: Buffer) => void>();
  let writer: FileHandle | null = null;
  let watcher: FSWatcher | null = null;
  let poller: NodeJS.Timeout | null = null;
  let offset = -1;
  let reading = false;
  let again = false;

  const pump = async (): Promise<void> => {
    if (reading) {
      again = true;
      return;
    }
    reading = true;
    try {
      do {
        again = false;
        const size = (await stat(log)).size;
        // Truncated by rotation: continue from the new start.
        if (size < offset) offset = 0;
        if (size === offset) continue;
        const fh = await open(log, 'r');
        try {
          const buf = Buffer.alloc(size - offset);
          const { bytesRead } = await fh.read(buf, 0, buf.length, offset);
          offset += bytesRead;
          if (bytesRead > 0) for (const cb of listeners) cb(buf.subarray(0, bytesRead));
        } finally {
          await fh.close();
        }
      } while (again);
    } catch {
      // The log may be mid-rotation; the next event or tick reads it.
    } finally {
      reading = false;
    }
  };

  const startWatching = async () => {
    offset = await stat(log).then(
      (s) => s.size,
      () => 0,
    );
    try {
      watcher = watch(log, () => void pump());
      watcher.on('error', () => {});
    } catch {
      // Polling below still delivers.
    }
    // inotify misses nothing on a local file, but a truncation by another process can race it.
    poller = setInterval(() => void pump(), 250);
    poller.unref();
  };
  const stopWatching = () => {
    watcher?.close();
    watcher = null;
    if (poller) clearInterval(poller);
    poller = null;
  };

  return {
    async write(data) {
      if (!writer) {
        try {
          // Non-blocking: fails at once (ENXIO) when no Firecracker holds the FIFO any more.
          writer = await open(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
        } catch (err) {
          throw new Error(`console of ${record.vmId} is gone: ${(err as Error).message}`);
        }
      }
      let buf = typeof data === 'string' ? Buffer.from(data) : data;
      while (buf.length > 0) {
        try {
          const { bytesWritten } = await writer.write(buf);
          buf = buf.subarray(bytesWritten);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
          await new Promise((r) => setTimeout(r, 10));
        }
      }
    },
    onData(cb) {
      listeners.add(cb);
      if (listeners.size === 1) void startWatching();
      return () => {
        listeners.delete(cb);
        if (listeners.size === 0) stopWatching();
      };
    },
    async tail(bytes = 64 * 1024) {
      const parts: Buffer[] = [];
      let wanted = bytes;
      for (const file of [log, `${log}.1`]) {
        if (wanted <= 0) break;
        try {
          const fh = await open(file, 'r');
          try {
            const size = (await fh.stat()).size;
            const len = Math.min(size, wanted);
            const buf = Buffer.alloc(len);
            await fh.read(buf, 0, len, size - len);
            parts.unshift(buf);
            wanted -= len;
          } finally {
            await fh.close();
          }
        } catch {
          // A missing rotated file is normal.
        }
      }
      return Buffer.concat(parts);
    },
    async close() {
      listeners.clear();
      stopWatching();
      await writer?.close();
      writer = null;
    },
  };
}
