/**
 * A socket that speaks raw frames, for tests: a host that misbehaves on purpose, or a fake guest
 * in front of the real client.
 */
import net from 'node:net';
import { encodeFrame, type Frame, FrameDecoder } from './protocol';

export class FrameSocket {
  private readonly decoder = new FrameDecoder();
  private readonly queue: Frame[] = [];
  private readonly waiters = new Set<() => void>();
  /** Resolves when the peer closed the connection. */
  readonly closed: Promise<void>;
  isClosed = false;

  constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.queue.push(...this.decoder.push(chunk));
      for (const w of [...this.waiters]) w();
    });
    socket.on('error', () => {});
    this.closed = new Promise((resolve) =>
      socket.on('close', () => {
        this.isClosed = true;
        for (const w of [...this.waiters]) w();
        resolve();
      }),
    );
  }

  static connect(path: string): Promise<FrameSocket> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection(path, () => resolve(new FrameSocket(s)));
      s.once('error', reject);
    });
  }

  send(type: number, channel: number, payload?: Buffer): void {
    this.socket.write(encodeFrame(type, channel, payload));
  }

  /** The next frame (of those not taken yet) that matches; rejects on close or timeout. */
  next(match: (f: Frame) => boolean = () => true, timeoutMs = 10_000): Promise<Frame> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const i = this.queue.findIndex(match);
        if (i >= 0) {
          done();
          resolve(this.queue.splice(i, 1)[0]!);
        } else if (this.isClosed) {
          done();
          reject(new Error('connection closed'));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no matching frame within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  close(): void {
    this.socket.destroy();
  }
}
