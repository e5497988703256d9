/**
 * The host side of the guest agent channel: authenticates, runs commands in the guest, and in
 * container mode relays the workload's logs and exit. Protocol: ./protocol.ts.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { GuestAgentError } from './errors';
import {
  type AgentInfo,
  decodeError,
  decodeExit,
  decodeInfo,
  decodeLog,
  decodeWorkloadExit,
  decodeWorkloadStarted,
  type ExecRequest,
  type ExitKind,
  encodeExec,
  encodeFrame,
  encodeSize,
  encodeStop,
  encodeU32,
  type Frame,
  FrameDecoder,
  FrameType,
  type LogRecord,
  MAX_PAYLOAD_BYTES,
  TOKEN_MAX_LENGTH,
  TOKEN_MIN_LENGTH,
} from './protocol';

export interface GuestAgentEndpoint {
  /**
   * QEMU: the chardev's unix socket (QEMU is the server). Firecracker: the vsock `uds_path`; the
   * client first writes `CONNECT <port>\n` and expects `OK <n>\n` (Firecracker's host-initiated
   * vsock handshake). Tests: the agent's `--unix` socket.
   */
  socketPath: string;
  kind: 'virtio-serial' | 'vsock' | 'unix';
  /** Required for `vsock`. */
  vsockPort?: number;
  token: string;
}

export interface ConnectOptions {
  /** Until AUTH_OK; default 10 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface ExecOptions {
  env?: Record<string, string>;
  cwd?: string;
  /** "uid", "uid:gid", "name" or "name:group", from the guest's /etc/passwd and /etc/group. */
  user?: string;
  /** Written to the command's stdin, which is then closed; without it stdin is /dev/null. */
  stdin?: string | Buffer;
  /** Then the process group is SIGKILLed and the call rejects with TIMEOUT. */
  timeoutMs?: number;
  /** Per stream; default 4 MiB. Beyond it `truncated` is set and the rest is discarded. */
  maxOutputBytes?: number;
  signal?: AbortSignal;
}

export interface ExecResult {
  /** `null` when killed by a signal. */
  exitCode: number | null;
  signal: number | null;
  stdout: Buffer;
  stderr: Buffer;
  truncated: boolean;
  durationMs: number;
}

export interface SpawnOptions {
  env?: Record<string, string>;
  cwd?: string;
  user?: string;
  /** Run in a new pty of this size; its output is all `stdout`. */
  tty?: { rows: number; cols: number };
  /** Default true: `write()` / `end()` feed the command's stdin. */
  stdin?: boolean;
}

export interface ExecExit {
  exitCode: number | null;
  signal: number | null;
}

export interface WorkloadExit {
  kind: ExitKind;
  value: number;
  ts: number;
}

export interface GuestAgentClientEvents {
  log: [LogRecord];
  'workload-started': [{ pid: number; ts: number }];
  'workload-exit': [WorkloadExit];
  /** The transport ended; `undefined` when close() was called. Reconnecting is the caller's job. */
  close: [GuestAgentError | undefined];
  /** The guest re-opened its side; the client has already re-sent AUTH. */
  hello: [];
}

export interface ExecSessionEvents {
  started: [number];
  stdout: [Buffer];
  stderr: [Buffer];
  /** The last event of a session that ran, after all of its output. */
  exit: [ExecExit];
  /** The last event of a session that could not start or was cut off (CLOSED, TIMEOUT). */
  error: [GuestAgentError];
  /** The transport can take more `write()`s. */
  drain: [];
}

const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
const DEFAULT_MAX_OUTPUT_BYTES = 4 * 1024 * 1024;
/** A guest that has not answered an EXEC by then is not going to. */
const START_TIMEOUT_MS = 30_000;
const REQUEST_TIMEOUT_MS = 10_000;
const SIGKILL = 9;
const SIGTERM = 15;

interface Channel {
  frame(type: number, payload: Buffer): void;
  fail(err: GuestAgentError): void;
}

