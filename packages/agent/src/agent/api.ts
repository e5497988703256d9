/**
 * The agent's HTTP API, called by the manager. Every route but `GET /v1/healthz` requires the
 * manager's Ed25519 signature over method, path, timestamp and body; work is accepted with 202
 * and reported through heartbeats (and `GET /v1/vms`).
 */
import { createHash, type KeyObject, timingSafeEqual } from 'node:crypto';
import { PassThrough } from 'node:stream';
import {
  AgentExec,
  AgentExecResult,
  AgentHostPort,
  AgentHostPortParams,
  AgentLogsQuery,
  AgentSnapshot,
  AgentSnapshotCreate,
  AgentSnapshotList,
  AgentVmCommand,
  AgentVmList,
  AgentVmReport,
  AgentVmStats,
  checkSignatureHeaders,
  clientErrorHandler,
  type ErrorReply,
  frameworkErrorReply,
  NONCE_HEADER,
  NqvmError,
  ReplayGuard,
  routeNotFoundReply,
  SIGNATURE_HEADER,
  TIMESTAMP_HEADER,
  toErrorReply,
  VmMetrics,
  verifyManagerSignature,
} from '@nqvm/api';
import { VmUsageHistory, VmUsageQuery } from '@nqvm/api/vm-usage';
import Fastify, {
  type FastifyBaseLogger,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  LogController,
} from 'fastify';
import { serializerCompiler, validatorCompiler, type ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { formatLogLine } from '../containers/container-run';
import { RESOLUTIONS, type UsageHistory } from '../metrics/usage-history';
import type { VolumeStore } from '../volumes/volume-store';
import { consoleWsRoutes, registerConsoleWebSocket } from './console-ws';
import { execWsRoutes } from './exec-ws';
import { isVmId } from './state-files';
import type { VmRegistry } from './vm-registry';

export const AGENT_BODY_LIMIT = 1024 * 1024;
export const CONSOLE_TAIL_DEFAULT = 64 * 1024;
export const CONSOLE_TAIL_MAX = 1024 * 1024;

/** Lowercase only: the id names the VM's folder, so one VM has exactly one spelling. */
const VmIdParams = z.object({ id: z.string().refine(isVmId, 'a lowercase UUID') });
/** Volume and snapshot ids name files too: validated the same way before any path is built. */
const VolumeIdParams = z.object({ id: z.string().refine(isVmId, 'a lowercase UUID') });
const SnapshotIdParams = VolumeIdParams;
const VmSnapshotParams = z.object({
  id: z.string().refine(isVmId, 'a lowercase UUID'),
  snapshot_id: z.string().refine(isVmId, 'a lowercase UUID'),
});
const ConsoleQuery = z.object({
  tail: z.coerce.number().int().min(0).max(CONSOLE_TAIL_MAX).default(CONSOLE_TAIL_DEFAULT),
});

export interface AgentApiDeps {
  vms: VmRegistry;
  volumes: VolumeStore;
  /** The manager's public key; null before registration (then every signed route answers 401). */
  managerKey: () => KeyObject | null;
  logger: FastifyBaseLogger;
  /** Whether a program on the host listens on a port (a forward of it would shadow it). */
  listensOn?: (proto: 'tcp' | 'udp', port: number) => Promise<boolean>;
  /** Serves `GET /metrics` (Prometheus text); absent: no such route. */
  metrics?: { scrape(): Promise<string>; readonly contentType: string };
  /** A bearer token that may scrape `/metrics` instead of a manager signature; null: none. */
  metricsToken?: string | null;
  /** Each VM's usage over time (`GET /v1/vms/{id}/usage`); absent: no such route. */
  usage?: UsageHistory;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route needs no manager signature. */
    public?: boolean;
    /** The route also takes the metrics token instead of a manager signature. */
    metrics?: boolean;
  }
  interface FastifyRequest {
    /** The request carried the metrics token (then no signature is checked). */
    metricsBearer?: boolean;
  }
}

