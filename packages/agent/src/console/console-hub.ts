import { closeSync, openSync, writeSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { ByteRing } from './byte-ring';
import { readLogTail, receivedLogPath, rotateLogIfLarge } from './console-log';

/**
 * The agent's side of one VM's serial console. The console itself is held by the VMM (QEMU: a
 * chardev socket server with a log file), so it outlives the agent; the hub connects to that
 * socket, keeps recent output in memory, fans it out to any number of viewers, forwards input,
 * and reconnects when the connection drops. Scrollback survives an agent restart: the hub
 * appends what it receives to its own log, which seeds a new hub, and the VMM's log supplies
 * what came while no hub was connected.
 *
 * The VMM's log alone is not the guest's output: QEMU logs a byte each time it tries to send
 * it, and its serial port tries again when the socket refuses it (full, while the hub lags), so
 * the log repeats such bytes (`processsor`, `ACPII:`); only its part written while nobody was
 * connected (each byte logged once, sent to no one) is taken from it.
 */

export type ConsoleViewerCloseReason = 'slow' | 'error' | 'hub-closed';

export interface ConsoleViewer {
  /** Each chunk of console output, in order. Must not block: queue it (e.g. `ws.send`). */
  onData(chunk: Buffer): void;
  /**
   * Bytes accepted but not yet delivered downstream (e.g. `ws.bufferedAmount`). When it goes
   * past the hub's limit the viewer is dropped, so it can neither stall others nor grow forever.
   */
  pendingBytes?(): number;
  /** Called once when the hub drops the viewer. */
  onClose?(reason: ConsoleViewerCloseReason): void;
}

export interface ConsoleHubOptions {
  /** The Unix socket where the VMM serves the console. */
  socketPath: string;
  /** The log file the VMM appends console output to: fills gaps in scrollback, rotated by the hub. */
  logPath?: string;
  /** The hub's own log of the output it received, rotated like `logPath`. Default: `receivedLogPath(logPath)`. */
  receivedPath?: string;
  /** Output kept in memory. Default 1 MiB. */
  bufferBytes?: number;
  /** `logPath` is rotated once larger than this (its tail goes to `<logPath>.1`). Default 1 MiB. */
  maxLogBytes?: number;
  /** A viewer whose `pendingBytes()` exceeds this is dropped. Default 1 MiB. */
  maxViewerPendingBytes?: number;
  /** Input queued towards the VMM beyond this is refused (the guest is not reading). Default 64 KiB. */
  maxInputPendingBytes?: number;
  /** Wait between connecting and reading the log, so the VMM has accepted us. Default 50 ms. */
  attachSettleMs?: number;
  /** Reconnect backoff bounds. Defaults 100 ms and 2 s. */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  logger?: { warn(obj: object, msg?: string): void };
}

export interface ConsoleSubscribeOptions {
  /** Send this many bytes of scrollback first (before any live output). Default 0. */
  replayBytes?: number;
}

const MiB = 1024 * 1024;
/** A viewer with more output than this waiting to be sent is dropped (`maxViewerPendingBytes`). */
export const DEFAULT_MAX_VIEWER_PENDING_BYTES = MiB;
/** How much of the in-memory tail must reappear in the log to find where the hub left off. */
const ANCHOR_BYTES = 256;
/** Check the log size for rotation after this much output. */
const ROTATE_CHECK_BYTES = 64 * 1024;

export class ConsoleHub {
  private readonly ring: ByteRing;
  private readonly viewers = new Set<ConsoleViewer>();
  private socket: Socket | null = null;
  private isConnected = false;
  private isClosed = false;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private reconnectDelay: number;
  private bytesSinceRotateCheck = 0;
  private rotating: Promise<unknown> | null = null;
  /** Whether the scrollback was seeded from the received log (done once, by the first attach). */
  private seeded = false;
  /** The received log, open for appending; null until output comes, or when it cannot be written. */
  private receivedFd: number | null = null;
  private receivedFailed = false;
  private readonly receivedPath: string | undefined;
  private readonly opts: Required<Omit<ConsoleHubOptions, 'logPath' | 'receivedPath' | 'logger'>> &
    Pick<ConsoleHubOptions, 'logPath' | 'logger'>;

  constructor(opts: ConsoleHubOptions) {
    this.opts = {
      bufferBytes: MiB,
      maxLogBytes: MiB,
      maxViewerPendingBytes: DEFAULT_MAX_VIEWER_PENDING_BYTES,
      maxInputPendingBytes: 64 * 1024,
      attachSettleMs: 50,
      reconnectMinMs: 100,
      reconnectMaxMs: 2_000,
      ...opts,
    };
    this.ring = new ByteRing(this.opts.bufferBytes);
    this.reconnectDelay = this.opts.reconnectMinMs;
    this.receivedPath = opts.receivedPath ?? (opts.logPath ? receivedLogPath(opts.logPath) : undefined);
  }

  /**
   * Connects to the console socket (retrying until `timeoutMs`) and seeds the scrollback from
   * the log. After this first success, a dropped connection is re-established in the background.
   *
   * @example
   * const hub = new ConsoleHub({ socketPath: `${vmDir}/console.sock`, logPath: `${vmDir}/console.log` });
   * await hub.attach();
   * hub.subscribe({ onData: (c) => ws.send(c), pendingBytes: () => ws.bufferedAmount }, { replayBytes: 64 * 1024 });
   */
  async attach(opts: { timeoutMs?: number; freshVmm?: boolean } = {}): Promise<void> {
    const deadline = Date.now() + (opts.timeoutMs ?? 5_000);
    let lastError: unknown;
    while (!this.isClosed) {
      try {
        await this.connectOnce(!opts.freshVmm);
        return;
      } catch (err) {
        lastError = err;
        if (Date.now() >= deadline) break;
        await sleep(5);
      }
    }
    if (this.isClosed) throw new Error('console hub closed while attaching');
    throw new Error(
      `cannot attach to console socket ${this.opts.socketPath}: ${lastError instanceof Error ? lastError.message : String(lastError)}`,
    );
  }

  get connected(): boolean {
    return this.isConnected;
  }

  get viewerCount(): number {
    return this.viewers.size;
  }

  /** Bytes of output ever seen (including the seed), for progress and tests. */
  get totalBytes(): number {
    return this.ring.totalWritten;
  }

  /** The most recent output, at most `bytes` (all that is kept by default). */
  tail(bytes?: number): Buffer {
    return this.ring.tail(bytes);
  }

  /** Adds a viewer; returns the function that removes it. */
  subscribe(
    viewer: ConsoleViewer | ((chunk: Buffer) => void),
    opts: ConsoleSubscribeOptions = {},
  ): () => void {
    const v: ConsoleViewer = typeof viewer === 'function' ? { onData: viewer } : viewer;
    if (this.isClosed) {
      v.onClose?.('hub-closed');
      return () => {};
    }
    this.viewers.add(v);
    const replay = opts.replayBytes ? this.ring.tail(opts.replayBytes) : null;
    if (replay && replay.length > 0) this.deliver(v, replay);
    return () => {
      this.viewers.delete(v);
    };
  }

  /** Sends input to the guest; false when not connected or the VMM is not taking input. */
  write(data: string | Uint8Array): boolean {
    const socket = this.socket;
    if (!socket || !this.isConnected || socket.destroyed) return false;
    if (socket.writableLength > this.opts.maxInputPendingBytes) return false;
    socket.write(data);
    return true;
  }

  /**
   * Resolves with the matched text once output written after byte `since` (a `totalBytes`
   * value; default: everything kept) matches `pattern`. For tests and boot checks.
   *
   * @example
   * const from = hub.totalBytes;
   * hub.write('uname -r\n');
   * await hub.waitForOutput(/\d+\.\d+\.\d+/, 5_000, from);
   */
  waitForOutput(pattern: RegExp | string, timeoutMs: number, since = 0): Promise<string> {
    const find = (): string | null => {
      const fresh = this.ring.totalWritten - since;
      const text = this.ring.tail(fresh < 0 ? this.ring.length : fresh).toString('latin1');
      if (typeof pattern === 'string') return text.includes(pattern) ? pattern : null;
      return pattern.exec(text)?.[0] ?? null;
    };
    return new Promise((resolve, reject) => {
      const now = find();
      if (now !== null) return resolve(now);
      const timer = setTimeout(() => {
        unsubscribe();
        reject(new Error(`console output did not match ${String(pattern)} within ${timeoutMs} ms`));
      }, timeoutMs);
      const unsubscribe = this.subscribe({
        onData: () => {
          const found = find();
          if (found === null) return;
          clearTimeout(timer);
          unsubscribe();
          resolve(found);
        },
        onClose: () => {
          clearTimeout(timer);
          reject(new Error(`console closed before output matched ${String(pattern)}`));
        },
      });
    });
  }

  /** Disconnects for good and drops every viewer. The VMM keeps its console. */
  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.socket?.destroy();
    this.socket = null;
    this.isConnected = false;
    for (const v of [...this.viewers]) this.drop(v, 'hub-closed');
    await this.rotating?.catch(() => {});
    if (this.receivedFd !== null) closeSync(this.receivedFd);
    this.receivedFd = null;
  }

  /** `settle`: a VMM that ran before this attach may have output the log has not caught up with. */
  private async connectOnce(settle = true): Promise<void> {
    const socket = createConnection({ path: this.opts.socketPath });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    if (this.isClosed) {
      socket.destroy();
      throw new Error('console hub closed');
    }
    const early: Buffer[] = [];
    let syncing = true;
    socket.on('data', (chunk: Buffer) => {
      if (syncing) early.push(chunk);
      else this.ingest(chunk);
    });
    socket.on('error', () => {
      // 'close' follows; a reconnect is scheduled there.
    });
    socket.on('close', () => this.onSocketClose(socket));
    this.socket = socket;
    this.isConnected = true;
    try {
      if (this.opts.logPath) {
        // On a re-attach, let the log catch up with what the socket sent; a VMM started just now
        // has written nothing before this connection, and its boot must not wait.
        if (settle) await sleep(this.opts.attachSettleMs);
        await this.rotateNow().catch((err: unknown) => {
          this.opts.logger?.warn({ err, log: this.opts.logPath }, 'console log rotation failed');
        });
        if (!this.seeded && this.receivedPath) {
          // What earlier hubs received: the scrollback up to where the last one left off.
          this.ring.push(await readLogTail(this.receivedPath, this.opts.bufferBytes));
          this.seeded = true;
        }
        const log = await readLogTail(this.opts.logPath, this.opts.bufferBytes);
        const missed = bytesAfterAnchor(log, this.ring.tail(ANCHOR_BYTES));
        if (missed.length > 0) this.ingest(missed);
        const live = Buffer.concat(early);
        this.ingest(live.subarray(suffixPrefixOverlap(log, live)));
      } else {
        this.ingest(Buffer.concat(early));
      }
    } finally {
      syncing = false;
    }
    this.reconnectDelay = this.opts.reconnectMinMs;
  }

  private onSocketClose(socket: Socket): void {
    if (this.socket !== socket) return;
    this.socket = null;
    this.isConnected = false;
    if (this.isClosed) return;
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.isClosed || this.reconnectTimer) return;
    const delay = this.reconnectDelay;
    this.reconnectDelay = Math.min(this.reconnectDelay * 2, this.opts.reconnectMaxMs);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.connectOnce().catch((err: unknown) => {
        this.opts.logger?.warn({ err, socket: this.opts.socketPath }, 'console reconnect failed');
        this.scheduleReconnect();
      });
    }, delay);
    this.reconnectTimer.unref();
  }

  private ingest(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.ring.push(chunk);
    this.record(chunk);
    for (const v of [...this.viewers]) this.deliver(v, chunk);
    this.bytesSinceRotateCheck += chunk.length;
    if (this.bytesSinceRotateCheck >= ROTATE_CHECK_BYTES && this.opts.logPath && !this.rotating) {
      this.bytesSinceRotateCheck = 0;
      this.rotateNow().catch((err: unknown) => {
        this.opts.logger?.warn({ err, log: this.opts.logPath }, 'console log rotation failed');
      });
    }
  }

  /** Appends to the received log, at once: an agent killed right after loses none of it. */
  private record(chunk: Buffer): void {
    if (!this.receivedPath || this.receivedFailed) return;
    try {
      this.receivedFd ??= openSync(this.receivedPath, 'a', 0o600);
      writeSync(this.receivedFd, chunk);
    } catch (err) {
      // A full disk: the scrollback in memory goes on; after an agent restart it starts from the VMM's log.
      this.receivedFailed = true;
      this.opts.logger?.warn({ err, log: this.receivedPath }, 'cannot write the received console log');
    }
  }

  private rotateNow(): Promise<unknown> {
    const logs = [this.opts.logPath, this.receivedPath].filter((p) => p !== undefined);
    if (logs.length === 0) return Promise.resolve();
    if (this.rotating) return this.rotating;
    this.rotating = Promise.all(logs.map((p) => rotateLogIfLarge(p, this.opts.maxLogBytes))).finally(() => {
      this.rotating = null;
    });
    return this.rotating;
  }

  private deliver(v: ConsoleViewer, chunk: Buffer): void {
    try {
      if (v.pendingBytes && v.pendingBytes() > this.opts.maxViewerPendingBytes) {
        this.drop(v, 'slow');
        return;
      }
      v.onData(chunk);
    } catch {
      this.drop(v, 'error');
    }
  }

  private drop(v: ConsoleViewer, reason: ConsoleViewerCloseReason): void {
    if (!this.viewers.delete(v)) return;
    try {
      v.onClose?.(reason);
    } catch {
      // The viewer is gone either way.
    }
  }
}

