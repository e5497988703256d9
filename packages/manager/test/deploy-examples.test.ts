/**
 * deploy/: the Prometheus scrape example is a valid configuration, and every series the Grafana
 * dashboard queries exists in a real scrape of a manager and of an agent (relayed by the
 * manager, as the example scrapes it), in PromQL that Prometheus parses.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Agent } from '@nqvm/agent';
import { FakeDriver } from '@nqvm/agent/agent/fake-driver';
import { startStandaloneAgent, tempDir } from '@nqvm/agent/agent/testing';
import { parseExposition } from '@nqvm/testkit/prometheus';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { client, startManager, type TestManager } from './harness';

const DEPLOY = path.resolve(import.meta.dirname, '../../../deploy');
const TOKEN = 'deploy-example-metrics-token-0123';

interface Panel {
  title?: string;
  targets?: Array<{ expr: string }>;
}

const dashboard = JSON.parse(fs.readFileSync(path.join(DEPLOY, 'grafana/nqvm-dashboard.json'), 'utf8')) as {
  panels: Panel[];
  templating: { list: Array<{ query?: unknown }> };
};
const exprs = dashboard.panels.flatMap((p) =>
  (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })),
);

function promtool(args: string[]): { status: number | null; out: string } {
  const r = spawnSync('promtool', args, { encoding: 'utf8' });
  return { status: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}` };
}

describe('deploy/ monitoring examples', () => {
  let t: TestManager;
  let agent: Agent;
  let families: Map<string, string>;
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-deploy-'));

  beforeAll(async () => {
    t = await startManager('sqlite', { NQVM_METRICS_TOKEN: TOKEN });
    ({ agent } = await startStandaloneAgent({
      stateDir: tempDir(),
      drivers: [new FakeDriver('qemu')],
      publicKeyPem: t.manager.services.managerKey.publicKeyPem,
    }));
    const jt = await client(t.url, t.adminToken).post('/api/v1/join-tokens', { description: 'deploy test' });
    const reg = await client(t.url, jt.body.token).post('/api/v1/agent/register', {
      name: 'deploy-host',
      address: agent.url,
      agent_version: '0.1.0',
      capacity: { vcpu: 2, mem_mib: 1024, disk_mib: 1000, kvm: false, drivers: [] },
    });
    expect(reg.status, reg.text).toBe(201);
    families = new Map();
    for (const p of ['/metrics', `/api/v1/hosts/${reg.body.host_id}/metrics`]) {
      const r = await client(t.url, TOKEN).get(p);
      expect(r.status, r.text).toBe(200);
      for (const [name, type] of parseExposition(r.text).types) families.set(name, type);
    }
  });
  afterAll(async () => {
    await agent?.close();
    await t?.close();
    fs.rmSync(work, { recursive: true, force: true });
  });

  it('the dashboard queries only series the manager and agents expose', () => {
    expect(exprs.length).toBeGreaterThan(20);
    const missing: string[] = [];
    const queried = [...JSON.stringify(dashboard.templating), ...exprs.map((e) => e.expr)].join('\n');
    for (const name of new Set(queried.match(/\bnqvm_[a-z0-9_]+/g) ?? [])) {
      const histogram = /^(.*)_(bucket|count|sum)$/.exec(name);
      const known = families.has(name) || (histogram && families.get(histogram[1]!) === 'histogram');
      if (!known) missing.push(name);
    }
    expect(missing).toEqual([]);
    // And every family is charted somewhere (nothing exported goes unseen).
    const unseen = [...families.keys()].filter((f) => !queried.includes(f));
    expect(unseen).toEqual([]);
  });

  it('every dashboard query is PromQL that Prometheus parses', () => {
    const rules = exprs.map(
      (e, i) => `      - record: nqvm:dashboard_${i}\n        expr: ${JSON.stringify(e.expr)}`,
    );
    const file = path.join(work, 'rules.yml');
    fs.writeFileSync(file, `groups:\n  - name: dashboard\n    rules:\n${rules.join('\n')}\n`);
    const r = promtool(['check', 'rules', file]);
    expect(r.out).toContain(`SUCCESS: ${exprs.length} rules found`);
    expect(r.status, r.out).toBe(0);
  });

  it('the scrape example is a valid Prometheus configuration', () => {
    const tokenFile = path.join(work, 'token');
    fs.writeFileSync(tokenFile, TOKEN, { mode: 0o600 });
    const text = fs
      .readFileSync(path.join(DEPLOY, 'prometheus/prometheus.yml'), 'utf8')
      .replaceAll('/etc/prometheus/nqvm-metrics-token', tokenFile);
    const file = path.join(work, 'prometheus.yml');
    fs.writeFileSync(file, text);
    const r = promtool(['check', 'config', file]);
    expect(r.status, r.out).toBe(0);
  });
});
