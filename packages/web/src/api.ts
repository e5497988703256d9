/**
 * The API client: same-origin fetch with the session cookie, the double-submit CSRF header on
 * every mutation, and the API's uniform error body turned into an ApiError.
 */
import type { Page } from './types';

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

const SAFE = new Set(['GET', 'HEAD', 'OPTIONS']);
let memoryCsrf: string | null = null;
let onUnauthorized: (() => void) | null = null;

export function setCsrfToken(token: string | null): void {
  memoryCsrf = token;
}

/** Called when a request answers 401 (the session ended or expired). */
export function setUnauthorizedHandler(fn: (() => void) | null): void {
  onUnauthorized = fn;
}

function csrfToken(): string | null {
  const m = /(?:^|;\s*)nqvm_csrf=([^;]*)/.exec(document.cookie);
  return m?.[1] ? decodeURIComponent(m[1]) : memoryCsrf;
}

export async function request(
  method: string,
  path: string,
  body?: unknown,
  signal?: AbortSignal,
): Promise<Response> {
  const headers: Record<string, string> = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (!SAFE.has(method)) {
    const token = csrfToken();
    if (token) headers['x-csrf-token'] = token;
  }
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      signal,
    });
  } catch (err) {
    if ((err as Error).name === 'AbortError') throw err;
    throw new ApiError(0, 'NETWORK', 'the manager cannot be reached; check your connection');
  }
  if (!res.ok) {
    let code = `HTTP_${res.status}`;
    let message = res.statusText || `the manager answered ${res.status}`;
    let details: Record<string, unknown> | undefined;
    try {
      const j = (await res.json()) as {
        error?: { code: string; message: string; details?: Record<string, unknown> };
      };
      if (j?.error) ({ code, message, details } = j.error);
    } catch {
      // not JSON: keep the status text
    }
    if (res.status === 401 && path !== '/api/v1/auth/login') onUnauthorized?.();
    throw new ApiError(res.status, code, message, details);
  }
  return res;
}

export async function api<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
  const res = await request(method, path, body, signal);
  const text = await res.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

/**
 * Sends a file as the raw body of a POST with XMLHttpRequest, which (unlike fetch) reports
 * upload progress; answers the JSON response or throws an ApiError with the API's message.
 */
export function uploadFile<T>(
  path: string,
  file: Blob,
  onProgress: (sent: number, total: number) => void,
  signal?: AbortSignal,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', path);
    xhr.withCredentials = true;
    xhr.setRequestHeader('accept', 'application/json');
    xhr.setRequestHeader('content-type', 'application/octet-stream');
    const token = csrfToken();
    if (token) xhr.setRequestHeader('x-csrf-token', token);
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    xhr.onerror = () =>
      reject(new ApiError(0, 'NETWORK', 'the upload was interrupted; check your connection'));
    xhr.onabort = () => reject(new DOMException('the upload was cancelled', 'AbortError'));
    xhr.onload = () => {
      let body: { error?: { code: string; message: string; details?: Record<string, unknown> } } | null =
        null;
      try {
        body = xhr.responseText ? JSON.parse(xhr.responseText) : null;
      } catch {
        // not JSON: the status text stands
      }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body as T);
      if (xhr.status === 401) onUnauthorized?.();
      const e = body?.error;
      reject(
        new ApiError(
          xhr.status,
          e?.code ?? `HTTP_${xhr.status}`,
          e?.message ?? (xhr.statusText || `the manager answered ${xhr.status}`),
          e?.details,
        ),
      );
    };
    signal?.addEventListener('abort', () => xhr.abort(), { once: true });
    xhr.send(file);
  });
}

export const get = <T>(path: string, signal?: AbortSignal) => api<T>('GET', path, undefined, signal);

export function withQuery(path: string, q: Record<string, string | number | undefined | null>): string {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v !== undefined && v !== null && v !== '') p.set(k, String(v));
  const s = p.toString();
  return s ? `${path}${path.includes('?') ? '&' : '?'}${s}` : path;
}

const PAGE = 500;
const MAX_PAGES = 40;

/** Every item of a list endpoint (follows `next`; stops after MAX_PAGES pages). */
export async function listAll<T>(path: string, signal?: AbortSignal): Promise<T[]> {
  const out: T[] = [];
  let cursor: string | null = null;
  for (let i = 0; i < MAX_PAGES; i++) {
    const page: Page<T> = await get<Page<T>>(withQuery(path, { limit: PAGE, cursor }), signal);
    out.push(...page.items);
    if (!page.next) break;
    cursor = page.next;
  }
  return out;
}

/** The newest `keep` items of an oldest-first list endpoint. */
export async function listTail<T>(path: string, keep: number, signal?: AbortSignal): Promise<T[]> {
  let tail: T[] = [];
  let cursor: string | null = null;
  for (let i = 0; i < MAX_PAGES; i++) {
    const page: Page<T> = await get<Page<T>>(withQuery(path, { limit: PAGE, cursor }), signal);
    tail = tail.concat(page.items).slice(-keep);
    if (!page.next) break;
    cursor = page.next;
  }
  return tail;
}

/** A human message for any error: the API's error.message plus the failing fields. */
export function errorMessage(err: unknown): string {
  if (err instanceof ApiError) {
    const fields = err.details?.fields;
    if (Array.isArray(fields) && fields.length) {
      const list = fields
        .map((f: { path?: string; message?: string }) => `${f.path ?? ''}: ${f.message ?? 'invalid'}`)
        .join('; ');
      return `${err.message} (${list})`;
    }
    return err.message;
  }
  if (err instanceof Error) return err.message;
  return String(err);
}

/**
 * The failing fields of a 400 under `prefix`, keyed by the rest of their path; the first message
 * of each field wins.
 * @example fieldErrors(err, 'body.overrides') // { vcpu: 'Too big: expected number to be <=32' }
 */
export function fieldErrors(err: unknown, prefix: string): Record<string, string> {
  const out: Record<string, string> = {};
  const fields = err instanceof ApiError ? err.details?.fields : undefined;
  if (!Array.isArray(fields)) return out;
  for (const f of fields as { path?: string; message?: string }[]) {
    const path = f.path ?? '';
    if (!path.startsWith(`${prefix}.`)) continue;
    const rest = path.slice(prefix.length + 1);
    out[rest] ??= f.message ?? 'invalid';
  }
  return out;
}
