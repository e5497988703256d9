/**
 * Builds the HTTP API: Fastify with zod schemas (validation and OpenAPI from one source),
 * auth on every route, uniform errors, and an audit record for every mutation.
 */
import cookie from '@fastify/cookie';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import { frameworkErrorReply, NqvmError, routeNotFoundReply } from '@nqvm/api';
import Fastify, { type FastifyBaseLogger } from 'fastify';
import {
  jsonSchemaTransform,
  serializerCompiler,
  validatorCompiler,
  type ZodTypeProvider,
} from 'fastify-type-provider-zod';
import { actorOf } from '../auth/principal';
import { auditRoutes } from '../routes/audit';
import { authRoutes } from '../routes/auth';
import { consoleWsRoutes, registerConsoleWebSocket } from '../routes/console-ws';
import { containerRoutes } from '../routes/containers';
import { eventRoutes } from '../routes/events';
import { execWsRoutes } from '../routes/exec-ws';
import { healthRoutes } from '../routes/health';
import { hostRoutes } from '../routes/hosts';
import { imageRoutes } from '../routes/images';
import { metricsRoutes } from '../routes/metrics';
import { networkRoutes } from '../routes/networks';
import { operationRoutes } from '../routes/operations';
import { snapshotRoutes } from '../routes/snapshots';
import { templateRoutes } from '../routes/templates';
import { tokenRoutes, userRoutes } from '../routes/users';
import { vmConsoleRoutes, vmRoutes } from '../routes/vms';
import { volumeRoutes } from '../routes/volumes';
import type { Services } from '../services';
import type { App } from './app-type';
import { authHook } from './auth-hook';
import { clientErrorHandler, errorReplyOf, sendError } from './errors';
import { resolveWebDist, webRoutes } from './web';

export const BODY_LIMIT = 1024 * 1024;

export interface RegisteredRoute {
  method: string;
  url: string;
  access: string;
}

export interface BuildOptions {
  /** The process's logger (pino); without one the API logs nothing. */
  logger?: FastifyBaseLogger;
  https?: { cert: Buffer; key: Buffer };
  /** Extra routes (agent-facing work, web UI) registered by later layers. */
  extend?: (app: App, s: Services) => void | Promise<void>;
}

const MUTATING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * The path of the first string (or key) holding a NUL character, or null. PostgreSQL text cannot
 * store NUL, so it is refused at the edge on both datastores. Iterative: bodies may nest deeply.
 */
export function findNul(root: unknown, base: string): string | null {
  const stack: Array<[unknown, string]> = [[root, base]];
  while (stack.length) {
    const [v, at] = stack.pop()!;
    if (typeof v === 'string') {
      if (v.includes('\u0000')) return at;
    } else if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) stack.push([v[i], `${at}.${i}`]);
    } else if (v !== null && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        if (k.includes('\u0000')) return at;
        stack.push([x, `${at}.${k}`]);
      }
    }
  }
  return null;
}

/**
 * The canonical path for a request URL: `/v1/...` becomes `/api/v1/...`; everything else is kept.
 *
 * @example aliasApiPath('/v1/containers?limit=5') // '/api/v1/containers?limit=5'
 */
