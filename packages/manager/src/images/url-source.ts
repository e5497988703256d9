/**
 * Opens an http(s) URL for an import: every hop's host (the URL's, then each redirect's) is
 * checked against the URL policy and the connection goes to the address checked; follows a few
 * redirects itself (http and https only), refuses an error answer or an announced size over the
 * limit, and hands back the body as a stream; nothing is buffered. A connection that fails
 * gets one neutral message whatever answered (or did not) on the port: an import is no port
 * scanner.
 */
import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import type { LookupFunction } from 'node:net';
import type { Readable } from 'node:stream';
import { NqvmError } from '@nqvm/api';
import { BlobTooLargeError } from './blob-store';
import type { PinnedAddress, UrlPolicy } from './url-policy';

export const MAX_REDIRECTS = 5;
/** A server silent this long (no answer, no body bytes) fails the import. */
const IDLE_TIMEOUT_MS = 120_000;

export interface OpenedUrl {
  body: Readable;
  /** Announced length, or null (chunked answer). */
  contentLength: number | null;
  /** The URL the bytes came from, after redirects. */
  finalUrl: string;
}

function failed(message: string, url: string, extra: Record<string, unknown> = {}): NqvmError {
  return new NqvmError('IMPORT_FAILED', message, { url, ...extra });
}

/** A lookup that answers the checked addresses, whatever the name resolves to now. */
function pinned(to: PinnedAddress[]): LookupFunction {
  return (_name, options, callback) => {
    if (options.all) (callback as (e: null, a: PinnedAddress[]) => void)(null, to);
    else callback(null, to[0]!.address, to[0]!.family);
  };
}

function get(target: URL, to: PinnedAddress[], signal?: AbortSignal): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = (target.protocol === 'https:' ? https : http).request(
      target,
      {
        // A pooled socket could be connected to another address than the one checked.
        agent: false,
        lookup: pinned(to),
        headers: { accept: '*/*', 'user-agent': 'nqvm-image-import' },
        timeout: IDLE_TIMEOUT_MS,
        signal,
      },
      resolve,
    );
    req.on('timeout', () => req.destroy(new Error(`no answer for ${IDLE_TIMEOUT_MS / 1000} s`)));
    req.on('error', reject);
    req.end();
  });
}

/**
 * @example
 * const { body, contentLength } = await openUrl('https://example.org/rootfs.ext4', {
 *   maxBytes: 64 << 30, policy, signal,
 * });
 */
export async function openUrl(
  url: string,
  opts: { maxBytes: number; policy: UrlPolicy; signal?: AbortSignal },
): Promise<OpenedUrl> {
  const { maxBytes, policy, signal } = opts;
  let current = url;
  let from: string | null = null;
  for (let hop = 0; ; hop++) {
    const target = new URL(current);
    const to = await policy.resolve(target, from);
    let res: IncomingMessage;
    try {
      res = await get(target, to, signal);
    } catch {
      if (signal?.aborted) throw signal.reason;
      throw failed(
        `GET ${current} failed: no HTTP answer (the connection was refused, closed or timed out)`,
        current,
      );
    }
    const status = res.statusCode ?? 0;
    if (status >= 300 && status < 400 && res.headers.location) {
      res.destroy();
      if (hop >= MAX_REDIRECTS) throw failed(`more than ${MAX_REDIRECTS} redirects from ${url}`, url);
      const next = new URL(res.headers.location, current);
      if (next.protocol !== 'http:' && next.protocol !== 'https:')
        throw failed(`${current} redirects to a ${next.protocol} URL; only http and https are fetched`, url);
      from = current;
      current = next.toString();
      continue;
    }
    if (status < 200 || status >= 300) {
      res.destroy();
      // The standard reason phrase, not the server's own words.
      throw failed(`GET ${current} answered ${status} ${http.STATUS_CODES[status] ?? ''}`.trim(), current, {
        status,
      });
    }
    const header = res.headers['content-length'];
    const contentLength = header !== undefined && /^\d+$/.test(header) ? Number(header) : null;
    if (contentLength !== null && contentLength > maxBytes) {
      res.destroy();
      throw new BlobTooLargeError(maxBytes);
    }
    return { body: res, contentLength, finalUrl: current };
  }
}