type Send = (type: number, payload?: Buffer) => boolean;

function chunks(data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let off = 0; off < data.length; off += MAX_PAYLOAD_BYTES)
    out.push(data.subarray(off, off + MAX_PAYLOAD_BYTES));
  return out;
}

function exitOf(kind: ExitKind, value: number): ExecExit {
  return kind === 'signal' ? { exitCode: null, signal: value } : { exitCode: value, signal: null };
}

/**
 * An interactive command in the guest, made by {@link GuestAgentClient.spawn}. Exactly one of
 * `exit` or `error` ends it.
 */
export class ExecSession extends EventEmitter<ExecSessionEvents> {
  pid: number | undefined;
  private done = false;
  private stdinEnded = false;

  /** @internal */
  constructor(
    readonly channel: number,
    private readonly send: Send,
  ) {
    super();
  }

  /** Returns false when the transport's buffer is full: wait for `drain`. */
  write(data: string | Buffer): boolean {
    if (this.done || this.stdinEnded) return false;
    let ok = true;
    for (const chunk of chunks(typeof data === 'string' ? Buffer.from(data) : data))
      ok = this.send(FrameType.Stdin, chunk);
    return ok;
  }

  /** Closes the command's stdin (ignored by the guest for a tty). */
  end(): void {
    if (this.done || this.stdinEnded) return;
    this.stdinEnded = true;
    this.send(FrameType.StdinEof);
  }

  resize(rows: number, cols: number): void {
    if (!this.done) this.send(FrameType.Resize, encodeSize(rows, cols));
  }

  /** Signals the command's process group. */
  kill(signo: number = SIGTERM): void {
    if (!this.done) this.send(FrameType.Signal, encodeU32(signo));
  }

  /** @internal */
  settle(result: ExecExit | GuestAgentError): void {
    if (this.done) return;
    this.done = true;
    if (result instanceof GuestAgentError) this.emit('error', result);
    else this.emit('exit', result);
  }
}

/**
 * A connection to one guest's agent.
 *
 * @example
 * const agent = await GuestAgentClient.connect({ kind: 'unix', socketPath, token });
 * const { exitCode, stdout } = await agent.exec(['ip', 'addr'], { timeoutMs: 5000 });
 * agent.close();
 */
export class GuestAgentClient extends EventEmitter<GuestAgentClientEvents> {
  private readonly decoder = new FrameDecoder();
  private readonly channels = new Map<number, Channel>();
  private readonly pongs = new Map<string, () => void>();
  private readonly failures = new Set<(err: GuestAgentError) => void>();
  /**
   * Random start: a virtio-serial guest that missed a quick reconnect still holds the previous
   * connection's channels, which must not collide with ours.
   */
  private nextChannel = randomInt(1, 0x7fffffff);
  private token: string;
  private agentInfo: AgentInfo | undefined;
  /** Bytes of the vsock handshake answer, until its newline. */
  private handshake: Buffer | undefined;
  /** Frames not dispatched yet: held while connect() hands the client to its caller. */
  private readonly inbox: Frame[] = [];
  private held = false;
  private closed = false;
  /** connect() has resolved: from then on the end of the transport is a 'close' event. */
  private ready = false;
  private lastSocketError: Error | undefined;
  private connecting:
    | { resolve: (client: GuestAgentClient) => void; reject: (err: GuestAgentError) => void }
    | undefined;

  private constructor(
    private readonly socket: net.Socket,
    private readonly endpoint: GuestAgentEndpoint,
  ) {
    super();
    this.token = endpoint.token;
    socket.on('connect', () => this.onConnect());
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('drain', () => {
      for (const ch of this.channels.values()) if (ch instanceof SpawnChannel) ch.session.emit('drain');
    });
    socket.on('error', (err) => {
      this.lastSocketError = err;
    });
    socket.on('close', () => {
      const why = this.lastSocketError ? `: ${this.lastSocketError.message}` : '';
      this.shutDown(
        this.connecting
          ? new GuestAgentError(
              'UNREACHABLE',
              `guest agent at ${endpoint.socketPath} closed the connection${why}`,
            )
          : new GuestAgentError('CLOSED', `guest agent connection closed${why}`),
      );
    });
  }

