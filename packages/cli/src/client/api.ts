/**
 * The CLI's HTTP client for the nqvm API: JSON in and out, Bearer token auth, TLS trusted by the
 * system CAs, a CA file, or a pinned certificate fingerprint. Errors carry the API's stable code.
 */
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import { connectPinned } from '@nqvm/api/tls-pin';
import type { TlsSettings } from './config';

/** The API answered with an error, or could not be reached (status 0). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export interface Connection {
  server: string;
  token: string | null;
  tls: TlsSettings;
}

export type Query = Record<string, string | number | boolean | undefined | null>;

export interface RequestOptions {
  body?: unknown;
  query?: Query;
  /** A raw body streamed as application/octet-stream (uploads). */
  stream?: Readable;
  contentLength?: number;
  headers?: Record<string, string>;
  /** Called as the raw body is sent: bytes so far. */
  onUploadProgress?: (sent: number) => void;
  /** Sees the response's headers (e.g. the session cookie at login). */
  onHeaders?: (headers: http.IncomingHttpHeaders) => void;
  /** How long to wait for the answer (default 120 s; an exec waits for its command). */
  timeoutMs?: number;
}

export interface Page<T> {
  items: T[];
  next: string | null;
}

const REQUEST_TIMEOUT_MS = 120_000;

export class ApiClient {
  private readonly base: URL;
  private readonly ca: Buffer | undefined;

  constructor(readonly conn: Connection) {
    this.base = new URL(conn.server);
    this.ca = conn.tls.ca_file ? readFileSync(conn.tls.ca_file) : undefined;
  }

  url(pathname: string, query?: Query): URL {
    const u = new URL(pathname, this.base);
    for (const [k, v] of Object.entries(query ?? {})) {
      if (v !== undefined && v !== null && v !== '') u.searchParams.set(k, String(v));
    }
    return u;
  }

  /** Options for http(s).request and `ws` so they trust the server as this context says. */
  transportOptions(url: URL): Pick<https.RequestOptions, 'ca' | 'createConnection' | 'agent'> {
    if (url.protocol !== 'https:') return {};
    const pin = this.conn.tls.fingerprint;
    if (pin) {
      return {
        // Node uses createConnection only when no agent is given.
        agent: undefined,
        createConnection: (_opts: unknown, oncreate: (err: Error | null, s?: unknown) => void) => {
          connectPinned(url, pin).then(
            (socket) => oncreate(null, socket),
            (err: Error) => oncreate(err),
          );
          return undefined;
        },
      } as Pick<https.RequestOptions, 'createConnection' | 'agent'>;
    }
    return this.ca ? { ca: this.ca } : {};
  }

  authHeaders(): Record<string, string> {
    return this.conn.token ? { authorization: `Bearer ${this.conn.token}` } : {};
  }

  get<T>(pathname: string, query?: Query): Promise<T> {
    return this.request<T>('GET', pathname, { query });
  }

  post<T>(pathname: string, body?: unknown, query?: Query): Promise<T> {
    return this.request<T>('POST', pathname, { body: body ?? {}, query });
  }

  patch<T>(pathname: string, body: unknown): Promise<T> {
    return this.request<T>('PATCH', pathname, { body });
  }

  delete<T>(pathname: string, query?: Query): Promise<T> {
    return this.request<T>('DELETE', pathname, { query });
  }

  /** Every item of a paginated list, following `next` cursors. */
  async all<T>(pathname: string, query: Query = {}): Promise<T[]> {
    const out: T[] = [];
    let cursor: string | null = null;
    do {
      const page: Page<T> = await this.get<Page<T>>(pathname, { limit: 200, ...query, cursor });
      out.push(...page.items);
      cursor = page.next;
    } while (cursor);
    return out;
  }

  /**
   * A GET whose body is read as it arrives (followed logs): resolves with the response once its
   * status is a success, rejects with the API's error otherwise. No timeout: a follow may be quiet.
   */
  stream(pathname: string, query?: Query): Promise<http.IncomingMessage> {
    const url = this.url(pathname, query);
    const mod = url.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const req = mod.request(
        url,
        {
          method: 'GET',
          headers: { accept: 'text/plain', ...this.authHeaders() },
          ...this.transportOptions(url),
        },
        (res) => {
          if ((res.statusCode ?? 0) < 400) return resolve(res);
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () =>
            reject(errorOf(res.statusCode ?? 0, res.headers, Buffer.concat(chunks).toString('utf8'))),
          );
        },
      );
      req.on('error', (err: Error) =>
        reject(
          err instanceof ApiError
            ? err
            : new ApiError(0, 'UNREACHABLE', `cannot reach ${url.origin}: ${err.message}`),
        ),
      );
      req.end();
    });
  }

  request<T>(method: string, pathname: string, opts: RequestOptions = {}): Promise<T> {
    const url = this.url(pathname, opts.query);
    const headers: Record<string, string> = {
      accept: 'application/json',
      ...this.authHeaders(),
      ...opts.headers,
    };
    let payload: Buffer | undefined;
    if (opts.stream) {
      headers['content-type'] = 'application/octet-stream';
      if (opts.contentLength !== undefined) headers['content-length'] = String(opts.contentLength);
    } else if (opts.body !== undefined) {
      payload = Buffer.from(JSON.stringify(opts.body));
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(payload.length);
    }
    const mod = url.protocol === 'https:' ? https : http;
    const timeout = opts.timeoutMs ?? REQUEST_TIMEOUT_MS;
    return new Promise<T>((resolve, reject) => {
      const req = mod.request(url, { method, headers, timeout, ...this.transportOptions(url) }, (res) => {
        opts.onHeaders?.(res.headers);
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          const status = res.statusCode ?? 0;
          if (status >= 400) {
            reject(errorOf(status, res.headers, text));
            return;
          }
          resolve((jsonOf(res.headers, text) ?? (text || null)) as T);
        });
      });
      req.on('timeout', () => req.destroy(new Error(`no answer from ${url.origin} in ${timeout / 1000} s`)));
      req.on('error', (err: Error) => {
        reject(
          err instanceof ApiError
            ? err
            : new ApiError(0, 'UNREACHABLE', `cannot reach ${url.origin}: ${err.message}`),
        );
      });
      if (opts.stream) {
        let sent = 0;
        opts.stream.on('data', (c: Buffer) => {
          sent += c.length;
          opts.onUploadProgress?.(sent);
        });
        opts.stream.on('error', (err) => req.destroy(err));
        opts.stream.pipe(req);
      } else {
        req.end(payload);
      }
    });
  }
}

function jsonOf(headers: http.IncomingHttpHeaders, text: string): unknown {
  if (!text || !/json/.test(String(headers['content-type']))) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** The API's error from an error answer: its `{error: {code, message, details}}` body, or the status. */
export function errorOf(status: number, headers: http.IncomingHttpHeaders, text: string): ApiError {
  const e = (
    jsonOf(headers, text) as {
      error?: { code?: string; message?: string; details?: Record<string, unknown> };
    } | null
  )?.error;
  return new ApiError(
    status,
    e?.code ?? `HTTP_${status}`,
    e?.message ?? (text.trim().slice(0, 300) || `HTTP ${status}`),
    e?.details,
  );
}
