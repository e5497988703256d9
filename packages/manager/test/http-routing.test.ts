/**
 * Routing at the edge on both datastores: the seed's `/v1/...` paths are aliases of `/api/v1/...`
 * (same routes, same auth, absent from the OpenAPI), and the web UI's fallback never answers a
 * non-UI path with index.html.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { aliasApiPath } from '../src/http/server';
import { ADMIN_PASSWORD, client, DATASTORES, startManager, type TestManager } from './harness';
import { expectError, login, raw } from './helpers';

const INDEX = '<!doctype html><title>nqvm ui</title><div id="root"></div>';

describe('aliasApiPath', () => {
  it('maps /v1 and /v1/... (with a query) to /api/v1, and nothing else', () => {
    expect(aliasApiPath('/v1/containers?limit=5')).toBe('/api/v1/containers?limit=5');
    expect(aliasApiPath('/v1')).toBe('/api/v1');
    expect(aliasApiPath('/v1?x=1')).toBe('/api/v1?x=1');
    for (const kept of ['/api/v1/vms', '/v10/vms', '/v1x', '/vms/v1', '/', '/v2/sandboxes'])
      expect(aliasApiPath(kept)).toBe(kept);
  });
});

describe.concurrent.each(DATASTORES)('HTTP routing on %s', (kind) => {
  let t: TestManager;
  let api: ReturnType<typeof client>;
  let dist: string;

  beforeAll(async () => {
    // A web build of the test's own, so the SPA fallback is there whatever packages/web/dist holds.
    dist = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-web-'));
    fs.writeFileSync(path.join(dist, 'index.html'), INDEX);
    process.env.NQVM_WEB_DIST = dist;
    t = await startManager(kind);
    api = client(t.url, t.adminToken);
  });
  afterAll(async () => {
    await t?.close();
  });

  describe.sequential('/v1 aliases', () => {
    it('answer exactly what /api/v1 answers, for reads and writes', async () => {
      const created = await api.post('/v1/vms', { name: `alias-${kind}`, start: false });
      expect(created.status, created.text).toBe(202);
      const id = created.body.vm.id as string;
      const canonical = await api.get(`/api/v1/vms/${id}`);
      const alias = await api.get(`/v1/vms/${id}`);
      expect(alias.status).toBe(200);
      expect(alias.body).toEqual(canonical.body);
      const list = await api.get(`/v1/vms?name=alias-${kind}`);
      expect(list.body.items.map((v: { id: string }) => v.id)).toEqual([id]);
      const patched = await api.patch(`/v1/vms/${id}`, { labels: { via: 'v1' } });
      expect(patched.status, patched.text).toBe(200);
      expect((await api.get(`/api/v1/vms/${id}`)).body.labels).toEqual({ via: 'v1' });
      expect((await api.get('/v1/containers')).status).toBe(200);
    });

    it('keep the same auth: anonymous is 401, a missing CSRF header on a cookie session is 403', async () => {
      expectError(await raw(t.url, 'GET', '/v1/vms'), 401, 'UNAUTHENTICATED');
      expectError(
        await raw(t.url, 'POST', '/v1/vms', {
          headers: { authorization: 'Bearer nqvm_tok_nope', 'content-type': 'application/json' },
          body: '{"name":"nope"}',
        }),
        401,
        'UNAUTHENTICATED',
      );
      const s = await login(t.url, 'admin', ADMIN_PASSWORD);
      const noCsrf = await raw(t.url, 'POST', '/v1/vms', {
        headers: { cookie: s.cookie, 'content-type': 'application/json' },
        body: '{"name":"no-csrf","start":false}',
      });
      expectError(noCsrf, 403, 'CSRF_FAILED');
      expect((await api.get('/api/v1/vms?name=no-csrf')).body.items).toEqual([]);
      const viaLogin = await raw(t.url, 'POST', '/v1/auth/login', {
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ username: 'admin', password: ADMIN_PASSWORD }),
      });
      expect(viaLogin.status).toBe(200);
    });

    it('are audited under the canonical route, and the OpenAPI lists /api/v1 only', async () => {
      const doc = (await api.get('/v1/openapi.json')).body as { paths: Record<string, unknown> };
      const paths = Object.keys(doc.paths);
      expect(paths.length).toBeGreaterThan(10);
      expect(paths.filter((p) => p.startsWith('/v1'))).toEqual([]);
      expect(paths).toContain('/api/v1/vms');
      const audit = await api.get('/api/v1/audit?limit=500');
      expect(
        audit.body.items.some(
          (a: { action: string }) => a.action.includes('/v1/') && !a.action.includes('/api/v1/'),
        ),
      ).toBe(false);
    });
  });

  describe.sequential('the web UI fallback', () => {
    it('serves index.html for UI routes', async () => {
      for (const p of ['/', '/vms', `/vms/${'0'.repeat(8)}-0000-0000-0000-000000000000/console`, '/images']) {
        const r = await raw(t.url, 'GET', p);
        expect(r.status, p).toBe(200);
        expect(r.text, p).toBe(INDEX);
      }
    });

    it('never answers a non-UI path with index.html: unknown ones are JSON 404s', async () => {
      for (const p of [
        '/v1/nothing-here',
        '/v1',
        '/v2/sandboxes',
        '/metrics/x',
        '/api',
        '/api/v2/vms',
        '/api/v1/nothing-here',
        '/API/v1/vms',
        '/healthz/x',
        '/openapi.json',
      ]) {
        for (const auth of [{}, { authorization: `Bearer ${t.adminToken}` }] as Record<string, string>[]) {
          const r = await raw(t.url, 'GET', p, { headers: auth });
          expectError(r, 404, 'ROUTE_NOT_FOUND');
          expect(r.text).not.toContain('<!doctype');
        }
      }
    });

    it('answers /metrics itself: a JSON 401 anonymously, Prometheus text to an admin, never index.html', async () => {
      const anonymous = await raw(t.url, 'GET', '/metrics');
      expectError(anonymous, 401, 'UNAUTHENTICATED');
      const admin = await raw(t.url, 'GET', '/metrics', {
        headers: { authorization: `Bearer ${t.adminToken}` },
      });
      expect(admin.status).toBe(200);
      expect(admin.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
      expect(admin.text).toContain('# TYPE nqvm_api_requests_total counter');
      expect(admin.text).not.toContain('<!doctype');
    });
  });

  describe.sequential("Fastify's own refusals", () => {
    it("carry the code of what they are, at that code's status (not CONFLICT for every 4xx)", async () => {
      // Swagger UI's files, served by @fastify/static whatever web build the manager found.
      const asset = '/docs/static/index.css';
      expect((await raw(t.url, 'GET', asset)).status).toBe(200);
      // @fastify/static's (send's) own refusals: a range past the end, a failed If-Match.
      expectError(
        await raw(t.url, 'GET', asset, { headers: { range: 'bytes=5000-6000' } }),
        416,
        'RANGE_NOT_SATISFIABLE',
      );
      expectError(
        await raw(t.url, 'GET', asset, { headers: { 'if-match': '"not-this-one"' } }),
        412,
        'PRECONDITION_FAILED',
      );
      const auth = { authorization: `Bearer ${t.adminToken}` };
      expectError(
        await raw(t.url, 'GET', '/api/v1/no-such-thing', { headers: auth }),
        404,
        'ROUTE_NOT_FOUND',
      );
      const big = JSON.stringify({ name: 'x'.repeat(2 * 1024 * 1024) });
      const json = { ...auth, 'content-type': 'application/json' };
      expectError(
        await raw(t.url, 'POST', '/api/v1/vms', { headers: json, body: big }),
        413,
        'BODY_TOO_LARGE',
      );
      const plain = { ...auth, 'content-type': 'text/plain' };
      expectError(
        await raw(t.url, 'POST', '/api/v1/vms', { headers: plain, body: '{}' }),
        415,
        'UNSUPPORTED_MEDIA_TYPE',
      );
      const garbled = { ...auth, 'content-type': 'not a media type' };
      expectError(
        await raw(t.url, 'POST', '/api/v1/vms', { headers: garbled, body: '{}' }),
        415,
        'UNSUPPORTED_MEDIA_TYPE',
      );
      expectError(
        await raw(t.url, 'POST', '/api/v1/vms', { headers: json, body: '{"name":' }),
        400,
        'INVALID_JSON',
      );
      expectError(
        await raw(t.url, 'GET', '/api/v1/vms/%E0%A4%A', { headers: auth }),
        400,
        'VALIDATION_FAILED',
      );
    });
  });
});