/** Compares a presented secret with the configured one in constant time (by their digests). */
function sameSecret(presented: string, expected: string): boolean {
  const a = createHash('sha256').update(presented).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

/** The manager's signature time of a request (verified by then). */
function signedAt(req: FastifyRequest): number {
  return Number(req.headers[TIMESTAMP_HEADER]);
}

function sendError(reply: FastifyReply, r: ErrorReply): FastifyReply {
  return reply.status(r.status).type('application/json; charset=utf-8').send(r.body);
}

function isPublic(req: FastifyRequest): boolean {
  return req.routeOptions.config?.public === true;
}

/**
 * Builds the API (not listening yet).
 *
 * @example
 * const app = await buildAgentApi({ vms, managerKey: () => key, logger });
 * await app.listen({ host: '127.0.0.1', port: 9090 });
 */
export async function buildAgentApi(deps: AgentApiDeps): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: deps.logger,
    // Per-request lines would log every manager poll; failures are logged where they happen.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: AGENT_BODY_LIMIT,
    clientErrorHandler,
    frameworkErrors: (err, _req, reply) => sendError(reply, frameworkErrorReply(err)),
  }).withTypeProvider<ZodTypeProvider>();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  const consoleSessions = await registerConsoleWebSocket(app);

  // Bodies are kept as bytes: the signature covers them exactly as sent. JSON is parsed once
  // the signature holds, so an unsigned caller learns nothing from parse or validation errors.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));

  const replays = new ReplayGuard();
  app.addHook('onRequest', async (req) => {
    if (isPublic(req)) return;
    if (req.routeOptions.config?.metrics && deps.metricsToken) {
      const m = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '');
      if (m && sameSecret(m[1]!, deps.metricsToken)) {
        req.metricsBearer = true;
        return;
      }
    }
    checkSignatureHeaders({
      timestamp: req.headers[TIMESTAMP_HEADER] as string | undefined,
      nonce: req.headers[NONCE_HEADER] as string | undefined,
      signature: req.headers[SIGNATURE_HEADER] as string | undefined,
    });
  });
  app.addHook('preValidation', async (req) => {
    if (isPublic(req) || req.metricsBearer) return;
    const key = deps.managerKey();
    if (!key) throw new NqvmError('UNAUTHENTICATED', 'this agent has not registered with a manager yet');
    const raw = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    verifyManagerSignature(
      {
        method: req.method,
        url: req.url,
        timestamp: req.headers[TIMESTAMP_HEADER] as string | undefined,
        nonce: req.headers[NONCE_HEADER] as string | undefined,
        signature: req.headers[SIGNATURE_HEADER] as string | undefined,
        body: raw,
      },
      key,
      replays,
    );
    if (raw.length === 0) {
      req.body = undefined;
      return;
    }
    try {
      req.body = JSON.parse(raw.toString('utf8'));
    } catch {
      throw new NqvmError('INVALID_JSON', 'the body is not valid JSON');
    }
  });

  app.setErrorHandler((err, req, reply) => {
    const r = toErrorReply(err, 'agent');
    if (r.unexpected) req.log.error({ err }, 'unhandled error');
    return sendError(reply, r);
  });
  app.setNotFoundHandler((req, reply) => sendError(reply, routeNotFoundReply(req.method, req.url)));

  app.get('/v1/healthz', { config: { public: true } }, async () => ({ status: 'ok' }));

  // Prometheus text: signed by the manager (it relays it), or with the metrics token.
  const metrics = deps.metrics;
  if (metrics) {
    app.get('/metrics', { config: { metrics: true } }, async (_req, reply) =>
      reply
        .type(metrics.contentType)
        .header('cache-control', 'no-store')
        .send(await metrics.scrape()),
    );
  }

  app.get(
    '/v1/host/ports/:proto/:port',
    { schema: { params: AgentHostPortParams, response: { 200: AgentHostPort } } },
    async (req) => ({
      ...req.params,
      listening: (await deps.listensOn?.(req.params.proto, req.params.port)) ?? false,
    }),
  );

  app.get('/v1/vms', { schema: { response: { 200: AgentVmList } } }, async () => ({
    items: deps.vms.reports(),
  }));

  app.put(
    '/v1/vms/:id',
    { schema: { params: VmIdParams, body: AgentVmCommand, response: { 202: AgentVmReport } } },
    async (req, reply) =>
      reply.status(202).send(await deps.vms.apply(req.params.id, req.body, signedAt(req))),
  );

  app.delete(
    '/v1/vms/:id',
    { schema: { params: VmIdParams, response: { 202: AgentVmReport } } },
    async (req, reply) => reply.status(202).send(deps.vms.delete(req.params.id, signedAt(req))),
  );

  app.get(
    '/v1/vms/:id/console',
    { schema: { params: VmIdParams, querystring: ConsoleQuery } },
    async (req, reply) => {
      const tail = await deps.vms.consoleTail(req.params.id, req.query.tail);
      if (!tail) throw new NqvmError('VM_NOT_FOUND', { id: req.params.id });
      return reply.type('application/octet-stream').send(tail);
    },
  );

  app.get(
    '/v1/vms/:id/metrics',
    { schema: { params: VmIdParams, response: { 200: VmMetrics } } },
    async (req) => {
      const metrics = await deps.vms.metrics(req.params.id);
      if (!metrics) throw new NqvmError('VM_NOT_FOUND', { id: req.params.id });
      return metrics;
    },
  );

  const usage = deps.usage;
  if (usage) {
    app.get(
      '/v1/vms/:id/usage',
      { schema: { params: VmIdParams, querystring: VmUsageQuery, response: { 200: VmUsageHistory } } },
      async (req) => {
        if (!deps.vms.has(req.params.id)) throw new NqvmError('VM_NOT_FOUND', { id: req.params.id });
        const { resolution } = req.query;
        return {
          vm_id: req.params.id,
          resolution,
          step_s: RESOLUTIONS[resolution].stepMs / 1000,
          points: usage.points(req.params.id, resolution, Date.now()) ?? [],
        };
      },
    );
  }

  // Removes a volume's file from this host (204 also when there is none: deletes are retried).
  app.delete('/v1/volumes/:id', { schema: { params: VolumeIdParams } }, async (req, reply) => {
    const user = deps.vms.volumeUser(req.params.id);
    if (user) {
      const message = `volume ${req.params.id} is attached to VM ${user}, which runs`;
      throw new NqvmError('VOLUME_IN_USE', message, { vm_id: user });
    }
    await deps.volumes.remove(req.params.id);
    return reply.status(204).send();
  });

  // A container's output as text lines; `follow` keeps the response open until the VM is down.
  app.get(
    '/v1/vms/:id/logs',
    { schema: { params: VmIdParams, querystring: AgentLogsQuery } },
    async (req, reply) => {
      const vm = deps.vms.runtime(req.params.id);
      if (!vm) throw new NqvmError('VM_NOT_FOUND', { id: req.params.id });
      const q = req.query;
      const timestamps = q.timestamps === '1' || q.timestamps === 'true';
      const wanted = (l: { stream: string }) => q.stream === 'all' || l.stream === q.stream;
      const lines = await vm.containerLines(q.tail);
      if (lines === null)
        throw new NqvmError('VM_INVALID_STATE', 'this VM runs no container: it has no logs');
      const out = new PassThrough();
      reply.type('text/plain; charset=utf-8').header('cache-control', 'no-store');
      for (const l of lines) if (wanted(l)) out.write(formatLogLine(l, timestamps));
      if (q.follow !== '1' && q.follow !== 'true') {
        out.end();
        return reply.send(out);
      }
      const stop = vm.followContainer(
        (l) => wanted(l) && out.write(formatLogLine(l, timestamps)),
        () => out.end(),
      );
      out.once('close', stop);
      req.raw.once('close', () => {
        stop();
        out.destroy();
      });
      return reply.send(out);
    },
  );

  app.get(
    '/v1/vms/:id/stats',
    { schema: { params: VmIdParams, response: { 200: AgentVmStats } } },
    async (req) => {
      const vm = deps.vms.runtime(req.params.id);
      if (!vm) throw new NqvmError('VM_NOT_FOUND', { id: req.params.id });
      return vm.stats();
    },
  );

  app.post(
    '/v1/vms/:id/exec',
    { schema: { params: VmIdParams, body: AgentExec, response: { 200: AgentExecResult } } },
    async (req) => deps.vms.exec(req.params.id, req.body),
  );

  // Takes a snapshot and answers once its files are written (seconds, minutes for big guests).
  app.put(
    '/v1/vms/:id/snapshots/:snapshot_id',
    {
      schema: { params: VmSnapshotParams, body: AgentSnapshotCreate, response: { 200: AgentSnapshot } },
    },
    async (req) => deps.vms.snapshot(req.params.id, req.params.snapshot_id, req.body.type),
  );

  app.get('/v1/snapshots', { schema: { response: { 200: AgentSnapshotList } } }, async () => ({
    items: await deps.vms.snapshots(),
  }));

  // 204 also when there is none: deletes are retried.
  app.delete('/v1/snapshots/:id', { schema: { params: SnapshotIdParams } }, async (req, reply) => {
    await deps.vms.deleteSnapshot(req.params.id);
    return reply.status(204).send();
  });

  consoleWsRoutes(app, consoleSessions, deps.vms);
  execWsRoutes(app, deps.vms);

  return app;
}
