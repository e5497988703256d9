/**
 * Shared helpers of the manager suites: uniform error checks, cookie sessions, a small SSE
 * client, a manager started without a preset admin password, and datastore snapshots.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { httpStatusOf, isErrorCode } from '@nqvm/api';
import { sql } from 'kysely';
import { expect } from 'vitest';
import { loadManagerConfig } from '../src/config';
import { type Datastore, openDatastore } from '../src/db/datastore';
import { createManager, type Manager } from '../src/manager';
import { type DatastoreKind, freshDatabaseUrl } from './harness';

export interface Reply {
  status: number;
  // biome-ignore lint/suspicious/noExplicitAny: JSON bodies of tests
  body: any;
  text: string;
  headers: Headers;
}

/** Answers why a response is not the uniform error body, or null when it is. */
export function uniformErrorProblem(r: { status: number; text: string; headers: Headers }): string | null {
  const ctype = r.headers.get('content-type') ?? '';
  if (!ctype.startsWith('application/json')) return `content-type is "${ctype}"`;
  let body: unknown;
  try {
    body = JSON.parse(r.text);
  } catch {
    return `body is not JSON: ${r.text.slice(0, 200)}`;
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return 'body is not an object';
  const keys = Object.keys(body);
  if (keys.length !== 1 || keys[0] !== 'error') return `body keys are ${JSON.stringify(keys)}`;
  const e = (body as { error: unknown }).error as Record<string, unknown>;
  if (typeof e !== 'object' || e === null) return 'error is not an object';
  const extra = Object.keys(e).filter((k) => !['code', 'message', 'details'].includes(k));
  if (extra.length) return `error has extra keys ${JSON.stringify(extra)}`;
  if (typeof e.code !== 'string' || !/^[A-Z][A-Z_]*$/.test(e.code))
    return `code ${JSON.stringify(e.code)} is not a stable code`;
  if (typeof e.message !== 'string' || e.message.length === 0) return 'message is missing';
  if (
    e.details !== undefined &&
    (typeof e.details !== 'object' || e.details === null || Array.isArray(e.details))
  ) {
    return 'details is not an object';
  }
  if (!isErrorCode(e.code)) return `code ${e.code} is not in the error catalogue`;
  const known = httpStatusOf(e.code);
  if (known !== r.status) return `code ${e.code} means ${known} but the status is ${r.status}`;
  return null;
}

export function expectError(r: Reply, status: number, code: string): void {
  expect({ status: r.status, code: r.body?.error?.code }, r.text).toEqual({ status, code });
  expect(uniformErrorProblem(r)).toBeNull();
}

/** Paths named in a 400 VALIDATION_FAILED answer, e.g. ["body.name"]. */
export function failingFields(r: Reply): string[] {
  return ((r.body?.error?.details?.fields ?? []) as Array<{ path: string }>).map((f) => f.path);
}

export interface Session {
  cookie: string;
  csrf: string;
  setCookies: string[];
  // biome-ignore lint/suspicious/noExplicitAny: JSON body
  body: any;
}

export async function login(url: string, username: string, password: string): Promise<Session> {
  const res = await fetch(`${url}/api/v1/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username, password }),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`login failed: ${res.status} ${text}`);
  const setCookies = res.headers.getSetCookie();
  const body = JSON.parse(text);
  return {
    cookie: setCookies.map((c) => c.split(';')[0]).join('; '),
    csrf: body.csrf_token,
    setCookies,
    body,
  };
}

/** A raw request (any body text and headers); answers like `client()` does. */
export async function raw(
  url: string,
  method: string,
  p: string,
  opts: { headers?: Record<string, string>; body?: string | Uint8Array } = {},
): Promise<Reply> {
  const res = await fetch(`${url}${p}`, {
    method,
    headers: opts.headers ?? {},
    body: opts.body as BodyInit | undefined,
    redirect: 'manual',
  });
  const text = await res.text();
  let body: unknown;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    body = undefined;
  }
  return { status: res.status, body, text, headers: res.headers };
}

// ---- Server-Sent Events ------------------------------------------------------------------

export interface SseEvent {
  id: string | null;
  event: string;
  // biome-ignore lint/suspicious/noExplicitAny: JSON payload
  data: any;
}

/** A streaming SSE client over fetch with a minimal parser (id, event, data, comments, retry). */
export class SseClient {
  readonly events: SseEvent[] = [];
  private readonly waiters = new Set<() => void>();
  private closed = false;
  private constructor(
    readonly status: number,
    readonly headers: Headers,
    private readonly abort: AbortController,
  ) {}

  static async open(url: string, headers: Record<string, string>, query = ''): Promise<SseClient> {
    const abort = new AbortController();
    const res = await fetch(`${url}/api/v1/events${query}`, {
      headers: { accept: 'text/event-stream', ...headers },
      signal: abort.signal,
    });
    const c = new SseClient(res.status, res.headers, abort);
    if (res.status !== 200 || !res.body) {
      await res.text().catch(() => undefined);
      c.closed = true;
      return c;
    }
    void c.pump(res.body);
    return c;
  }

  private async pump(body: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    let buf = '';
    try {
      for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
        buf += decoder.decode(chunk, { stream: true }).replace(/\r\n?/g, '\n');
        let end = buf.indexOf('\n\n');
        while (end >= 0) {
          this.parseBlock(buf.slice(0, end));
          buf = buf.slice(end + 2);
          end = buf.indexOf('\n\n');
        }
      }
    } catch {
      // aborted
    }
    this.closed = true;
    this.notify();
  }

  private parseBlock(block: string): void {
    let id: string | null = null;
    let event = 'message';
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'id') id = value;
      else if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length === 0) return; // retry: or comment-only blocks dispatch nothing
    this.events.push({ id, event, data: JSON.parse(data.join('\n')) });
    this.notify();
  }

  private notify(): void {
    for (const w of this.waiters) w();
  }

  /** Waits until an event matches; throws after timeoutMs. */
  async waitFor(pred: (e: SseEvent) => boolean, timeoutMs = 5000): Promise<SseEvent> {
    const found = () => this.events.find(pred);
    const now = found();
    if (now) return now;
    return new Promise<SseEvent>((resolve, reject) => {
      const check = () => {
        const e = found();
        if (e) {
          done();
          resolve(e);
        } else if (this.closed) {
          done();
          reject(new Error('the event stream ended'));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new Error(
            `no matching event within ${timeoutMs} ms; got ${this.events.map((e) => e.event).join(', ')}`,
          ),
        );
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
    this.abort.abort();
  }
}

// ---- managers and datastores ---------------------------------------------------------------

export interface BareManager {
  manager: Manager;
  url: string;
  store: Datastore;
  dbUrl: string;
  close(): Promise<void>;
}

/**
 * A manager on a fresh datastore with only the given environment (no preset admin password),
 * or on an existing datastore when `dbUrl` is given.
 */
export async function startBare(
  kind: DatastoreKind,
  env: Record<string, string> = {},
  dbUrl?: string,
): Promise<BareManager> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-test-'));
  const db = dbUrl ? { url: dbUrl, drop: async () => {} } : await freshDatabaseUrl(kind, dataDir);
  const config = loadManagerConfig({
    NQVM_DATA_DIR: dataDir,
    DATABASE_URL: db.url,
    MANAGER_BIND: '127.0.0.1:0',
    NQVM_LOG_LEVEL: 'silent',
    ...env,
  });
  const store = await openDatastore(config.databaseUrl);
  const manager = await createManager(config, { store, loopIntervalMs: 100 });
  const url = await manager.listen();
  return {
    manager,
    url,
    store,
    dbUrl: db.url,
    async close() {
      await manager.close();
      await store.close();
      await db.drop();
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Every table of the datastore (both dialects), migrations bookkeeping excluded. */
export async function tableNames(store: Datastore): Promise<string[]> {
  const tables = await store.db.introspection.getTables();
  return tables
    .map((t) => t.name)
    .filter((n) => !n.startsWith('kysely_'))
    .sort();
}

export async function rowsOf(store: Datastore, table: string): Promise<Record<string, unknown>[]> {
  const { rows } = await sql<Record<string, unknown>>`select * from ${sql.table(table)}`.execute(store.db);
  return rows;
}

/**
 * A comparable picture of the stored state: every table except the append-only logs, rows
 * sorted, usage timestamps (touched by authentication itself) left out.
 */
export async function snapshot(
  store: Datastore,
  skip: string[] = ['audit_events', 'events'],
): Promise<Record<string, string[]>> {
  const out: Record<string, string[]> = {};
  for (const t of await tableNames(store)) {
    if (skip.includes(t)) continue;
    const rows = await rowsOf(store, t);
    out[t] = rows
      .map((r) => {
        const { last_used_at: _u, last_seen_at: _s, ...rest } = r;
        return JSON.stringify(Object.entries(rest).sort(([a], [b]) => a.localeCompare(b)));
      })
      .sort();
  }
  return out;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export const CAPACITY = { vcpu: 8, mem_mib: 16_384, disk_mib: 100_000, kvm: false, drivers: [] };

/** Creates a join token as admin and registers an agent with it; answers the host credential. */
export async function registerHost(
  url: string,
  adminToken: string,
  name: string,
): Promise<{ hostId: string; credential: string; joinToken: string; joinTokenId: string }> {
  const jt = await fetch(`${url}/api/v1/join-tokens`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ description: `for ${name}` }),
  });
  if (jt.status !== 201) throw new Error(`join token: ${jt.status} ${await jt.text()}`);
  const { token, id } = (await jt.json()) as { token: string; id: string };
  const reg = await fetch(`${url}/api/v1/agent/register`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    // A refused local port: the reconciler's agent calls fail at once instead of waiting on DNS.
    body: JSON.stringify({ name, address: 'http://127.0.0.1:9', agent_version: '0.1.0', capacity: CAPACITY }),
  });
  if (reg.status !== 201) throw new Error(`register: ${reg.status} ${await reg.text()}`);
  const out = (await reg.json()) as { host_id: string; credential: string };
  return { hostId: out.host_id, credential: out.credential, joinToken: token, joinTokenId: id };
}

/**
 * Polls `probe` until it answers something truthy. The bound is generous (60 s): these tests
 * run against both datastores at once, in parallel with others, on 2-core machines.
 */
export async function until<T>(
  what: string,
  probe: () => Promise<T | undefined | null | false>,
  ms = 60_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
