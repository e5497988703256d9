/**
 * The manager's /metrics on both datastores: who may scrape (operators and the metrics token,
 * nobody else, and the token nowhere else), series in a format promtool accepts, values that
 * move with the API's use, and an agent's metrics relayed through `/api/v1/hosts/{id}/metrics`.
 */

import type { Agent } from '@nqvm/agent';
import { FakeDriver } from '@nqvm/agent/agent/fake-driver';
import { startStandaloneAgent, tempDir } from '@nqvm/agent/agent/testing';
import { parseExposition, promtoolProblems, sampleValue } from '@nqvm/testkit/prometheus';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  client,
  DATASTORES,
  registerDefaultKernel,
  startManager,
  type TestManager,
  userWithRole,
} from './harness';
import { expectError, raw, until } from './helpers';

const METRICS_TOKEN = 'prometheus-scrape-token-0123456789';

describe.concurrent.each(DATASTORES)('GET /metrics on %s', (kind) => {
  let t: TestManager;
  let agent: Agent | undefined;

  beforeAll(async () => {
    t = await startManager(kind, { NQVM_METRICS_TOKEN: METRICS_TOKEN });
  });
  afterAll(async () => {
    await agent?.close();
    await t?.close();
  });

  const scrape = async (token = METRICS_TOKEN) => {
    const r = await raw(t.url, 'GET', '/metrics', { headers: { authorization: `Bearer ${token}` } });
    expect(r.status, r.text).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    return r.text;
  };

  // One after the other: each reads how counters moved since its own first scrape.
  describe.sequential('scrapes', () => {
    it('refuses anonymous scrapes, viewers and unknown tokens; the metrics token opens nothing else', async () => {
      const anonymous = await raw(t.url, 'GET', '/metrics');
      expectError(anonymous, 401, 'UNAUTHENTICATED');
      expect(anonymous.text).not.toContain('nqvm_api_requests_total');
      const viewer = await userWithRole(t, 'viewer');
      expectError(
        await raw(t.url, 'GET', '/metrics', { headers: { authorization: `Bearer ${viewer}` } }),
        403,
        'FORBIDDEN',
      );
      expect(
        (
          await raw(t.url, 'GET', '/metrics', {
            headers: { authorization: 'Bearer not-the-metrics-token-000' },
          })
        ).status,
      ).toBe(401);
      const withToken = client(t.url, METRICS_TOKEN);
      expectError(await withToken.get('/api/v1/vms'), 403, 'FORBIDDEN');
      const operator = await userWithRole(t, 'operator');
      expect(parseExposition(await scrape(operator)).types.get('nqvm_api_requests_total')).toBe('counter');
    });

    it('counts requests by route template, VMs by state, operations by kind and result, and queries', async () => {
      const before = parseExposition(await scrape());
      const api = client(t.url, t.adminToken);
      const vmRoute = { method: 'GET', route: '/api/v1/vms/:id', status: '200' };
      const created = await api.post('/api/v1/vms', { name: `metrics-${kind}`, start: false });
      expect(created.status, created.text).toBe(202);
      for (let i = 0; i < 3; i++)
        expect((await api.get(`/api/v1/vms/${created.body.vm.id}`)).status).toBe(200);
      expect((await api.get('/api/v1/no-such-thing')).status).toBe(404);

      const text = await scrape();
      expect(promtoolProblems(text)).toBeNull();
      const after = parseExposition(text);
      expect(sampleValue(after, 'nqvm_api_requests_total', vmRoute)).toBe(
        (sampleValue(before, 'nqvm_api_requests_total', vmRoute) ?? 0) + 3,
      );
      expect(sampleValue(after, 'nqvm_api_request_duration_seconds_count', vmRoute)).toBe(
        (sampleValue(before, 'nqvm_api_request_duration_seconds_count', vmRoute) ?? 0) + 3,
      );
      // Raw paths never become labels: the VM's id appears nowhere in the scrape.
      expect(text).not.toContain(created.body.vm.id);
      expect(
        sampleValue(after, 'nqvm_api_requests_total', { route: 'unmatched', status: '404' }),
      ).toBeGreaterThan(0);
      expect(sampleValue(after, 'nqvm_vms', { state: 'stopped', host: '' })).toBe(
        (sampleValue(before, 'nqvm_vms', { state: 'stopped', host: '' }) ?? 0) + 1,
      );
      expect(sampleValue(after, 'nqvm_operations_total', { kind: 'vm.define', result: 'succeeded' })).toBe(
        (sampleValue(before, 'nqvm_operations_total', { kind: 'vm.define', result: 'succeeded' }) ?? 0) + 1,
      );
      const inserts = { statement: 'insert', table: 'vms', result: 'ok' };
      expect(sampleValue(after, 'nqvm_datastore_query_duration_seconds_count', inserts)).toBeGreaterThan(
        sampleValue(before, 'nqvm_datastore_query_duration_seconds_count', inserts) ?? 0,
      );
      expect(sampleValue(after, 'nqvm_manager_process_resident_memory_bytes')).toBeGreaterThan(0);
    });

    it('measures the event stream: open clients and how late live events arrive', async () => {
      const ctrl = new AbortController();
      const res = await fetch(`${t.url}/api/v1/events`, {
        headers: { authorization: `Bearer ${t.adminToken}` },
        signal: ctrl.signal,
      });
      const reader = res.body!.getReader();
      await reader.read();
      const before = parseExposition(await scrape());
      expect(sampleValue(before, 'nqvm_event_stream_clients')).toBeGreaterThanOrEqual(1);
      await client(t.url, t.adminToken).post('/api/v1/vms', { name: `lag-${kind}`, start: false });
      await reader.read();
      const after = parseExposition(await scrape());
      expect(sampleValue(after, 'nqvm_event_stream_lag_seconds_count')!).toBeGreaterThan(
        sampleValue(before, 'nqvm_event_stream_lag_seconds_count') ?? 0,
      );
      ctrl.abort();
    });

    it("relays a host agent's metrics, signed by the manager", async () => {
      ({ agent } = await startStandaloneAgent({
        stateDir: tempDir(),
        drivers: [new FakeDriver('qemu')],
        publicKeyPem: t.manager.services.managerKey.publicKeyPem,
      }));
      const api = client(t.url, t.adminToken);
      const jt = await api.post('/api/v1/join-tokens', { description: 'metrics relay' });
      const reg = await client(t.url, jt.body.token).post('/api/v1/agent/register', {
        name: `metrics-host-${kind}`,
        address: agent.url,
        agent_version: '0.1.0',
        capacity: {
          vcpu: 2,
          mem_mib: 1024,
          disk_mib: 1000,
          kvm: false,
          drivers: [{ kind: 'qemu', available: true, version: '7.2', kvm: false, features: [] }],
        },
      });
      expect(reg.status, reg.text).toBe(201);
      const r = await raw(t.url, 'GET', `/api/v1/hosts/${reg.body.host_id}/metrics`, {
        headers: { authorization: `Bearer ${METRICS_TOKEN}` },
      });
      expect(r.status, r.text).toBe(200);
      expect(promtoolProblems(r.text)).toBeNull();
      expect(sampleValue(parseExposition(r.text), 'nqvm_host_cpus')).toBeGreaterThan(0);
      expectError(
        await raw(t.url, 'GET', `/api/v1/hosts/${reg.body.host_id}/metrics`),
        401,
        'UNAUTHENTICATED',
      );

      // A VM placed on that host: its usage history comes from the agent that holds it.
      await registerDefaultKernel(t);
      const vm = await api.post('/api/v1/vms', { name: `usage-${kind}`, start: true });
      expect(vm.status, vm.text).toBe(202);
      const vmId = vm.body.vm.id as string;
      await until('the agent to hold the VM', async () => agent!.vms().some((v) => v.id === vmId));
      const usage = await api.get(`/api/v1/vms/${vmId}/usage?resolution=1m`);
      expect(usage.status, usage.text).toBe(200);
      expect(usage.body).toMatchObject({ vm_id: vmId, resolution: '1m', step_s: 60 });
      expect(Array.isArray(usage.body.points)).toBe(true);
      expectError(await api.get(`/api/v1/vms/${vmId}/usage?resolution=10s`), 400, 'VALIDATION_FAILED');
      // Straight to the agent, the manager's credentials are no use: only its signature is.
      expect(
        (await fetch(`${agent.url}/metrics`, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } }))
          .status,
      ).toBe(401);
    });
  });
});
