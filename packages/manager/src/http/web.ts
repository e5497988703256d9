/**
 * Serves the web UI (the built single-page app in packages/web/dist) at `/`: hashed assets with a
 * long cache, everything else that looks like a client route gets index.html. API, docs and health
 * paths are never answered here, so an unknown API path still gets the JSON 404.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { App } from './app-type';

/**
 * Paths owned by the API, its aliases (`/v1`), its docs, health and metrics: the SPA fallback never
 * answers them, so an unknown one is the JSON 404 and not index.html with a 200.
 */
const RESERVED = /^\/(?:api|v\d+|docs|swagger-ui|healthz|readyz|livez|metrics|openapi\.json)(?:[/?#.]|$)/i;

const SECURITY_HEADERS: Record<string, string> = {
  // xterm.js and React style attributes need inline styles; scripts come from our origin only.
  'content-security-policy':
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
    "connect-src 'self'; font-src 'self' data:; object-src 'none'; base-uri 'self'; form-action 'self'; " +
    "frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'same-origin',
  'x-frame-options': 'DENY',
};

/**
 * Where the built UI is: NQVM_WEB_DIST, else packages/web/dist found from this module (works from
 * the sources and from the bundled CLI in packages/cli/dist).
 */
export function resolveWebDist(env: NodeJS.ProcessEnv = process.env): string {
  if (env.NQVM_WEB_DIST) return path.resolve(env.NQVM_WEB_DIST);
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [
    path.resolve(here, '../../../web/dist'), // packages/manager/src/http -> packages/web/dist
    path.resolve(here, '../../web/dist'), // packages/cli/dist -> packages/web/dist
    path.resolve(here, 'web'), // a dist/web folder shipped beside a bundle
  ];
  return candidates.find((c) => fs.existsSync(path.join(c, 'index.html'))) ?? candidates[0]!;
}

const NOT_BUILT = `<!doctype html><meta charset="utf-8"><title>nqvm</title>
<p>The nqvm web UI has not been built. Run <code>npm run build -w @nqvm/web</code> and reload.
The API is at <a href="/docs">/docs</a>.</p>`;

const registered = new WeakSet<object>();

/** Registers the UI routes once per app (a second call, e.g. from a test's `extend`, is a no-op). */
export function webRoutes(app: App, distDir: string): void {
  if (registered.has(app)) return;
  registered.add(app);
  const root = path.resolve(distDir);
  app.register(async (web) => {
    await web.register(fastifyStatic, { root, serve: false, suppressWarning: true, dotfiles: 'ignore' });

    const sendIndex = (reply: FastifyReply) => {
      reply.headers(SECURITY_HEADERS);
      if (!fs.existsSync(path.join(root, 'index.html')))
        return reply.status(503).type('text/html; charset=utf-8').send(NOT_BUILT);
      return reply.header('cache-control', 'no-cache').sendFile('index.html', root, { cacheControl: false });
    };

    const handler = async (req: FastifyRequest, reply: FastifyReply) => {
      const pathname = req.url.split('?')[0] ?? '/';
      if (RESERVED.test(pathname)) return reply.callNotFound();
      const last = pathname.slice(pathname.lastIndexOf('/') + 1);
      // Files (anything with an extension, and every hashed asset) come from dist or are a 404.
      if (pathname.startsWith('/assets/') || last.includes('.')) {
        reply.headers(SECURITY_HEADERS);
        const hashed = pathname.startsWith('/assets/');
        const file = (req.params as { '*'?: string })['*'] ?? pathname.slice(1);
        // Dot segments and empty segments never name a file of the build: plain 404, not a 403.
        if (/(^|[/\\])\.\.?([/\\]|$)|\/\/|\\/.test(file)) return reply.callNotFound();
        return reply.sendFile(file, root, {
          cacheControl: true,
          maxAge: hashed ? 365 * 86_400_000 : 0,
          immutable: hashed,
        });
      }
      return sendIndex(reply);
    };

    const opts = { config: { access: 'public' as const }, schema: { hide: true } };
    web.get('/', opts, handler);
    web.get('/*', opts, handler);
  });
}
