/**
 * Raw-body uploads for the image suites, with full control of headers and pacing (fetch hides
 * Content-Length and buffers), so a test can send a body slowly or be cut off mid-way.
 */
import http from 'node:http';
import { type Reply, sleep } from './helpers';

export function upload(
  url: string,
  token: string,
  query: string,
  chunks: Buffer[],
  opts: { contentLength?: number | null; delayMs?: number } = {},
): Promise<Reply> {
  const total = chunks.reduce((n, c) => n + c.length, 0);
  const length = opts.contentLength === undefined ? total : opts.contentLength;
  return new Promise((resolve, reject) => {
    const req = http.request(`${url}/api/v1/images/upload?${query}`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${token}`,
        'content-type': 'application/octet-stream',
        ...(length === null ? { 'transfer-encoding': 'chunked' } : { 'content-length': String(length) }),
      },
    });
    req.on('response', (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d) => parts.push(d));
      res.on('end', () => {
        const text = Buffer.concat(parts).toString('utf8');
        let body: unknown;
        try {
          body = JSON.parse(text);
        } catch {
          body = undefined;
        }
        const headers = new Headers();
        for (const [k, v] of Object.entries(res.headers)) if (typeof v === 'string') headers.set(k, v);
        resolve({ status: res.statusCode ?? 0, body, text, headers });
      });
    });
    // The server may answer (and close) before the whole body went out.
    req.on('error', reject);
    void (async () => {
      for (const c of chunks) {
        if (req.destroyed) return;
        if (!req.write(c)) await new Promise((r) => req.once('drain', r));
        if (opts.delayMs) await sleep(opts.delayMs);
      }
      req.end();
    })();
  });
}

export function chunksOf(b: Buffer, size = 256 * 1024): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < b.length; i += size) out.push(b.subarray(i, i + size));
  return out;
}
