/**
 * One VM's connection to its guest agent: made when first needed, shared by every exec (the
 * channel carries one connection: a QEMU chardev takes one client, a new vsock connection
 * replaces the old), and made again after the guest or the VMM dropped it.
 */
import type { GuestAgentClient } from '@nqvm/guest-agent';
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
   * `timeoutMs` (no agent in the guest, the guest still booting) or no VMM runs.
   */
  get(timeoutMs: number): Promise<GuestAgentClient> {
    if (this.client) return Promise.resolve(this.client);
    if (this.connecting) return this.connecting;
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
        this.client = client;
        client.once('close', () => {
          if (this.client === client) this.client = null;
        });
        this.onConnect?.(client);
        return client;
      })
      .finally(() => {
        if (this.connecting === attempt) this.connecting = null;
      });
    this.connecting = attempt;
    return attempt;
  }

  /** Drops the connection (the VMM stopped or is replaced); a later get() makes a new one. */
  reset(): void {
    this.generation++;
    this.connecting = null;
    const client = this.client;
    this.client = null;
    client?.close();
  }
}