  /**
   * Connects and authenticates. Rejects with GuestAgentError AUTH_FAILED, TIMEOUT, UNREACHABLE
   * or ABORTED. Attach event listeners right after it resolves: container logs kept by the
   * guest are delivered from the next turn of the event loop on.
   */
  static connect(endpoint: GuestAgentEndpoint, opts: ConnectOptions = {}): Promise<GuestAgentClient> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    if (endpoint.kind === 'vsock' && endpoint.vsockPort === undefined)
      return Promise.reject(new GuestAgentError('BAD_REQUEST', 'a vsock endpoint needs vsockPort'));
    if (opts.signal?.aborted) return Promise.reject(new GuestAgentError('ABORTED', 'connect aborted'));
    return new Promise((resolve, reject) => {
      const client = new GuestAgentClient(net.createConnection(endpoint.socketPath), endpoint);
      const cleanup = () => {
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
      };
      const fail = (err: GuestAgentError) => {
        client.connecting?.reject(err);
        client.close();
      };
      const timer = setTimeout(
        () => fail(new GuestAgentError('TIMEOUT', `no answer from the guest agent within ${timeoutMs} ms`)),
        timeoutMs,
      );
      const onAbort = () => fail(new GuestAgentError('ABORTED', 'connect aborted'));
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      client.connecting = {
        resolve: (c) => {
          client.connecting = undefined;
          client.ready = true;
          cleanup();
          resolve(c);
        },
        reject: (err) => {
          client.connecting = undefined;
          cleanup();
          reject(err);
        },
      };
    });
  }

  /** What the guest said in its last AUTH_OK. */
  get info(): AgentInfo {
    if (!this.agentInfo) throw new GuestAgentError('AUTH_REQUIRED', 'not authenticated yet');
    return this.agentInfo;
  }

  /**
   * Runs a command to completion and collects its output.
   * Rejects with EXEC_FAILED (the guest's reason, e.g. "no such file: foo"), TIMEOUT, ABORTED,
   * CLOSED, BUSY or BAD_REQUEST.
   *
   * @example
   * const r = await agent.exec(['sh', '-c', 'echo $A'], { env: { A: '1' }, timeoutMs: 10_000 });
   */
  exec(argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    return new Promise((resolve, reject) => {
      const limit = opts.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
      const startedAt = performance.now();
      const output = { stdout: [] as Buffer[], stderr: [] as Buffer[], stdoutBytes: 0, stderrBytes: 0 };
      let truncated = false;
      let started = false;
      let settled = false;
      const timers: NodeJS.Timeout[] = [];
      const ch = this.allocateChannel();

      const settle = (result: ExecResult | GuestAgentError) => {
        if (settled) return;
        settled = true;
        for (const t of timers) clearTimeout(t);
        opts.signal?.removeEventListener('abort', onAbort);
        this.channels.delete(ch);
        if (result instanceof GuestAgentError) reject(result);
        else resolve(result);
      };
      const killAndFail = (err: GuestAgentError) => {
        this.send(FrameType.Signal, ch, encodeU32(SIGKILL));
        settle(err);
      };
      const onAbort = () => killAndFail(new GuestAgentError('ABORTED', `${argv[0]}: aborted`));
      const collect = (stream: 'stdout' | 'stderr', data: Buffer) => {
        const key = stream === 'stdout' ? 'stdoutBytes' : 'stderrBytes';
        const room = limit - output[key];
        if (data.length > room) truncated = true;
        if (room <= 0) return;
        const kept = data.length > room ? data.subarray(0, room) : data;
        output[stream].push(kept);
        output[key] += kept.length;
      };

      if (this.closed) return settle(new GuestAgentError('CLOSED', 'the guest agent client is closed'));
      if (opts.signal?.aborted) return settle(new GuestAgentError('ABORTED', `${argv[0]}: aborted`));
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      if (opts.timeoutMs !== undefined)
        timers.push(
          setTimeout(
            () =>
              killAndFail(new GuestAgentError('TIMEOUT', `${argv[0]}: no exit within ${opts.timeoutMs} ms`)),
            opts.timeoutMs,
          ),
        );
      timers.push(
        setTimeout(() => {
          if (!started)
            killAndFail(new GuestAgentError('TIMEOUT', `${argv[0]}: the guest did not start it in time`));
        }, START_TIMEOUT_MS),
      );

      this.channels.set(ch, {
        fail: settle,
        frame: (type, payload) => {
          if (type === FrameType.Started) started = true;
          else if (type === FrameType.Stdout) collect('stdout', payload);
          else if (type === FrameType.Stderr) collect('stderr', payload);
          else if (type === FrameType.Error && !started) {
            const { code, message } = decodeError(payload);
            settle(new GuestAgentError(code, message));
          } else if (type === FrameType.Exit) {
            const { kind, value } = decodeExit(payload);
            if (kind === 'unstartable')
              return settle(new GuestAgentError('EXEC_FAILED', `${argv[0]}: could not start (${value})`));
            settle({
              ...exitOf(kind, value),
              stdout: Buffer.concat(output.stdout),
              stderr: Buffer.concat(output.stderr),
              truncated,
              durationMs: performance.now() - startedAt,
            });
          }
        },
      });
      const request: ExecRequest = { argv, env: opts.env, cwd: opts.cwd, user: opts.user };
      if (opts.stdin !== undefined) request.stdin = true;
      this.send(FrameType.Exec, ch, encodeExec(request));
      if (opts.stdin !== undefined) void this.pumpStdin(ch, Buffer.from(opts.stdin), () => settled);
    });
  }

  /**
   * Starts an interactive command (optionally in a pty).
   *
   * @example
   * const sh = agent.spawn(['sh'], { tty: { rows: 24, cols: 80 } });
   * sh.on('stdout', (b) => process.stdout.write(b));
   * sh.write('echo hi\n');
   */
  spawn(argv: string[], opts: SpawnOptions = {}): ExecSession {
    const ch = this.allocateChannel();
    const session = new ExecSession(ch, (type, payload) => this.send(type, ch, payload));
    if (this.closed) {
      process.nextTick(() =>
        session.settle(new GuestAgentError('CLOSED', 'the guest agent client is closed')),
      );
      return session;
    }
    this.channels.set(ch, new SpawnChannel(session, () => this.channels.delete(ch), argv[0] ?? ''));
    const request: ExecRequest = { argv, env: opts.env, cwd: opts.cwd, user: opts.user, tty: opts.tty };
    request.stdin = opts.stdin ?? true;
    this.send(FrameType.Exec, ch, encodeExec(request));
    return session;
  }

  /**
   * Replaces the guest's token (a clone wakes up holding its source's). Resolves once the guest
   * has applied it: later connections must use the new token.
   */
  setToken(token: string): Promise<void> {
    if (token.length < TOKEN_MIN_LENGTH || token.length > TOKEN_MAX_LENGTH || !/^[\x21-\x7e]+$/.test(token))
      return Promise.reject(
        new GuestAgentError(
          'BAD_REQUEST',
          `a token is ${TOKEN_MIN_LENGTH}..${TOKEN_MAX_LENGTH} printable ASCII characters`,
        ),
      );
    this.send(FrameType.SetToken, 0, Buffer.from(token));
    this.token = token;
    // Frames are handled in order: the PONG proves SET_TOKEN was applied.
    return this.roundTrip().then(() => undefined);
  }

  /** Resolves to the round trip in ms. */
  ping(timeoutMs = REQUEST_TIMEOUT_MS): Promise<number> {
    return this.roundTrip(timeoutMs);
  }

  /** Container mode: signals the workload's process group, then SIGKILLs it after timeoutS. */
  stopWorkload(signal: number, timeoutS: number): void {
    this.send(FrameType.Stop, 0, encodeStop(signal, timeoutS));
  }

  /** Container mode: the exit is recorded; the guest may power off. */
  ackExit(): void {
    this.send(FrameType.ExitAck, 0);
  }

  close(): void {
    this.shutDown(undefined);
  }

  private roundTrip(timeoutMs = REQUEST_TIMEOUT_MS): Promise<number> {
    return new Promise((resolve, reject) => {
      if (this.closed) return reject(new GuestAgentError('CLOSED', 'the guest agent client is closed'));
      const nonce = randomBytes(8);
      const key = nonce.toString('hex');
      const startedAt = performance.now();
      const done = (err?: GuestAgentError) => {
        clearTimeout(timer);
        this.pongs.delete(key);
        this.failures.delete(done);
        if (err) reject(err);
        else resolve(performance.now() - startedAt);
      };
      const timer = setTimeout(
        () => done(new GuestAgentError('TIMEOUT', `no PONG within ${timeoutMs} ms`)),
        timeoutMs,
      );
      this.pongs.set(key, () => done());
      this.failures.add(done);
      this.send(FrameType.Ping, 0, nonce);
    });
  }

  private allocateChannel(): number {
    const ch = this.nextChannel;
    this.nextChannel = ch >= 0xffffffff ? 1 : ch + 1;
    return ch;
  }

  private send(type: number, channel: number, payload?: Buffer): boolean {
    if (this.closed || this.socket.destroyed) return false;
    return this.socket.write(encodeFrame(type, channel, payload));
  }

  private async pumpStdin(ch: number, data: Buffer, stop: () => boolean): Promise<void> {
    for (const chunk of chunks(data)) {
      if (stop() || this.closed) return;
      if (!this.send(FrameType.Stdin, ch, chunk)) await this.drained();
    }
    if (!stop()) this.send(FrameType.StdinEof, ch);
  }

  private drained(): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
  }

  private sendAuth(): void {
    this.send(FrameType.Auth, 0, Buffer.from(this.token));
  }

  private onConnect(): void {
    if (this.endpoint.kind === 'vsock') {
      this.handshake = Buffer.alloc(0);
      this.socket.write(`CONNECT ${this.endpoint.vsockPort}\n`);
    } else {
      this.sendAuth();
    }
  }

  private onData(chunk: Buffer): void {
    if (this.handshake) {
      const buf = Buffer.concat([this.handshake, chunk]);
      const nl = buf.indexOf(0x0a);
      if (nl < 0) {
        this.handshake = buf;
        if (buf.length > 256)
          this.fail(new GuestAgentError('UNREACHABLE', 'vsock handshake: no answer line'));
        return;
      }
      const line = buf.subarray(0, nl).toString().trim();
      this.handshake = undefined;
      if (!/^OK \d+$/.test(line)) {
        this.fail(new GuestAgentError('UNREACHABLE', `vsock handshake refused: "${line}"`));
        return;
      }
      this.sendAuth();
      if (buf.length > nl + 1) this.onData(buf.subarray(nl + 1));
      return;
    }
    try {
      this.inbox.push(...this.decoder.push(chunk));
    } catch (err) {
      this.fail(err as GuestAgentError);
      return;
    }
    this.dispatchInbox();
  }

  private dispatchInbox(): void {
    while (!this.held && !this.closed && this.inbox.length) {
      const frame = this.inbox.shift()!;
      try {
        this.dispatch(frame);
      } catch (err) {
        const e =
          err instanceof GuestAgentError ? err : new GuestAgentError('PROTOCOL', String(err), { cause: err });
        this.fail(e);
        return;
      }
    }
  }

  private dispatch({ type, channel, payload }: Frame): void {
    if (channel !== 0) {
      this.channels.get(channel)?.frame(type, payload);
      return;
    }
    switch (type) {
      case FrameType.Hello:
        this.sendAuth();
        if (!this.connecting) {
          // A new guest-side session: it forgot our execs and pings.
          this.failPending(new GuestAgentError('CLOSED', 'the guest agent restarted its session'));
          this.emit('hello');
        }
        break;
      case FrameType.AuthOk:
        this.agentInfo = decodeInfo(payload);
        if (this.connecting) {
          this.connecting.resolve(this);
          this.held = true;
          setImmediate(() => {
            this.held = false;
            this.dispatchInbox();
          });
        }
        break;
      case FrameType.Error: {
        const { code, message } = decodeError(payload);
        if (code === 'AUTH_FAILED') this.fail(new GuestAgentError('AUTH_FAILED', `guest agent: ${message}`));
        break;
      }
      case FrameType.Pong:
        this.pongs.get(payload.toString('hex'))?.();
        break;
      case FrameType.Log:
        this.emit('log', decodeLog(payload));
        break;
      case FrameType.WorkloadStarted:
        this.emit('workload-started', decodeWorkloadStarted(payload));
        break;
      case FrameType.WorkloadExit:
        this.emit('workload-exit', decodeWorkloadExit(payload));
        break;
    }
  }

  private failPending(err: GuestAgentError): void {
    for (const ch of [...this.channels.values()]) ch.fail(err);
    this.channels.clear();
    for (const f of [...this.failures]) f(err);
  }

  /** Ends the connection because of err (rejecting connect() if it is still waiting). */
  private fail(err: GuestAgentError): void {
    if (this.connecting) this.connecting.reject(err);
    this.shutDown(err);
  }

  private shutDown(reason: GuestAgentError | undefined): void {
    if (this.closed) return;
    this.connecting?.reject(
      reason ?? new GuestAgentError('UNREACHABLE', 'closed before the guest agent authenticated us'),
    );
    this.closed = true;
    this.inbox.length = 0;
    this.socket.destroy();
    this.failPending(
      reason?.code === 'CLOSED'
        ? reason
        : new GuestAgentError(
            'CLOSED',
            `guest agent connection closed${reason ? `: ${reason.message}` : ''}`,
          ),
    );
    if (this.ready) this.emit('close', reason);
  }
}

