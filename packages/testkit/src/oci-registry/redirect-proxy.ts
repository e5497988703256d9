/**
 * A front for a registry that answers blob GETs with a 307 to another host (a second server on
 * 127.0.0.2), the way registries hand blobs to object storage. The "storage" side records the Authorization header each request carried, so a test can check a
 * client does not leak registry credentials to it.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

export interface RedirectProxy {
  /** `http://127.0.0.1:<port>` */
  url: string;
  host: string;
  /** The Authorization header (or null) of every request the storage side served. */
  storageRequests: Array<{ path: string; authorization: string | null }>;
  stop(): Promise<void>;
}

export async function startRedirectProxy(opts: {
  upstream: string;
  /** Authorization the storage side uses towards the registry. */
  upstreamAuthorization?: string;
}): Promise<RedirectProxy> {
  const storageRequests: RedirectProxy['storageRequests'] = [];
  const server = createServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  const storage = createServer((req, res) => {
    serveStorage(req, res).catch(() => res.destroy());
  });
  async function handle(req: IncomingMessage, res: ServerResponse) {
    const path = req.url ?? '/';
    const blob = /^\/v2\/(.+)\/blobs\/(sha256:[0-9a-f]{64})$/.exec(path);
    if (req.method === 'GET' && blob) {
      res.writeHead(307, { location: `${storageUrl}/storage/${blob[1]}/${blob[2]}?sig=x` });
      return res.end();
    }
    const headers: Record<string, string> = {};
    for (const name of ['authorization', 'accept'] as const) {
      const v = req.headers[name];
      if (v) headers[name] = v;
    }
    return forward(res, path, req.method ?? 'GET', headers);
  }
  async function serveStorage(req: IncomingMessage, res: ServerResponse) {
    const path = req.url ?? '/';
    storageRequests.push({ path, authorization: req.headers.authorization ?? null });
    const stored = /^\/storage\/(.+)\/(sha256:[0-9a-f]{64})\?/.exec(path);
    if (!stored) {
      res.writeHead(404);
      return res.end();
    }
    return forward(res, `/v2/${stored[1]}/blobs/${stored[2]}`, 'GET', {
      ...(opts.upstreamAuthorization ? { authorization: opts.upstreamAuthorization } : {}),
    });
  }
  async function forward(res: ServerResponse, path: string, method: string, headers: Record<string, string>) {
    const up = await fetch(`${opts.upstream}${path}`, { method, headers, redirect: 'manual' });
    const out: Record<string, string> = {};
    up.headers.forEach((v, k) => {
      if (k !== 'content-encoding' && k !== 'transfer-encoding' && k !== 'connection') out[k] = v;
    });
    res.writeHead(up.status, out);
    if (up.body) await pipeline(Readable.fromWeb(up.body as import('node:stream/web').ReadableStream), res);
    else res.end();
  }
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  await new Promise<void>((resolve) => storage.listen(0, '127.0.0.2', resolve));
  const port = (server.address() as AddressInfo).port;
  const storageUrl = `http://127.0.0.2:${(storage.address() as AddressInfo).port}`;
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    storageRequests,
    stop: async () => {
      for (const s of [server, storage]) {
        s.closeAllConnections();
        await new Promise<void>((resolve) => s.close(() => resolve()));
      }
    },
  };
}
