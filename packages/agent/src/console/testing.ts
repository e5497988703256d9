/** Test pieces for consoles: a VMM-held console without a VMM, and an opener built on it. */
import { appendFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import path from 'node:path';
import type { ConsoleClientMessage, ConsoleServerMessage } from '@nqvm/api';
import { WebSocket } from 'ws';
import type { ConsoleOpener, VmConsole } from '../agent/vm-console';
import { ConsoleHub } from './console-hub';

/**
 * Plays QEMU's part: a chardev socket server holding one client at a time, logging every byte
 * of output to an O_APPEND file whether or not a client is connected. With `echo`, input comes
 * back as output, as a guest's tty echoes keystrokes.
 */
export class FakeVmmConsole {
  client: Socket | null = null;
  readonly input: Buffer[] = [];
  private server: Server | null = null;

  constructor(
    readonly socketPath: string,
    readonly logPath: string,
    readonly opts: { echo?: boolean } = {},
  ) {}

  async listen(): Promise<void> {
    const server = createServer((s) => {
      this.client = s;
      s.on('data', (d: Buffer) => {
        this.input.push(d);
        if (this.opts.echo) this.output(d);
      });
      s.on('close', () => {
        if (this.client === s) this.client = null;
      });
      s.on('error', () => {});
    });
    this.server = server;
    await new Promise<void>((resolve) => server.listen(this.socketPath, resolve));
  }

  /**
   * Sends output. `refused`: offsets of bytes the socket refused once (full, the reader behind)
   * while a client is connected: QEMU logs such a byte on the refusal and again when its retry
   * goes through, and the client gets it once.
   */
  output(text: string | Uint8Array, refused: number[] = []): void {
    const bytes = Buffer.from(text);
    this.client?.write(bytes);
    const logged = this.client
      ? Buffer.concat([...bytes].map((b, i) => Buffer.from(refused.includes(i) ? [b, b] : [b])))
      : bytes;
    appendFileSync(this.logPath, logged);
  }

  /** Drops the current client, as QEMU does when the peer goes away. */
  kick(): void {
    this.client?.destroy();
    this.client = null;
  }

  async close(): Promise<void> {
    this.kick();
    const server = this.server;
    this.server = null;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/**
 * A ConsoleOpener for agents running a fake driver: each VM gets an echoing FakeVmmConsole in
 * `dir` that outlives agents (as QEMU's does), and the agent a real ConsoleHub attached to it.
 *
 * @example
 * const consoles = new FakeVmmConsoles(tempDir());
 * await createAgent(config, { drivers: [new FakeDriver()], openConsole: consoles.opener });
 * consoles.get(vmId)?.output('login: ');
 */
export class FakeVmmConsoles {
  private readonly consoles = new Map<string, FakeVmmConsole>();

  constructor(readonly dir: string) {}

  get(vmId: string): FakeVmmConsole | undefined {
    return this.consoles.get(vmId);
  }

  readonly opener: ConsoleOpener = async (handle) => {
    const id = handle.record.vmId;
    let fake = this.consoles.get(id);
    if (!fake) {
      fake = new FakeVmmConsole(path.join(this.dir, `${id}.sock`), path.join(this.dir, `${id}.log`), {
        echo: true,
      });
      await fake.listen();
      this.consoles.set(id, fake);
    }
    const hub = new ConsoleHub({
      socketPath: fake.socketPath,
      logPath: fake.logPath,
      attachSettleMs: 10,
      reconnectMinMs: 10,
    });
    await hub.attach();
    const console: VmConsole = {
      tail: async (bytes) => hub.tail(bytes),
      subscribe: (viewer, opts) => hub.subscribe(viewer, opts),
      write: (data) => hub.write(data),
      close: () => hub.close(),
    };
    return console;
  };

  async close(): Promise<void> {
    await Promise.all([...this.consoles.values()].map((c) => c.close()));
    this.consoles.clear();
  }
}

/**
 * A console WebSocket client for tests and benchmarks: collects output (as latin1 text) and
 * control messages, and waits for either.
 */
export class ConsoleTestClient {
  readonly messages: ConsoleServerMessage[] = [];
  /** Every output byte so far, as latin1 text. */
  output = '';
  readonly closed: Promise<{ code: number; reason: string }>;
  private readonly waiters = new Set<() => void>();

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data, binary) => {
      const buf = Buffer.isBuffer(data) ? data : Buffer.from(data as ArrayBuffer);
      if (binary) this.output += buf.toString('latin1');
      else this.messages.push(JSON.parse(buf.toString('utf8')) as ConsoleServerMessage);
      for (const w of [...this.waiters]) w();
    });
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        resolve({ code, reason: reason.toString() });
        for (const w of [...this.waiters]) w();
      });
    });
  }

  /**
   * Connects; rejects with `HTTP <status>: <body>` when the upgrade is refused.
   *
   * @example
   * const c = await ConsoleTestClient.connect(`${wsUrl}/api/v1/vms/${id}/console/ws`, { authorization: `Bearer ${token}` });
   * c.type('echo hi\r');
   * await c.waitForOutput('hi');
   */
  static connect(url: string, headers: Record<string, string> = {}): Promise<ConsoleTestClient> {
    const ws = new WebSocket(url, { headers, perMessageDeflate: false });
    const client = new ConsoleTestClient(ws);
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(client));
      ws.once('unexpected-response', (req, res) => {
        let body = '';
        res.on('data', (d: Buffer) => {
          body += d.toString();
        });
        res.on('end', () => {
          req.destroy();
          reject(new Error(`HTTP ${res.statusCode}: ${body}`));
        });
      });
      ws.once('error', reject);
    });
  }

  type(text: string | Uint8Array): void {
    this.ws.send(typeof text === 'string' ? Buffer.from(text, 'latin1') : text, { binary: true });
  }

  control(message: ConsoleClientMessage | Record<string, unknown>): void {
    this.ws.send(JSON.stringify(message));
  }

  /** Waits until the output (from byte `since` on) contains `text`. */
  waitForOutput(text: string, timeoutMs = 5_000, since = 0): Promise<void> {
    return this.until(
      () => this.output.indexOf(text, since) >= 0,
      `output ${JSON.stringify(text)}`,
      timeoutMs,
    );
  }

  /** Waits for a control message matching `pred` (among all received so far). */
  async waitForMessage<T extends ConsoleServerMessage['type']>(
    type: T,
    pred: (m: Extract<ConsoleServerMessage, { type: T }>) => boolean = () => true,
    timeoutMs = 5_000,
  ): Promise<Extract<ConsoleServerMessage, { type: T }>> {
    const find = () =>
      this.messages.find(
        (m): m is Extract<ConsoleServerMessage, { type: T }> =>
          m.type === type && pred(m as Extract<ConsoleServerMessage, { type: T }>),
      );
    await this.until(() => find() !== undefined, `a ${type} message`, timeoutMs);
    return find()!;
  }

  close(): void {
    this.ws.close();
  }

  private until(check: () => boolean, what: string, timeoutMs: number): Promise<void> {
    if (check()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = () => {
        if (!check()) return;
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(() => {
        this.waiters.delete(done);
        reject(
          new Error(
            `timed out waiting for ${what}; messages ${JSON.stringify(this.messages)}, output ${JSON.stringify(this.output.slice(-300))}`,
          ),
        );
      }, timeoutMs);
      this.waiters.add(done);
    });
  }
}
