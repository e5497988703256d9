/**
 * Opens an http(s) URL for an import: follows a few redirects itself (http and https only),
 * refuses an error answer or an announced size over the limit, and hands back the body as a
 * stream; nothing is buffered.
 */
import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { NqvmError } from '@nqvm/api';
import { BlobTooLargeError } from './blob-store';

export const MAX_REDIRECTS = 5;

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

/**
 * @example
 * const { body, contentLength } = await openUrl('https://example.org/rootfs.ext4', 64 << 30, signal);
 */
export async function openUrl(url: string, maxBytes: number, signal?: AbortSignal): Promise<OpenedUrl> {
  let current = url;
  for (let hop = 0; ; hop++) {
    let res: Response;
    try {
      res = await fetch(current, { redirect: 'manual', signal });
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      const cause = (err as Error & { cause?: Error }).cause?.message ?? (err as Error).message;
      throw failed(`GET ${current} failed: ${cause}`, current);
    }
    if (res.status >= 300 && res.status < 400 && res.headers.has('location')) {
      await res.body?.cancel();
      if (hop >= MAX_REDIRECTS) throw failed(`more than ${MAX_REDIRECTS} redirects from ${url}`, url);
      const next = new URL(res.headers.get('location')!, current);
      if (next.protocol !== 'http:' && next.protocol !== 'https:')
        throw failed(`${current} redirects to a ${next.protocol} URL; only http and https are fetched`, url);
      current = next.toString();
      continue;
    }
    if (!res.ok || !res.body) {
      await res.body?.cancel();
      throw failed(`GET ${current} answered ${res.status} ${res.statusText}`.trim(), current, {
        status: res.status,
      });
    }
    const header = res.headers.get('content-length');
    const contentLength = header !== null && /^\d+$/.test(header) ? Number(header) : null;
    if (contentLength !== null && contentLength > maxBytes) {
      await res.body.cancel();
      throw new BlobTooLargeError(maxBytes);
    }
    return {
      body: Readable.fromWeb(res.body as unknown as WebReadableStream<Uint8Array>),
      contentLength,
      finalUrl: current,
    };
  }
}
