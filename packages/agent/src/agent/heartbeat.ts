/**
 * Heartbeats to the manager: one every interval (the manager may change it in its answer), and
 * one right after any VM change (at most one per `debounceMs`: a burst is sent as its first
 * change and one more beat), so a start or a crash is known at once.
 * A 401 means the host credential was revoked: the heartbeater stops and says so; it never
 * keeps failing silently.
 */
import { type AgentLogger, errorMessage } from './logger';
import { type HeartbeatBody, type ManagerClient, ManagerRequestError } from './manager-client';

export interface HeartbeaterOptions {
  client: () => ManagerClient;
  /** The current host credential (rotation may change it between beats). */
  credential: () => string;
  collect: () => Promise<HeartbeatBody>;
  intervalS: number;
  /** The least time between two beats sent for VM changes, so a burst of changes is sent in few. */
  debounceMs: number;
  log: AgentLogger;
  /** A heartbeat with these VM reports reached the manager. */
  onDelivered: (body: HeartbeatBody) => void;
  /** The manager refused the credential: heartbeats have stopped. */
  onRevoked: (err: ManagerRequestError) => void;
}

export class Heartbeater {
  private timer: NodeJS.Timeout | null = null;
  private dueAt = Number.POSITIVE_INFINITY;
  private inflight: Promise<void> | null = null;
  private again = false;
  private stopped = false;
  private failing = false;
  private intervalMs: number;
  /** When the last beat was sent (Date.now()). */
  private lastBeatAt = Number.NEGATIVE_INFINITY;

  constructor(private readonly opts: HeartbeaterOptions) {
    this.intervalMs = opts.intervalS * 1000;
  }

  get interval(): number {
    return this.intervalMs;
  }

  start(): void {
    this.schedule(0);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /** A VM changed: beat now, or once `debounceMs` has passed since the last beat. */
  poke(): void {
    const at = Math.max(Date.now(), this.lastBeatAt + this.opts.debounceMs);
    if (at < this.dueAt) this.schedule(at - Date.now());
  }

  /** Sends one heartbeat now (after the one in flight); resolves when it is done. */
  async beatNow(): Promise<void> {
    while (this.inflight) await this.inflight;
    await this.beat();
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.dueAt = Date.now() + ms;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.dueAt = Number.POSITIVE_INFINITY;
      void this.beat();
    }, ms);
    this.timer.unref();
  }

  private beat(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.inflight) {
      this.again = true;
      return this.inflight;
    }
    this.lastBeatAt = Date.now();
    this.inflight = this.send().finally(() => {
      this.inflight = null;
      if (this.again) {
        this.again = false;
        this.schedule(0);
      } else if (!this.timer) {
        this.schedule(this.intervalMs);
      }
    });
    return this.inflight;
  }

  private async send(): Promise<void> {
    const credential = this.opts.credential();
    try {
      const body = await this.opts.collect();
      const res = await this.opts.client().heartbeat(credential, body);
      this.intervalMs = Math.max(1, res.heartbeat_interval_s) * 1000;
      if (this.failing) this.opts.log.info({}, 'heartbeats reach the manager again');
      this.failing = false;
      this.opts.onDelivered(body);
    } catch (err) {
      if (err instanceof ManagerRequestError && err.unauthorized) {
        // A rotation that landed while this beat was in flight is not a revocation.
        if (credential !== this.opts.credential()) {
          this.again = true;
          return;
        }
        this.stop();
        this.opts.onRevoked(err);
        return;
      }
      if (!this.failing) {
        // A refusal other than 401 means the two sides disagree on the protocol: louder.
        const refused = err instanceof ManagerRequestError && err.status !== null && err.status < 500;
        const level = refused ? 'error' : 'warn';
        this.opts.log[level]({ err: errorMessage(err) }, 'heartbeat failed; retrying every interval');
      }
      this.failing = true;
    }
  }
}
