/**
 * Prometheus scrapes: the manager's own series at `/metrics`, and each host's agent relayed at
 * `/api/v1/hosts/{id}/metrics` (signed by the manager, so Prometheus needs only the manager's
 * credential). Both take an operator's token or session, or NQVM_METRICS_TOKEN. Also each VM's
 * usage history, relayed from the agent that keeps it.
 */
import { IdParams } from '@nqvm/api';
import { VmUsageHistory, VmUsageQuery } from '@nqvm/api/vm-usage';
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
    '/api/v1/vms/:id/usage',
    {
      config: { access: 'viewer' },
      schema: {
        tags: ['vms'],
        summary: "A VM's CPU, memory, disk and network over time, as its host keeps them",
        description:
          '`resolution=1s`: a point a second for the last 10 minutes; `1m`: a point a minute for 7 days. ' +
          'Counters are cumulative since the VMM started: rates come from consecutive points. ' +
          'Empty while the VM has not run on its host since the agent started.',
        params: IdParams,
        querystring: VmUsageQuery,
        response: { 200: VmUsageHistory },
      },
    },
    async (req) => {
      const vm = await s.vms.getRow(req.params.id);
      if (!vm.host_id)
        return {
          vm_id: vm.id,
          resolution: req.query.resolution,
          step_s: req.query.resolution === '1s' ? 1 : 60,
          points: [],
        };
      const host = await s.hosts.getRow(vm.host_id);
      return s.agents.usage(host.address, vm.id, req.query.resolution);
    },
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
