import { createConnection, type Socket } from 'node:net';

/**
 * A small QMP client (QEMU Machine Protocol, newline-delimited JSON over a Unix socket):
 * greeting + capabilities negotiation, commands matched to replies by id, asynchronous events,
 * per-command timeouts and prompt close detection.
 */

export type QmpErrorCode = 'QMP_COMMAND_FAILED' | 'QMP_TIMEOUT' | 'QMP_CLOSED' | 'QMP_PROTOCOL';

export class QmpError extends Error {
  constructor(
    readonly code: QmpErrorCode,
    message: string,
    /** The QMP error class (e.g. "GenericError") when QEMU answered with an error. */
    readonly qmpClass?: string,
  ) {
    super(message);
    this.name = 'QmpError';
  }
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpConnectOptions {
  /** Deadline for connect + greeting + capabilities negotiation. */
  timeoutMs?: number;
  /** Default deadline of each command. */
  commandTimeoutMs?: number;
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

type QmpMessage = {
  QMP?: unknown;
  id?: unknown;
  return?: unknown;
  error?: { class?: string; desc?: string };
  event?: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
};

export class QmpClient {
  /** Resolves once the connection is gone, for whatever reason. */
  readonly closed: Promise<void>;
  private readonly pending = new Map<number, Pending>();
  private readonly eventListeners = new Set<(event: QmpEvent) => void>();
  private readonly closeListeners = new Set<() => void>();
  private nextId = 1;
  private buffered = '';
  private isClosed = false;
  private markClosed!: () => void;

  private constructor(
    private readonly socket: Socket,
    private readonly commandTimeoutMs: number,
  ) {
    this.closed = new Promise((resolve) => {
      this.markClosed = resolve;
    });
  }

  /**
   * Connects to a QMP socket and leaves capabilities negotiation mode.
   *
   * @example
   * const qmp = await QmpClient.connect('/var/lib/nqvm/vms/ID/qmp.sock');
   * const status = await qmp.execute<{ status: string }>('query-status');
   */
  static async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? 5_000;
    const socket = createConnection({ path });
    const client = new QmpClient(socket, opts.commandTimeoutMs ?? 10_000);
    const greeting = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new QmpError('QMP_TIMEOUT', `no QMP greeting on ${path} within ${timeoutMs} ms`));
      }, timeoutMs);
      client.onGreeting = () => {
        clearTimeout(timer);
        resolve();
      };
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new QmpError('QMP_CLOSED', `cannot connect to QMP socket ${path}: ${err.message}`));
      });
      socket.once('close', () => {
        clearTimeout(timer);
        reject(new QmpError('QMP_CLOSED', `QMP socket ${path} closed before the greeting`));
      });
    });
    client.attach();
    try {
      await greeting;
      await client.execute('qmp_capabilities', undefined, { timeoutMs });
      return client;
    } catch (err) {
      client.close();
      throw err;
    }
  }

  private onGreeting: (() => void) | null = null;

  private attach(): void {
    this.socket.setEncoding('utf8');
    this.socket.on('data', (chunk: string) => this.onData(chunk));
    this.socket.on('error', () => {
      // 'close' follows and does the cleanup; the error itself has nowhere better to go.
    });
    this.socket.on('close', () => this.onClose());
  }

  get isOpen(): boolean {
    return !this.isClosed;
  }

  /** Runs a command; rejects with QMP_COMMAND_FAILED, QMP_TIMEOUT or QMP_CLOSED. */
  execute<T = unknown>(
    command: string,
    args?: Record<string, unknown>,
    opts: { timeoutMs?: number } = {},
  ): Promise<T> {
    if (this.isClosed) {
      return Promise.reject(new QmpError('QMP_CLOSED', `QMP connection closed, cannot run ${command}`));
    }
    const id = this.nextId++;
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QmpError('QMP_TIMEOUT', `QMP ${command} got no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.socket.write(
        `${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`,
      );
    });
  }

  /** Calls `listener` for every asynchronous event; returns the unsubscribe function. */
  onEvent(listener: (event: QmpEvent) => void): () => void {
    this.eventListeners.add(listener);
    return () => this.eventListeners.delete(listener);
  }

  /** Waits for the next event named `name` (and matching `predicate`, when given). */
  waitForEvent(name: string, timeoutMs: number, predicate?: (event: QmpEvent) => boolean): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const finish = (err: Error | null, event?: QmpEvent) => {
        clearTimeout(timer);
        offEvent();
        this.closeListeners.delete(onClosed);
        if (err) reject(err);
        else resolve(event!);
      };
      const onClosed = () =>
        finish(new QmpError('QMP_CLOSED', `QMP connection closed while waiting for ${name}`));
      const offEvent = this.onEvent((event) => {
        if (event.event === name && (!predicate || predicate(event))) finish(null, event);
      });
      const timer = setTimeout(
        () => finish(new QmpError('QMP_TIMEOUT', `no QMP event ${name} within ${timeoutMs} ms`)),
        timeoutMs,
      );
      if (this.isClosed) onClosed();
      else this.closeListeners.add(onClosed);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private onData(chunk: string): void {
    this.buffered += chunk;
    for (let nl = this.buffered.indexOf('\n'); nl >= 0; nl = this.buffered.indexOf('\n')) {
      const line = this.buffered.slice(0, nl).trim();
      this.buffered = this.buffered.slice(nl + 1);
      if (line) this.onLine(line);
    }
  }

  private onLine(line: string): void {
    let msg: QmpMessage;
    try {
      msg = JSON.parse(line) as QmpMessage;
    } catch {
      this.failAll(new QmpError('QMP_PROTOCOL', `QMP sent a line that is not JSON: ${line.slice(0, 200)}`));
      this.close();
      return;
    }
    if (msg.QMP !== undefined) {
      this.onGreeting?.();
      this.onGreeting = null;
      return;
    }
    if (typeof msg.event === 'string') {
      const event: QmpEvent = { event: msg.event, data: msg.data, timestamp: msg.timestamp };
      for (const listener of [...this.eventListeners]) {
        try {
          listener(event);
        } catch {
          // One listener's bug must not hide the event from the others.
        }
      }
      return;
    }
    if (typeof msg.id !== 'number') return;
    const pending = this.pending.get(msg.id);
    if (!pending) return; // Answer to a command that already timed out.
    this.pending.delete(msg.id);
    clearTimeout(pending.timer);
    if (msg.error) {
      const cls = msg.error.class ?? 'GenericError';
      pending.reject(
        new QmpError('QMP_COMMAND_FAILED', `QMP ${pending.command} failed: ${msg.error.desc ?? cls}`, cls),
      );
    } else {
      pending.resolve(msg.return);
    }
  }

  private failAll(err: QmpError): void {
    for (const [id, pending] of this.pending) {
      clearTimeout(pending.timer);
      this.pending.delete(id);
      pending.reject(err);
    }
  }

  private onClose(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.failAll(new QmpError('QMP_CLOSED', 'QMP connection closed'));
    for (const listener of [...this.closeListeners]) listener();
    this.closeListeners.clear();
    this.markClosed();
  }
}
