/**
 * Slows down repeated failed logins without letting a stranger lock the owner out. Failures
 * count per (account, client address) and per client address; after a few, each further
 * attempt from there must wait an exponentially growing delay (capped). Only a flood against
 * one account from many addresses throttles the account itself, and even then the addresses
 * that logged in to it before still get in.
 */
const WINDOW_MS = 15 * 60_000;
const MAX_DELAY_MS = 5 * 60_000;
/** Failures allowed before the delays start, by what they count. */
const FREE = { pair: 5, address: 20, account: 100 } as const;
/** Addresses remembered per account as having logged in to it. */
const KNOWN_ADDRESSES = 16;

interface Entry {
  failures: number;
  last: number;
}

export class LoginThrottle {
  private readonly entries = new Map<string, Entry>();
  private readonly known = new Map<string, string[]>();

  /** Milliseconds the caller must still wait, 0 when an attempt is allowed now. */
  retryAfterMs(username: string, ip: string, now = Date.now()): number {
    const account = username.toLowerCase();
    const keys: Array<[string, number]> = [
      [pairKey(account, ip), FREE.pair],
      [`ip:${ip}`, FREE.address],
    ];
    if (!this.known.get(account)?.includes(ip)) keys.push([`u:${account}`, FREE.account]);
    let wait = 0;
    for (const [k, free] of keys) {
      const e = this.entries.get(k);
      if (!e || now - e.last > WINDOW_MS || e.failures < free) continue;
      const delay = Math.min(MAX_DELAY_MS, 1000 * 2 ** (e.failures - free));
      wait = Math.max(wait, e.last + delay - now);
    }
    return Math.max(0, wait);
  }

  fail(username: string, ip: string, now = Date.now()): void {
    const account = username.toLowerCase();
    for (const k of [pairKey(account, ip), `ip:${ip}`, `u:${account}`]) {
      const e = this.entries.get(k);
      if (!e || now - e.last > WINDOW_MS) this.entries.set(k, { failures: 1, last: now });
      else this.entries.set(k, { failures: e.failures + 1, last: now });
    }
    if (this.entries.size > 100_000) this.sweep(now);
  }

  /**
   * Clears what this account's failures from this address counted; the address's failures
   * against other accounts stay (one account of one's own must not reset a guessing run).
   */
  succeed(username: string, ip: string): void {
    const account = username.toLowerCase();
    this.entries.delete(pairKey(account, ip));
    const known = (this.known.get(account) ?? []).filter((a) => a !== ip);
    known.unshift(ip);
    this.known.set(account, known.slice(0, KNOWN_ADDRESSES));
    if (this.known.size > 100_000) this.known.clear();
  }

  private sweep(now: number): void {
    for (const [k, e] of this.entries) if (now - e.last > WINDOW_MS) this.entries.delete(k);
  }
}

function pairKey(account: string, ip: string): string {
  return `u:${account}@${ip}`;
}