/**
 * What the VMM's `log` holds after the last place it shows `anchor` (the end of what the hub
 * already has). The log may repeat a byte the anchor has once (QEMU's retries), so a run of one
 * byte in the anchor matches a run at least as long in the log; the anchor's last run ends as
 * many bytes into the log's run as it has, the rest of that run being new output. With no
 * anchor (nothing seen yet) or when the anchor has rotated out, all of `log` is new.
 */
export function bytesAfterAnchor(log: Buffer, anchor: Buffer): Buffer {
  if (anchor.length === 0) return log;
  const runs = byteRuns(anchor);
  const last = runs.pop()!;
  for (let end = log.length; end > 0; ) {
    let start = end - 1;
    while (start > 0 && log[start - 1] === log[end - 1]) start--;
    if (log[start] === last.byte && end - start >= last.count && runsEndAt(log, start, runs))
      return log.subarray(start + last.count);
    end = start;
  }
  return log;
}

interface ByteRun {
  byte: number;
  count: number;
}

function byteRuns(bytes: Buffer): ByteRun[] {
  const runs: ByteRun[] = [];
  for (const byte of bytes) {
    const last = runs.at(-1);
    if (last?.byte === byte) last.count++;
    else runs.push({ byte, count: 1 });
  }
  return runs;
}

/** Whether `log` ends at `end` with `runs`, each as long or longer there. */
function runsEndAt(log: Buffer, end: number, runs: readonly ByteRun[]): boolean {
  let at = end;
  for (let r = runs.length - 1; r >= 0; r--) {
    const { byte, count } = runs[r]!;
    let from = at;
    while (from > 0 && log[from - 1] === byte) from--;
    if (at - from < count) return false;
    at = from;
  }
  return true;
}

/**
 * The length of the longest prefix of `live` that `log` ends with: output that reached the
 * socket and was also logged before the log was read, so it must not be delivered twice.
 */
export function suffixPrefixOverlap(log: Buffer, live: Buffer, maxBytes = 64 * 1024): number {
  const max = Math.min(log.length, live.length, maxBytes);
  for (let k = max; k > 0; k--) {
    if (log[log.length - k] !== live[0]) continue;
    if (log.subarray(log.length - k).equals(live.subarray(0, k))) return k;
  }
  return 0;
}
