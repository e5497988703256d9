/**
 * Prometheus scrapes: the manager's own series at `/metrics`, and each host's agent relayed at
 * `/api/v1/hosts/{id}/metrics` (signed by the manager, so Prometheus needs only the manager's
 * credential). Both take an operator's token or session, or NQVM_METRICS_TOKEN.
 */
import { IdParams } from '@nqvm/api';
import type { App } from '../http/app-type';
import type { Services } from '../services';

const TEXT_FORMAT =
  'Prometheus text exposition format 0.0.4 (`text/plain; version=0.0.4`). Needs an operator ' +
  'token or session, or the metrics token (NQVM_METRICS_TOKEN) as a bearer token.';

export function metricsRoutes(app: App, s: Services): void {
  app.get(
    '/metrics',
    {
      config: { access: 'metrics', audit: false },
      schema: {
        tags: ['system'],
        summary: "The manager's metrics for Prometheus",
        description: `${TEXT_FORMAT} README "Metrics" lists the series.`,
      },
    },
    async (_req, reply) =>
      reply
        .type(s.metrics.contentType)
        .header('cache-control', 'no-store')
        .send(await s.metrics.scrape()),
  );

  app.get(
    '/api/v1/hosts/:id/metrics',
    {
      config: { access: 'metrics', audit: false },
      schema: {
        tags: ['hosts'],
        summary: "A host agent's metrics (per-VM CPU, memory, disk, network; host use), relayed",
        description: TEXT_FORMAT,
        params: IdParams,
      },
    },
    async (req, reply) => {
      const host = await s.hosts.getRow(req.params.id);
      const text = await s.agents.scrapeMetrics(host.address);
      return reply.type(text.contentType).header('cache-control', 'no-store').send(text.body);
    },
  );
}
