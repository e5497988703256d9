/**
 * Slows down repeated failed logins, per user name and per client address: after a few
 * failures each further attempt must wait an exponentially growing delay (capped).
 */
const FREE_FAILURES = 5;
const WINDOW_MS = 15 * 60_000;
const MAX_DELAY_MS = 5 * 60_000;

interface Entry {
  failures: number;
  last: number;
}

export class LoginThrottle {
  private readonly entries = new Map<string, Entry>();

  /** Milliseconds the caller must still wait, 0 when an attempt is allowed now. */
  retryAfterMs(keys: string[], now = Date.now()): number {
    let wait = 0;
    for (const k of keys) {
      const e = this.entries.get(k);
      if (!e || now - e.last > WINDOW_MS || e.failures < FREE_FAILURES) continue;
      const delay = Math.min(MAX_DELAY_MS, 1000 * 2 ** (e.failures - FREE_FAILURES));
      wait = Math.max(wait, e.last + delay - now);
    }
    return Math.max(0, wait);
  }

  fail(keys: string[], now = Date.now()): void {
    for (const k of keys) {
      const e = this.entries.get(k);
      if (!e || now - e.last > WINDOW_MS) this.entries.set(k, { failures: 1, last: now });
      else this.entries.set(k, { failures: e.failures + 1, last: now });
    }
    if (this.entries.size > 100_000) this.sweep(now);
  }

  succeed(keys: string[]): void {
    for (const k of keys) this.entries.delete(k);
  }

  private sweep(now: number): void {
    for (const [k, e] of this.entries) if (now - e.last > WINDOW_MS) this.entries.delete(k);
  }
}
