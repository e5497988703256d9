/**
 * One VM's connection to its guest agent: made when first needed, shared by every exec (the
 * channel carries one connection: a QEMU chardev takes one client, a new vsock connection
 * replaces the old), and made again after the guest or the VMM dropped it.
 */
import { type GuestAgentClient, GuestAgentError } from '@nqvm/guest-agent';
import type { RunRecord } from '../drivers/types';
import { connectGuest } from './guest-channel';

export class GuestLink {
  private client: GuestAgentClient | null = null;
  private connecting: Promise<GuestAgentClient> | null = null;
  private generation = 0;

  constructor(
    /** The running VMM's record; null while none runs. */
    private readonly record: () => RunRecord | null,
    private readonly token: () => Promise<string>,
    /** Called with each new connection (a container's log and exit listeners). */
    private readonly onConnect?: (client: GuestAgentClient) => void,
  ) {}

  get connected(): boolean {
    return this.client !== null;
  }

  /**
   * The open connection, or a new one; rejects when the guest agent does not answer within
   * `timeoutMs` (no agent in the guest, the guest still booting) or no VMM runs. A caller that
   * finds a connection being made waits for it, but no longer than its own `timeoutMs`.
   */
  get(timeoutMs: number): Promise<GuestAgentClient> {
    if (this.client) return Promise.resolve(this.client);
    if (this.connecting) return within(this.connecting, timeoutMs);
    const record = this.record();
    if (!record) return Promise.reject(new Error('no VMM runs for this VM'));
    const generation = this.generation;
    const attempt = this.token()
      .then((token) => connectGuest(record, token, timeoutMs))
      .then((client) => {
        if (generation !== this.generation) {
          client.close();
          throw new Error('the VMM changed while connecting to its guest agent');
        }
        this.keep(client);
        return client;
      })
      .finally(() => {
        if (this.connecting === attempt) this.connecting = null;
      });
    this.connecting = attempt;
    return attempt;
  }

  /**
   * Takes over a connection made elsewhere to the current VMM's guest agent (the one that
   * re-identified a restored clone), so the next exec needs no new handshake.
   */
  adopt(client: GuestAgentClient): void {
    this.reset();
    this.keep(client);
  }

  /** Drops the connection (the VMM stopped or is replaced); a later get() makes a new one. */
  reset(): void {
    this.generation++;
    this.connecting = null;
    const client = this.client;
    this.client = null;
    client?.close();
  }

  private keep(client: GuestAgentClient): void {
    this.client = client;
    client.once('close', () => {
      if (this.client === client) this.client = null;
    });
    this.onConnect?.(client);
  }
}

/** `attempt`, or a TIMEOUT rejection after `timeoutMs` (the attempt itself goes on). */
function within<T>(attempt: Promise<T>, timeoutMs: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new GuestAgentError('TIMEOUT', `no answer from the guest agent within ${timeoutMs} ms`)),
      timeoutMs,
    );
    attempt.then(resolve, reject).finally(() => clearTimeout(timer));
  });
}