/** The client's end of a spawn()ed session. */
class SpawnChannel implements Channel {
  private startTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly session: ExecSession,
    private readonly forget: () => void,
    private readonly command: string,
  ) {
    this.startTimer = setTimeout(() => {
      session.kill(SIGKILL);
      this.end(new GuestAgentError('TIMEOUT', `${command}: the guest did not start it in time`));
    }, START_TIMEOUT_MS);
  }

  frame(type: number, payload: Buffer): void {
    switch (type) {
      case FrameType.Started:
        clearTimeout(this.startTimer);
        this.session.pid = payload.readUInt32BE(0);
        this.session.emit('started', this.session.pid);
        break;
      case FrameType.Stdout:
        this.session.emit('stdout', payload);
        break;
      case FrameType.Stderr:
        this.session.emit('stderr', payload);
        break;
      case FrameType.Error:
        if (this.session.pid === undefined) {
          const { code, message } = decodeError(payload);
          this.end(new GuestAgentError(code, message));
        }
        break;
      case FrameType.Exit: {
        const { kind, value } = decodeExit(payload);
        this.end(
          kind === 'unstartable'
            ? new GuestAgentError('EXEC_FAILED', `${this.command}: could not start (${value})`)
            : exitOf(kind, value),
        );
        break;
      }
    }
  }

  fail(err: GuestAgentError): void {
    this.end(err);
  }

  private end(result: ExecExit | GuestAgentError): void {
    clearTimeout(this.startTimer);
    this.forget();
    this.session.settle(result);
  }
}