export function aliasApiPath(url: string): string {
  return /^\/v1(?:[/?#]|$)/.test(url) ? `/api${url}` : url;
}

export async function buildApp(
  s: Services,
  opts: BuildOptions = {},
): Promise<{ app: App; routes: RegisteredRoute[] }> {
  const app = Fastify({
    ...(opts.logger ? { loggerInstance: opts.logger } : { logger: false }),
    bodyLimit: BODY_LIMIT,
    ...(opts.https ? { https: opts.https } : {}),
    ajv: { customOptions: { coerceTypes: false } },
    // The seed's README shows both /v1/... and /api/v1/...: /v1 is an alias, routed (and
    // authorised) as /api/v1. The OpenAPI document lists /api/v1 only.
    rewriteUrl: (req) => aliasApiPath(req.url ?? '/'),
    clientErrorHandler,
    // Errors the router raises before any route runs (bad %-escapes, over-long path segments).
    frameworkErrors: (err, _req, reply) => sendError(reply, frameworkErrorReply(err)),
  }).withTypeProvider<ZodTypeProvider>() as unknown as App;

  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  // The API speaks JSON only; a text/plain body (a CORS "simple request") is refused with 415.
  app.removeContentTypeParser('text/plain');
  // Many clients send Content-Type: application/json with no body on actions (PATCH .../pause):
  // an empty body is an empty object; anything else goes through Fastify's own (poisoning-safe) parser.
  const parseJson = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) =>
    body.length === 0 ? done(null, {}) : parseJson(req, body.toString(), done),
  );

  const routes: RegisteredRoute[] = [];
  app.addHook('onRoute', (r) => {
    const access = r.config?.access;
    const url = r.url;
    // Swagger UI's own asset routes are public documentation.
    const isDocs = url === '/docs' || url.startsWith('/docs/');
    if (!access && !isDocs) throw new Error(`route ${r.method} ${url} declares no access rule`);
    if (isDocs && !access) r.config = { ...(r.config ?? {}), access: 'public' };
    for (const m of [r.method].flat()) {
      if (m !== 'HEAD') routes.push({ method: m, url, access: (r.config?.access ?? 'public') as string });
    }
  });

  // Set before any plugin registers: plugins (Swagger UI's routes) keep the handler of their parent at that time.
  app.setErrorHandler((err, req, reply) => sendError(reply, errorReplyOf(err as Error, req)));
  await app.register(cookie);
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'nqvm API',
        version: s.version,
        description: 'Manage microVMs: VMs, hosts, operations, events.',
      },
      components: {
        securitySchemes: {
          bearer: { type: 'http', scheme: 'bearer', description: 'API token (nqvm token create)' },
          session: { type: 'apiKey', in: 'cookie', name: 'nqvm_session' },
        },
      },
      security: [{ bearer: [] }, { session: [] }],
    },
    transform: jsonSchemaTransform,
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });

  // Before the auth hook: the WebSocket plugin's own hook closes upgrades that auth refuses.
  const wsSessions = await registerConsoleWebSocket(app);
  app.addHook('onRequest', authHook(s));
  app.addHook('preValidation', async (req) => {
    for (const [part, value] of [
      ['params', req.params],
      ['querystring', req.query],
      ['body', req.body],
    ] as const) {
      const at = findNul(value, part);
      if (at)
        throw new NqvmError('VALIDATION_FAILED', `invalid ${at}`, {
          fields: [{ path: at, message: 'must not contain NUL characters' }],
        });
    }
  });
  app.addHook('onResponse', async (req, reply) => {
    // The route template, never the raw path: ids and typos must not make new series.
    const route = req.routeOptions.config?.access === undefined ? null : (req.routeOptions.url ?? null);
    s.metrics.observeRequest(req.method, route, reply.statusCode, reply.elapsedTime / 1000);
  });
  app.addHook('onResponse', async (req, reply) => {
    const audit = req.routeOptions.config?.audit;
    if (!MUTATING.has(req.method) || audit === false || req.routeOptions.config?.access === undefined) return;
    const params = req.params as { id?: string } | undefined;
    const target =
      req.auditTarget ??
      // Only a well-formed id names a target (a malformed one may hold what the datastore cannot store).
      (typeof params?.id === 'string' && UUID_RE.test(params.id)
        ? { type: String(audit ?? 'resource').split('.')[0]!, id: params.id }
        : null);
    try {
      await s.audit.record({
        actor: actorOf(req.principal),
        action: audit ?? `${req.method} ${req.routeOptions.url}`,
        target,
        statusCode: reply.statusCode,
        ip: req.ip,
      });
    } catch (err) {
      req.log.error({ err }, 'could not write the audit record');
    }
  });

  app.setNotFoundHandler((req, reply) => sendError(reply, routeNotFoundReply(req.method, req.url)));

  healthRoutes(app, s);
  metricsRoutes(app, s);
  app.get('/api/v1/openapi.json', { config: { access: 'public' }, schema: { hide: true } }, async () =>
    app.swagger(),
  );
  app.get('/swagger-ui', { config: { access: 'public' }, schema: { hide: true } }, async (_req, reply) =>
    reply.redirect('/docs'),
  );
  app.get('/swagger-ui/', { config: { access: 'public' }, schema: { hide: true } }, async (_req, reply) =>
    reply.redirect('/docs'),
  );
  authRoutes(app, s);
  userRoutes(app, s);
  tokenRoutes(app, s);
  vmRoutes(app, s);
  vmConsoleRoutes(app, s);
  consoleWsRoutes(app, s, wsSessions);
  execWsRoutes(app, s, wsSessions);
  imageRoutes(app, s);
  volumeRoutes(app, s);
  templateRoutes(app, s);
  snapshotRoutes(app, s);
  containerRoutes(app, s);
  networkRoutes(app, s);
  operationRoutes(app, s);
  eventRoutes(app, s);
  hostRoutes(app, s, (hostId, hb) => s.reconciler.onHeartbeat(hostId, hb));
  auditRoutes(app, s);
  webRoutes(app, resolveWebDist());
  await opts.extend?.(app, s);

  await app.ready();
  return { app, routes };
}
