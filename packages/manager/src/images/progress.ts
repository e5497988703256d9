/**
 * Throttled progress of an image operation: at most one datastore write in flight, a new one
 * when the percentage moved by a point or half a second passed, and a keep-alive so a stalled
 * but live import is told apart from one a stopped manager left behind. When the operation is
 * no longer active (cancelled, maybe on another manager), `onGone` fires once.
 */
import type { Operations } from '../operations/operations';

const MIN_INTERVAL_MS = 500;
export const KEEPALIVE_MS = 30_000;

export class ProgressReporter {
  private sent = { percent: -1, at: 0, message: '' };
  private latest: { percent: number; message: string } | null = null;
  private inFlight: Promise<void> | null = null;
  private readonly keepalive: NodeJS.Timeout;
  private stopped = false;

  constructor(
    private readonly ops: Operations,
    private readonly opId: string,
    private readonly onGone: () => void,
  ) {
    this.keepalive = setInterval(() => {
      if (!this.inFlight) this.push(this.latest ?? { percent: 0, message: 'starting' }, true);
    }, KEEPALIVE_MS);
    this.keepalive.unref();
  }

  report(percent: number, message: string): void {
    if (this.stopped) return;
    this.latest = { percent: Math.floor(Math.max(0, Math.min(99, percent))), message };
    const due = this.latest.percent >= this.sent.percent + 1 || Date.now() - this.sent.at >= MIN_INTERVAL_MS;
    if (due && !this.inFlight) this.push(this.latest, false);
  }

  /** Stops reporting and waits for the write in flight, so a final update comes after it. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.keepalive);
    await this.inFlight;
  }

  private push(p: { percent: number; message: string }, force: boolean): void {
    if (!force && p.percent === this.sent.percent && p.message === this.sent.message) return;
    this.sent = { ...p, at: Date.now() };
    this.inFlight = this.ops
      .update(this.opId, { status: 'running', percent: p.percent, message: p.message })
      .then(
        (op) => {
          if (op === null) this.onGone();
        },
        () => undefined,
      )
      .finally(() => {
        this.inFlight = null;
        if (!this.stopped && this.latest && this.latest !== p)
          this.report(this.latest.percent, this.latest.message);
      });
  }
}

/** "12.5 MiB" */
export function mib(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}
