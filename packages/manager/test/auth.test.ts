/**
 * Authentication and authorisation over HTTP on both datastores: the auth matrix generated
 * from the router, the first admin, sessions and CSRF, API tokens, users, the login throttle,
 * join tokens and host credentials, the audit log and retention pruning.
 */
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import { ApiToken, User } from '@nqvm/api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isoAfter } from '../src/clock';
import { buildApp } from '../src/http/server';
import {
  ADMIN_PASSWORD,
  client,
  DATASTORES,
  startManager,
  type TestManager,
  tokenFor,
  userWithRole,
} from './harness';
import {
  CAPACITY,
  expectError,
  failingFields,
  login,
  registerHost,
  type Session,
  sleep,
  startBare,
  uniformErrorProblem,
} from './helpers';

type PrincipalName = 'anonymous' | 'viewer' | 'operator' | 'admin' | 'host' | 'join';
const PRINCIPALS: PrincipalName[] = ['anonymous', 'viewer', 'operator', 'admin', 'host', 'join'];
const RANK = { viewer: 1, operator: 2, admin: 3 } as const;
type Expect = 'allowed' | 401 | 403;

/** The rule every route must obey, by its declared access; an unknown rule fails the suite. */
function expectedFor(access: string, p: PrincipalName): Expect {
  switch (access) {
    case 'public':
      return 'allowed';
    case 'viewer':
    case 'operator':
    case 'admin':
      if (p === 'anonymous') return 401;
      if (p === 'host' || p === 'join') return 403;
      return RANK[p] >= RANK[access] ? 'allowed' : 403;
    case 'host':
    case 'join':
      if (p === 'anonymous') return 401;
      return p === access ? 'allowed' : 403;
    case 'metrics':
      // An operator (or the metrics token, not a principal of this matrix) scrapes.
      if (p === 'anonymous') return 401;
      if (p === 'host' || p === 'join') return 403;
      return RANK[p] >= RANK.operator ? 'allowed' : 403;
    default:
      throw new Error(`route access "${access}" has no rule in the auth matrix`);
  }
}

const MUTATING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
const origin = (url: string) => new URL(url).origin;

/** POST /api/v1/auth/login from another loopback address (the socket bound to `localAddress`). */
function loginFrom(url: string, localAddress: string, username: string, password: string) {
  return new Promise<{ status: number; body: { error: { code: string } } }>((resolve, reject) => {
    const body = JSON.stringify({ username, password });
    const req = http.request(
      `${url}/api/v1/auth/login`,
      { method: 'POST', localAddress, headers: { 'content-type': 'application/json' } },
      (res) => {
        let text = '';
        res.on('data', (d) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

// The datastores run side by side (a 2-core machine runs test files one at a time); every test
// within one datastore runs in order.
describe.concurrent.each(DATASTORES)('auth on %s', (kind) => {
  let t: TestManager;
  let api: ReturnType<typeof client>;
  const creds: Record<PrincipalName, string | null> = {
    anonymous: null,
    viewer: null,
    operator: null,
    admin: null,
    host: null,
    join: null,
  };
  /** Mutations made along the way, checked against the audit log at the end. */
  const audited: Array<{
    action: string;
    result: 'success' | 'failure';
    status_code: number;
    target_id?: string;
    actor_name?: string | null;
  }> = [];

  beforeAll(async () => {
    t = await startManager(kind);
    api = client(t.url, t.adminToken);
    creds.admin = t.adminToken;
    creds.viewer = await userWithRole(t, 'viewer');
    creds.operator = await userWithRole(t, 'operator');
    creds.host = (await registerHost(t.url, t.adminToken, `matrix-host-${kind}`)).credential;
    const jt = await api.post('/api/v1/join-tokens', { description: 'matrix' });
    creds.join = jt.body.token;
  });
  afterAll(async () => {
    await t?.close();
  });

  const bearer = (token: string | null): Record<string, string> =>
    token ? { authorization: `Bearer ${token}` } : {};
  const withCookie = (
    s: Session,
    method: string,
    p: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ) => client(t.url).call(method, p, body, { cookie: s.cookie, ...headers });

  describe.sequential('the auth matrix', () => {
    it('every registered route declares a known access rule, and the OpenAPI paths are all registered', async () => {
      const routes = t.manager.routes;
      expect(routes.length).toBeGreaterThan(40);
      for (const r of routes)
        expect(() => expectedFor(r.access, 'anonymous'), `${r.method} ${r.url}`).not.toThrow();
      const registered = new Set(routes.map((r) => `${r.method} ${r.url}`));
      const doc = (await api.get('/api/v1/openapi.json')).body as {
        paths: Record<string, Record<string, unknown>>;
      };
      for (const [p, methods] of Object.entries(doc.paths)) {
        for (const m of Object.keys(methods)) {
          expect(registered, `${m} ${p}`).toContain(`${m.toUpperCase()} ${p.replace(/\{(\w+)\}/g, ':$1')}`);
        }
      }
    });

    it('building a server with a route that lacks config.access throws', async () => {
      await expect(
        buildApp(t.manager.services, {
          extend: (app) => {
            app.get('/api/v1/no-rule', async () => ({ ok: true }));
          },
        }),
      ).rejects.toThrow(/GET \/api\/v1\/no-rule declares no access rule/);
    });

    it('every route x principal answers as its declared access says', async () => {
      const table = t.manager.routes.flatMap((r) =>
        PRINCIPALS.map((p) => ({ ...r, principal: p, expect: expectedFor(r.access, p) })),
      );
      const mismatches: string[] = [];
      for (const row of table) {
        const p = row.url.replace(/:\w+/g, () => randomUUID()).replace('*', 'index.html');
        const abort = new AbortController();
        const res = await fetch(`${t.url}${p}`, {
          method: row.method,
          headers: {
            ...bearer(creds[row.principal]),
            ...(MUTATING.has(row.method) ? { 'content-type': 'application/json' } : {}),
          },
          body: MUTATING.has(row.method) ? '{}' : undefined,
          redirect: 'manual',
          signal: abort.signal,
        });
        const streaming = (res.headers.get('content-type') ?? '').startsWith('text/event-stream');
        const text = streaming ? '' : await res.text();
        if (streaming) abort.abort();
        const label = `${row.method} ${row.url} as ${row.principal} (access ${row.access}): ${res.status} ${text.slice(0, 120)}`;
        if (row.expect === 'allowed') {
          if (res.status === 401 || res.status === 403 || res.status >= 500)
            mismatches.push(`expected allowed: ${label}`);
        } else {
          if (res.status !== row.expect) mismatches.push(`expected ${row.expect}: ${label}`);
          else {
            const problem = uniformErrorProblem({ status: res.status, text, headers: res.headers });
            const code = JSON.parse(text).error?.code;
            if (problem) mismatches.push(`${problem}: ${label}`);
            if (code !== (row.expect === 401 ? 'UNAUTHENTICATED' : 'FORBIDDEN'))
              mismatches.push(`code ${code}: ${label}`);
          }
        }
        // The agent's own rotation replaces its credential: keep using the live one.
        if (row.url === '/api/v1/agent/rotate-credential' && res.status === 200)
          creds.host = JSON.parse(text).credential;
      }
      expect(mismatches).toEqual([]);
      expect(table.length).toBe(t.manager.routes.length * PRINCIPALS.length);
    });
  });

  describe.sequential('first admin', () => {
    it('is created from NQVM_ADMIN_PASSWORD once; a later start with another password changes nothing', async () => {
      expect(t.manager.firstAdmin).toEqual({ username: 'admin', generatedPassword: undefined });
      const s = await login(t.url, 'admin', ADMIN_PASSWORD);
      expect(s.body.user).toMatchObject({ username: 'admin', role: 'admin', disabled: false });
      const again = await startBare(kind, { NQVM_ADMIN_PASSWORD: 'another-password-1' }, t.dbUrl);
      try {
        expect(again.manager.firstAdmin).toBeNull();
        expectError(
          await client(again.url).post('/api/v1/auth/login', {
            username: 'admin',
            password: 'another-password-1',
          }),
          401,
          'INVALID_CREDENTIALS',
        );
        expect(
          (
            await client(again.url).post('/api/v1/auth/login', {
              username: 'admin',
              password: ADMIN_PASSWORD,
            })
          ).status,
        ).toBe(200);
      } finally {
        await again.close();
      }
    });
  });

  describe.sequential('sessions and CSRF', () => {
    let s: Session;
    beforeAll(async () => {
      s = await login(t.url, 'admin', ADMIN_PASSWORD);
    });

    it('login sets an HttpOnly SameSite=Strict session cookie and a readable CSRF cookie', () => {
      const session = s.setCookies.find((c) => c.startsWith('nqvm_session='))!;
      const csrf = s.setCookies.find((c) => c.startsWith('nqvm_csrf='))!;
      expect(session).toMatch(/;\s*HttpOnly/i);
      expect(session).toMatch(/;\s*SameSite=Strict/i);
      expect(session).toMatch(/;\s*Path=\//i);
      expect(session).not.toMatch(/;\s*Secure/i); // plain HTTP here; TLS adds Secure
      expect(csrf).toMatch(/;\s*SameSite=Strict/i);
      expect(csrf).not.toMatch(/HttpOnly/i);
      expect(csrf).toContain(`nqvm_csrf=${s.csrf}`);
      User.strict().parse(s.body.user);
      audited.push({
        action: 'auth.login',
        result: 'success',
        status_code: 200,
        target_id: s.body.user.id,
        actor_name: 'admin',
      });
    });

    it('a cookie session reads without CSRF, but mutates only with X-CSRF-Token and a same Origin', async () => {
      expect((await withCookie(s, 'GET', '/api/v1/auth/me')).body).toMatchObject({
        username: 'admin',
        via: 'session',
      });
      const body = { name: `csrf-${kind}`, start: false };
      const none = await withCookie(s, 'POST', '/api/v1/vms', body);
      expectError(none, 403, 'CSRF_FAILED');
      expectError(
        await withCookie(s, 'POST', '/api/v1/vms', body, { 'x-csrf-token': 'nqvm_csrf_wrong' }),
        403,
        'CSRF_FAILED',
      );
      expectError(
        await withCookie(s, 'POST', '/api/v1/vms', body, {
          'x-csrf-token': s.csrf,
          origin: 'https://evil.example',
        }),
        403,
        'CSRF_FAILED',
      );
      expectError(
        await withCookie(s, 'POST', '/api/v1/vms', body, { 'x-csrf-token': s.csrf, origin: 'null' }),
        403,
        'CSRF_FAILED',
      );
      expect((await api.get(`/api/v1/vms?name=csrf-${kind}`)).body.items).toEqual([]);
      audited.push({ action: 'vm.create', result: 'failure', status_code: 403, actor_name: 'admin' });

      const ok = await withCookie(s, 'POST', '/api/v1/vms', body, { 'x-csrf-token': s.csrf });
      expect(ok.status, ok.text).toBe(202);
      const sameOrigin = await withCookie(
        s,
        'PATCH',
        `/api/v1/vms/${ok.body.vm.id}`,
        { labels: { a: 'b' } },
        { 'x-csrf-token': s.csrf, origin: origin(t.url) },
      );
      expect(sameOrigin.status, sameOrigin.text).toBe(200);
      audited.push({
        action: 'vm.create',
        result: 'success',
        status_code: 202,
        target_id: ok.body.vm.id,
        actor_name: 'admin',
      });
      audited.push({ action: 'vm.update', result: 'success', status_code: 200, target_id: ok.body.vm.id });
      // Bearer tokens need neither CSRF nor Origin.
      expect(
        (
          await api.patch(
            `/api/v1/vms/${ok.body.vm.id}`,
            { labels: { c: 'd' } },
            { origin: 'https://evil.example' },
          )
        ).status,
      ).toBe(200);
    });

    it('logout ends the session', async () => {
      const mine = await login(t.url, 'admin', ADMIN_PASSWORD);
      expectError(await withCookie(mine, 'POST', '/api/v1/auth/logout'), 403, 'CSRF_FAILED');
      const out = await withCookie(mine, 'POST', '/api/v1/auth/logout', undefined, {
        'x-csrf-token': mine.csrf,
      });
      expect(out.status, out.text).toBe(200);
      expect(out.headers.getSetCookie().some((c) => /^nqvm_session=;/.test(c))).toBe(true);
      expectError(await withCookie(mine, 'GET', '/api/v1/auth/me'), 401, 'UNAUTHENTICATED');
      expectError(
        await withCookie(
          mine,
          'POST',
          '/api/v1/vms',
          { name: 'after-logout' },
          { 'x-csrf-token': mine.csrf },
        ),
        401,
        'UNAUTHENTICATED',
      );
      audited.push({ action: 'auth.logout', result: 'success', status_code: 200, actor_name: 'admin' });
      // Another session of the same user lives on.
      expect((await withCookie(s, 'GET', '/api/v1/auth/me')).status).toBe(200);
    });

    it('changing the password needs the current one and ends the sessions', async () => {
      const username = `pw-${kind}`;
      expect(
        (await api.post('/api/v1/users', { username, password: 'first-password', role: 'viewer' })).status,
      ).toBe(201);
      const mine = await login(t.url, username, 'first-password');
      const wrong = await withCookie(
        mine,
        'POST',
        '/api/v1/auth/password',
        { current_password: 'nope-nope', new_password: 'second-password' },
        { 'x-csrf-token': mine.csrf },
      );
      expectError(wrong, 401, 'INVALID_CREDENTIALS');
      const short = await withCookie(
        mine,
        'POST',
        '/api/v1/auth/password',
        { current_password: 'first-password', new_password: 'short' },
        { 'x-csrf-token': mine.csrf },
      );
      expectError(short, 400, 'VALIDATION_FAILED');
      const ok = await withCookie(
        mine,
        'POST',
        '/api/v1/auth/password',
        { current_password: 'first-password', new_password: 'second-password' },
        { 'x-csrf-token': mine.csrf },
      );
      expect(ok.status, ok.text).toBe(200);
      expectError(await withCookie(mine, 'GET', '/api/v1/auth/me'), 401, 'UNAUTHENTICATED');
      expectError(
        await client(t.url).post('/api/v1/auth/login', { username, password: 'first-password' }),
        401,
        'INVALID_CREDENTIALS',
      );
      await login(t.url, username, 'second-password');
      audited.push({ action: 'auth.password', result: 'failure', status_code: 401, actor_name: username });
      audited.push({ action: 'auth.password', result: 'success', status_code: 200, actor_name: username });
    });
  });

  describe.sequential('API tokens', () => {
    const mkUser = async (role: 'viewer' | 'operator' | 'admin') => {
      const username = `tok-${role}-${randomUUID().slice(0, 6)}`;
      const r = await api.post('/api/v1/users', { username, password: 'token-user-pw', role });
      expect(r.status).toBe(201);
      return { id: r.body.id as string, username, token: await tokenFor(t.url, username, 'token-user-pw') };
    };

    it('a created token works as Bearer with its role; the secret is shown once', async () => {
      const u = await mkUser('operator');
      const c = client(t.url, u.token);
      const created = await c.post('/api/v1/tokens', { name: 'ci', role: 'viewer', expires_in_days: 7 });
      expect(created.status, created.text).toBe(201);
      ApiToken.extend({ token: ApiToken.shape.name }).strict().parse(created.body);
      expect(created.body).toMatchObject({ role: 'viewer', user_id: u.id, revoked_at: null });
      expect(created.body.token).toMatch(/^nqvm_tok_/);
      expect(created.body.token.startsWith(created.body.prefix)).toBe(true);
      const list = await c.get('/api/v1/tokens');
      expect(list.text).not.toContain(created.body.token);
      for (const item of list.body.items) ApiToken.strict().parse(item);
      audited.push({
        action: 'token.create',
        result: 'success',
        status_code: 201,
        target_id: created.body.id,
        actor_name: u.username,
      });

      const viewerToken = client(t.url, created.body.token);
      expect((await viewerToken.get('/api/v1/auth/me')).body).toMatchObject({
        role: 'operator',
        effective_role: 'viewer',
        via: 'token',
      });
      expect((await viewerToken.get('/api/v1/vms')).status).toBe(200);
      expectError(await viewerToken.post('/api/v1/vms', { name: 'by-viewer-token' }), 403, 'FORBIDDEN');
      audited.push({ action: 'vm.create', result: 'failure', status_code: 403, actor_name: u.username });
      // A token cannot mint a token above its own role.
      expectError(
        await viewerToken.post('/api/v1/tokens', { name: 'escalate', role: 'operator' }),
        403,
        'FORBIDDEN',
      );
      expect((await c.post('/api/v1/vms', { name: `by-operator-${kind}`, start: false })).status).toBe(202);
    });

    it('a viewer cannot create an operator or admin token', async () => {
      const u = await mkUser('viewer');
      const c = client(t.url, u.token);
      for (const role of ['operator', 'admin']) {
        expectError(await c.post('/api/v1/tokens', { name: 'up', role }), 403, 'FORBIDDEN');
      }
      audited.push({ action: 'token.create', result: 'failure', status_code: 403, actor_name: u.username });
      const own = await c.post('/api/v1/tokens', { name: 'own' });
      expect(own.status).toBe(201);
      expect(own.body.role).toBe('viewer');
      const n = await t.manager.services.store.db
        .selectFrom('api_tokens')
        .select('role')
        .where('user_id', '=', u.id)
        .execute();
      expect(n.map((r) => r.role).sort()).toEqual(['viewer', 'viewer']);
    });

    it('expired and revoked tokens -> 401', async () => {
      const u = await mkUser('operator');
      const c = client(t.url, u.token);
      const a = (await c.post('/api/v1/tokens', { name: 'expiring' })).body;
      const b = (await c.post('/api/v1/tokens', { name: 'revoking', expires_in_days: null })).body;
      expect(b.expires_at).toBeNull();
      expect((await client(t.url, a.token).get('/api/v1/vms')).status).toBe(200);
      await t.manager.services.store.db
        .updateTable('api_tokens')
        .set({ expires_at: isoAfter(-1000) })
        .where('id', '=', a.id)
        .execute();
      expectError(await client(t.url, a.token).get('/api/v1/vms'), 401, 'UNAUTHENTICATED');

      expect((await client(t.url, b.token).get('/api/v1/vms')).status).toBe(200);
      // Another non-admin user cannot revoke it.
      expectError(await client(t.url, creds.viewer!).del(`/api/v1/tokens/${b.id}`), 403, 'FORBIDDEN');
      expectError(await client(t.url, creds.viewer!).get(`/api/v1/tokens?user_id=${u.id}`), 403, 'FORBIDDEN');
      const revoked = await c.del(`/api/v1/tokens/${b.id}`);
      expect(revoked.status, revoked.text).toBe(200);
      expect(revoked.body.revoked_at).not.toBeNull();
      expectError(await client(t.url, b.token).get('/api/v1/vms'), 401, 'UNAUTHENTICATED');
      expectError(await client(t.url, b.token).post('/api/v1/vms', { name: 'x' }), 401, 'UNAUTHENTICATED');
      // Public routes answer a client holding a stale or unknown token as they answer anyone.
      for (const stale of [b.token, 'nqvm_tok_never-issued', 'nqvm_host_never-issued']) {
        const health = await client(t.url, stale).get('/healthz');
        expect(health.status, health.text).toBe(200);
        expect((await client(t.url, stale).get('/api/v1/openapi.json')).status).toBe(200);
      }
      expectError(await api.del(`/api/v1/tokens/${randomUUID()}`), 404, 'TOKEN_NOT_FOUND');
      audited.push({
        action: 'token.revoke',
        result: 'success',
        status_code: 200,
        target_id: b.id,
        actor_name: u.username,
      });
      audited.push({ action: 'token.revoke', result: 'failure', status_code: 403, target_id: b.id });
      audited.push({ action: 'vm.create', result: 'failure', status_code: 401 });
    });

    it("a token's role never exceeds its owner's, even after the owner is demoted", async () => {
      const u = await mkUser('admin');
      const c = client(t.url, u.token);
      expect((await c.get('/api/v1/users')).status).toBe(200);
      const demote = await api.patch(`/api/v1/users/${u.id}`, { role: 'operator' });
      expect(demote.status, demote.text).toBe(200);
      audited.push({
        action: 'user.update',
        result: 'success',
        status_code: 200,
        target_id: u.id,
        actor_name: 'admin',
      });
      expect((await c.get('/api/v1/auth/me')).body).toMatchObject({
        role: 'operator',
        effective_role: 'operator',
      });
      expectError(await c.get('/api/v1/users'), 403, 'FORBIDDEN');
      expectError(await c.post('/api/v1/tokens', { name: 'again', role: 'admin' }), 403, 'FORBIDDEN');
      expect((await c.post('/api/v1/vms', { name: `demoted-${kind}`, start: false })).status).toBe(202);

      await api.patch(`/api/v1/users/${u.id}`, { role: 'viewer' });
      expectError(await c.post('/api/v1/vms', { name: `demoted-2-${kind}` }), 403, 'FORBIDDEN');
      expect((await c.get('/api/v1/auth/me')).body.effective_role).toBe('viewer');
      // Promoted again, the token is back to its own role (admin), never more.
      await api.patch(`/api/v1/users/${u.id}`, { role: 'admin' });
      expect((await c.get('/api/v1/users')).status).toBe(200);
    });

    it('a disabled user is locked out: tokens and logins fail', async () => {
      const u = await mkUser('operator');
      expect((await api.patch(`/api/v1/users/${u.id}`, { disabled: true })).body.disabled).toBe(true);
      expectError(await client(t.url, u.token).get('/api/v1/vms'), 401, 'UNAUTHENTICATED');
      expectError(
        await client(t.url).post('/api/v1/auth/login', { username: u.username, password: 'token-user-pw' }),
        401,
        'INVALID_CREDENTIALS',
      );
      audited.push({ action: 'auth.login', result: 'failure', status_code: 401 });
      await api.patch(`/api/v1/users/${u.id}`, { disabled: false });
      expect((await client(t.url, u.token).get('/api/v1/vms')).status).toBe(200);
    });
  });

  describe.sequential('users', () => {
    it('admin CRUD; answers never carry a password hash', async () => {
      const username = `crud-${kind}`;
      const c = await api.post('/api/v1/users', { username, password: 'crud-password', role: 'viewer' });
      expect(c.status, c.text).toBe(201);
      User.strict().parse(c.body);
      audited.push({
        action: 'user.create',
        result: 'success',
        status_code: 201,
        target_id: c.body.id,
        actor_name: 'admin',
      });
      const dup = await api.post('/api/v1/users', { username, password: 'crud-password', role: 'viewer' });
      expectError(dup, 409, 'NAME_TAKEN');
      audited.push({ action: 'user.create', result: 'failure', status_code: 409 });
      expectError(
        await api.post('/api/v1/users', { username: 'x y', password: 'short', role: 'root' }),
        400,
        'VALIDATION_FAILED',
      );

      const got = await api.get(`/api/v1/users/${c.body.id}`);
      expect(got.body).toEqual(c.body);
      const list = await api.get('/api/v1/users?limit=500');
      expect(list.body.items.map((u: { id: string }) => u.id)).toContain(c.body.id);
      for (const r of [c, got, list]) expect(r.text).not.toMatch(/password|scrypt\$/);

      const p = await api.patch(`/api/v1/users/${c.body.id}`, {
        role: 'operator',
        password: 'crud-password-2',
      });
      expect(p.status, p.text).toBe(200);
      expect(p.body.role).toBe('operator');
      await login(t.url, username, 'crud-password-2');
      audited.push({ action: 'user.update', result: 'success', status_code: 200, target_id: c.body.id });

      const d = await api.del(`/api/v1/users/${c.body.id}`);
      expect(d.status, d.text).toBe(200);
      expect(d.body).toEqual({ id: c.body.id, deleted: true });
      audited.push({
        action: 'user.delete',
        result: 'success',
        status_code: 200,
        target_id: c.body.id,
        actor_name: 'admin',
      });
      expectError(await api.get(`/api/v1/users/${c.body.id}`), 404, 'USER_NOT_FOUND');
      expectError(await api.del(`/api/v1/users/${c.body.id}`), 404, 'USER_NOT_FOUND');
      expectError(
        await api.patch(`/api/v1/users/${randomUUID()}`, { role: 'viewer' }),
        404,
        'USER_NOT_FOUND',
      );
    });

    it('the last enabled admin cannot be deleted, demoted or disabled (409 LAST_ADMIN)', async () => {
      const admins = await t.manager.services.store.db
        .selectFrom('users')
        .select(['id', 'username'])
        .where('role', '=', 'admin')
        .execute();
      // Leave only the first admin as admin.
      for (const a of admins.filter((x) => x.username !== 'admin'))
        await api.patch(`/api/v1/users/${a.id}`, { role: 'operator' });
      const me = (await api.get('/api/v1/auth/me')).body;
      const before = await t.manager.services.store.db
        .selectFrom('users')
        .selectAll()
        .where('id', '=', me.id)
        .executeTakeFirst();
      for (const r of [
        await api.del(`/api/v1/users/${me.id}`),
        await api.patch(`/api/v1/users/${me.id}`, { role: 'viewer' }),
        await api.patch(`/api/v1/users/${me.id}`, { role: 'operator' }),
        await api.patch(`/api/v1/users/${me.id}`, { disabled: true }),
      ]) {
        expectError(r, 409, 'LAST_ADMIN');
      }
      audited.push({ action: 'user.delete', result: 'failure', status_code: 409, target_id: me.id });
      expect(
        await t.manager.services.store.db
          .selectFrom('users')
          .selectAll()
          .where('id', '=', me.id)
          .executeTakeFirst(),
      ).toEqual(before);

      // With a second admin, one of them may go.
      const second = await api.post('/api/v1/users', {
        username: `admin2-${kind}`,
        password: 'second-admin-pw',
        role: 'admin',
      });
      const secondToken = await tokenFor(t.url, `admin2-${kind}`, 'second-admin-pw');
      expect(
        (await client(t.url, secondToken).patch(`/api/v1/users/${second.body.id}`, { role: 'viewer' }))
          .status,
      ).toBe(200);
      expectError(await api.del(`/api/v1/users/${me.id}`), 409, 'LAST_ADMIN');
      expect((await api.del(`/api/v1/users/${second.body.id}`)).status).toBe(200);
    });
  });

  describe.sequential('hosts: join tokens and credentials', () => {
    it('join token (shown once) -> register -> credential -> heartbeat; revoked credential -> 401', async () => {
      const jt = await api.post('/api/v1/join-tokens', { ttl_s: 600, description: 'rack 1' });
      expect(jt.status, jt.text).toBe(201);
      expect(jt.body.token).toMatch(/^nqvm_join_/);
      expect(Date.parse(jt.body.expires_at) - Date.now()).toBeGreaterThan(590_000);
      audited.push({
        action: 'join_token.create',
        result: 'success',
        status_code: 201,
        target_id: jt.body.id,
        actor_name: 'admin',
      });
      const listed = await api.get('/api/v1/join-tokens?limit=500');
      expect(listed.text).not.toContain(jt.body.token);
      expect(listed.body.items.find((x: { id: string }) => x.id === jt.body.id)).not.toHaveProperty('token');

      const agent = client(t.url, jt.body.token);
      const body = {
        name: `agent-${kind}`,
        address: 'http://127.0.0.1:9',
        agent_version: '0.1.0',
        capacity: CAPACITY,
      };
      const reg = await agent.post('/api/v1/agent/register', body);
      expect(reg.status, reg.text).toBe(201);
      expect(reg.body.credential).toMatch(/^nqvm_host_/);
      expect(reg.body.manager_public_key).toContain('BEGIN PUBLIC KEY');
      expect(reg.body.heartbeat_interval_s).toBe(5);
      audited.push({
        action: 'host.register',
        result: 'success',
        status_code: 201,
        target_id: reg.body.host_id,
        actor_name: 'join-token',
      });
      const hostId = reg.body.host_id as string;
      expect(
        (await api.get('/api/v1/join-tokens?limit=500')).body.items.find(
          (x: { id: string }) => x.id === jt.body.id,
        ).last_used_at,
      ).not.toBeNull();

      const hostApi = client(t.url, reg.body.credential);
      const hb = { capacity: CAPACITY, vms: [] };
      expect((await hostApi.post('/api/v1/agent/heartbeat', hb)).body).toEqual({ heartbeat_interval_s: 5 });
      expect((await api.get(`/api/v1/hosts/${hostId}`)).body).toMatchObject({
        status: 'ready',
        credential_revoked: false,
        name: `agent-${kind}`,
      });
      // A live host name cannot be taken over by another registration.
      expectError(await agent.post('/api/v1/agent/register', body), 409, 'NAME_TAKEN');

      const revoke = await api.post(`/api/v1/hosts/${hostId}/revoke-credential`);
      expect(revoke.status, revoke.text).toBe(200);
      expect(revoke.body.credential_revoked).toBe(true);
      audited.push({
        action: 'host.revoke_credential',
        result: 'success',
        status_code: 200,
        target_id: hostId,
        actor_name: 'admin',
      });
      expectError(await hostApi.post('/api/v1/agent/heartbeat', hb), 401, 'UNAUTHENTICATED');

      // Joining again keeps the host's id; only the new credential works.
      const rejoin = await agent.post('/api/v1/agent/register', body);
      expect(rejoin.status, rejoin.text).toBe(201);
      expect(rejoin.body.host_id).toBe(hostId);
      expect((await client(t.url, rejoin.body.credential).post('/api/v1/agent/heartbeat', hb)).status).toBe(
        200,
      );
      expectError(await hostApi.post('/api/v1/agent/heartbeat', hb), 401, 'UNAUTHENTICATED');

      // Admin host actions work without a body.
      const drain = await api.post(`/api/v1/hosts/${hostId}/drain`);
      expect(drain.status, drain.text).toBe(200);
      expect(drain.body.host.schedulable).toBe(false);
    });

    it('expired or revoked join tokens are refused', async () => {
      const body = {
        name: `late-${kind}`,
        address: 'http://127.0.0.1:9',
        agent_version: '0.1.0',
        capacity: CAPACITY,
      };
      const expired = (await api.post('/api/v1/join-tokens', {})).body;
      await t.manager.services.store.db
        .updateTable('join_tokens')
        .set({ expires_at: isoAfter(-1000) })
        .where('id', '=', expired.id)
        .execute();
      expectError(
        await client(t.url, expired.token).post('/api/v1/agent/register', body),
        401,
        'UNAUTHENTICATED',
      );
      audited.push({ action: 'host.register', result: 'failure', status_code: 401 });

      const revoked = (await api.post('/api/v1/join-tokens', {})).body;
      const del = await api.del(`/api/v1/join-tokens/${revoked.id}`);
      expect(del.status).toBe(200);
      expect(del.body.revoked_at).not.toBeNull();
      audited.push({
        action: 'join_token.revoke',
        result: 'success',
        status_code: 200,
        target_id: revoked.id,
      });
      expectError(
        await client(t.url, revoked.token).post('/api/v1/agent/register', body),
        401,
        'UNAUTHENTICATED',
      );
      expectError(await api.post('/api/v1/join-tokens', { ttl_s: 1 }), 400, 'VALIDATION_FAILED');
      expect(
        await t.manager.services.store.db
          .selectFrom('hosts')
          .select('id')
          .where('name', '=', `late-${kind}`)
          .execute(),
      ).toEqual([]);
    });
  });

  describe.sequential('audit', () => {
    it('records every mutation above (who, action, target, result), readable only by admins', async () => {
      expectError(await client(t.url, creds.viewer!).get('/api/v1/audit'), 403, 'FORBIDDEN');
      expectError(await client(t.url, creds.operator!).get('/api/v1/audit'), 403, 'FORBIDDEN');
      expectError(await client(t.url).get('/api/v1/audit'), 401, 'UNAUTHENTICATED');

      const all: Array<{
        action: string;
        result: string;
        status_code: number;
        target: { type: string; id: string } | null;
        actor: { type: string; id: string | null; name: string | null };
        at: string;
      }> = [];
      let cursor: string | null = null;
      do {
        const r = await api.get(`/api/v1/audit?limit=500${cursor ? `&cursor=${cursor}` : ''}`);
        expect(r.status).toBe(200);
        all.push(...r.body.items);
        cursor = r.body.next;
      } while (cursor);
      const missing = audited.filter(
        (want) =>
          !all.some(
            (got) =>
              got.action === want.action &&
              got.result === want.result &&
              got.status_code === want.status_code &&
              (want.target_id === undefined || got.target?.id === want.target_id) &&
              (want.actor_name === undefined || got.actor.name === want.actor_name),
          ),
      );
      expect(missing).toEqual([]);
      expect(audited.length).toBeGreaterThanOrEqual(25);
      // Reads are not audited; newest first.
      expect(all.some((a) => a.action.startsWith('GET'))).toBe(false);
      expect(all.map((a) => a.at)).toEqual([...all.map((a) => a.at)].sort().reverse());
      const byAction = await api.get('/api/v1/audit?action=user.delete&limit=500');
      expect(byAction.body.items.length).toBeGreaterThan(0);
      expect(byAction.body.items.every((a: { action: string }) => a.action === 'user.delete')).toBe(true);
    });
  });

  describe.sequential('audit filters', () => {
    // Rows of their own (a unique action) at known times, so the filters can be checked exactly.
    const action = `test.filter-${kind}`;
    const base = Date.parse('2030-01-01T00:00:00.000Z');
    const rows = Array.from({ length: 7 }, (_, i) => ({
      id: randomUUID(),
      at: new Date(base + i * 60_000).toISOString(),
      actor_type: (i % 2 ? 'token' : 'user') as 'token' | 'user',
      actor_id: i % 2 ? 'tok-1' : 'usr-1',
      actor_name: i < 4 ? 'alice' : 'bob',
      action,
      target_type: i % 3 ? 'vm' : 'user',
      target_id: `t-${i}`,
      result: (i === 5 ? 'failure' : 'success') as 'success' | 'failure',
      status_code: i === 5 ? 409 : 200,
      ip: null,
    }));
    const ids = async (query: string) => {
      const r = await api.get(`/api/v1/audit?action=${action}&limit=500${query}`);
      expect(r.status, r.text).toBe(200);
      return (r.body.items as Array<{ target: { id: string } }>).map((e) => e.target.id);
    };

    beforeAll(async () => {
      await t.manager.services.store.db.insertInto('audit_events').values(rows).execute();
    });

    it('lists newest first and pages by cursor without gaps or repeats; order=asc is oldest first', async () => {
      const newest = ['t-6', 't-5', 't-4', 't-3', 't-2', 't-1', 't-0'];
      expect(await ids('')).toEqual(newest);
      expect(await ids('&order=asc')).toEqual([...newest].reverse());
      const paged: string[] = [];
      let cursor: string | null = null;
      do {
        const r = await api.get(`/api/v1/audit?action=${action}&limit=3${cursor ? `&cursor=${cursor}` : ''}`);
        expect(r.body.items.length).toBeLessThanOrEqual(3);
        paged.push(...r.body.items.map((e: { target: { id: string } }) => e.target.id));
        cursor = r.body.next;
      } while (cursor);
      expect(paged).toEqual(newest);
    });

    it('filters by actor, target, result and time (since inclusive, until exclusive, any offset)', async () => {
      expect(await ids('&actor_name=bob')).toEqual(['t-6', 't-5', 't-4']);
      expect(await ids('&actor_type=token')).toEqual(['t-5', 't-3', 't-1']);
      expect(await ids('&actor_id=usr-1&actor_name=alice')).toEqual(['t-2', 't-0']);
      expect(await ids('&target_type=user')).toEqual(['t-6', 't-3', 't-0']);
      expect(await ids('&target_id=t-4')).toEqual(['t-4']);
      expect(await ids('&result=failure')).toEqual(['t-5']);
      expect(await ids('&since=2030-01-01T00:02:00Z&until=2030-01-01T00:05:00Z')).toEqual([
        't-4',
        't-3',
        't-2',
      ]);
      // 01:03+01:00 is 00:03 UTC.
      expect(await ids(`&since=${encodeURIComponent('2030-01-01T01:03:00+01:00')}`)).toEqual([
        't-6',
        't-5',
        't-4',
        't-3',
      ]);
    });

    it('refuses malformed filters with 400 and the failing field', async () => {
      for (const [query, field] of [
        ['since=yesterday', 'querystring.since'],
        ['until=2030-13-01T00:00:00Z', 'querystring.until'],
        ['result=maybe', 'querystring.result'],
        ['actor_type=robot', 'querystring.actor_type'],
        ['order=sideways', 'querystring.order'],
      ]) {
        const r = await api.get(`/api/v1/audit?${query}`);
        expectError(r, 400, 'VALIDATION_FAILED');
        expect(failingFields(r), query).toEqual([field]);
      }
    });
  });

  describe.sequential('retention', () => {
    const day = 86_400_000;
    const insertOp = (
      id: string,
      createdAgo: number,
      finishedAgo: number | null,
      status: 'succeeded' | 'queued',
    ) =>
      t.manager.services.store.db
        .insertInto('operations')
        .values({
          id,
          kind: 'vm.define',
          target_type: 'vm',
          target_id: randomUUID(),
          status,
          progress_percent: 100,
          progress_message: 'old',
          error_code: null,
          error_message: null,
          params: '{}',
          created_by: 'admin',
          created_at: isoAfter(-createdAgo),
          updated_at: isoAfter(-createdAgo),
          finished_at: finishedAgo === null ? null : isoAfter(-finishedAgo),
        })
        .execute();
    const insertAudit = (id: string, ago: number) =>
      t.manager.services.store.db
        .insertInto('audit_events')
        .values({
          id,
          at: isoAfter(-ago),
          actor_type: 'system',
          actor_id: null,
          actor_name: 'test',
          action: 'test.old',
          target_type: 'test',
          target_id: id,
          result: 'success',
          status_code: 200,
          ip: null,
        })
        .execute();

    it('prunes finished operations and audit events older than the retention', async () => {
      const [oldOp, oldQueued, newOp, oldAudit, newAudit] = [
        randomUUID(),
        randomUUID(),
        randomUUID(),
        randomUUID(),
        randomUUID(),
      ];
      await insertOp(oldOp, 41 * day, 40 * day, 'succeeded');
      await insertOp(oldQueued, 41 * day, null, 'queued');
      await insertOp(newOp, 2 * day, day, 'succeeded');
      await insertAudit(oldAudit, 400 * day);
      await insertAudit(newAudit, 10 * day);
      const s = t.manager.services;
      expect(await s.ops.prune(isoAfter(-s.config.operationRetentionDays * day))).toBe(1);
      expect(await s.audit.prune(isoAfter(-s.config.auditRetentionDays * day))).toBe(1);
      expectError(await api.get(`/api/v1/operations/${oldOp}`), 404, 'OPERATION_NOT_FOUND');
      expect((await api.get(`/api/v1/operations/${oldQueued}`)).status).toBe(200);
      expect((await api.get(`/api/v1/operations/${newOp}`)).status).toBe(200);
      expect((await api.get(`/api/v1/audit?target_id=${oldAudit}`)).body.items).toEqual([]);
      expect((await api.get(`/api/v1/audit?target_id=${newAudit}`)).body.items).toHaveLength(1);
    });

    it('the background loop prunes by NQVM_*_RETENTION_DAYS', async () => {
      const [oldOp, keptOp, oldAudit, keptAudit] = [randomUUID(), randomUUID(), randomUUID(), randomUUID()];
      await insertOp(oldOp, 3 * day, 2 * day, 'succeeded');
      await insertOp(keptOp, 3 * day, 0.5 * day, 'succeeded');
      await insertAudit(oldAudit, 2 * day);
      await insertAudit(keptAudit, 0.5 * day);
      const other = await startBare(
        kind,
        { NQVM_OPERATION_RETENTION_DAYS: '1', NQVM_AUDIT_RETENTION_DAYS: '1' },
        t.dbUrl,
      );
      try {
        const db = t.manager.services.store.db;
        for (let i = 0; i < 50; i++) {
          const left = await db.selectFrom('operations').select('id').where('id', '=', oldOp).execute();
          if (left.length === 0) break;
          await sleep(100);
        }
        expect(
          await db.selectFrom('operations').select('id').where('id', 'in', [oldOp, keptOp]).execute(),
        ).toEqual([{ id: keptOp }]);
        expect(
          await db.selectFrom('audit_events').select('id').where('id', 'in', [oldAudit, keptAudit]).execute(),
        ).toEqual([{ id: keptAudit }]);
      } finally {
        await other.close();
      }
    });
  });
});

describe.concurrent.each(DATASTORES)('first start without NQVM_ADMIN_PASSWORD on %s', (kind) => {
  let m: Awaited<ReturnType<typeof startBare>>;
  beforeAll(async () => {
    m = await startBare(kind);
  });
  afterAll(async () => {
    await m?.close();
  });
  const tryLogin = (username: string, password: string) =>
    client(m.url).post('/api/v1/auth/login', { username, password });

  it.sequential('creates the admin with a random password that works; no default password does', async () => {
    const pw = m.manager.firstAdmin?.generatedPassword;
    expect(m.manager.firstAdmin?.username).toBe('admin');
    expect(pw).toBeTypeOf('string');
    expect(pw!.length).toBeGreaterThanOrEqual(16);
    for (const guess of ['admin', 'password', 'changeme', 'nqvm']) {
      expectError(await tryLogin('admin', guess), 401, 'INVALID_CREDENTIALS');
    }
    expect((await tryLogin('admin', pw!)).status).toBe(200);
    for (const guess of ['admin123', '12345678', '']) {
      expectError(await tryLogin('admin', guess), 401, 'INVALID_CREDENTIALS');
    }
    expect((await tryLogin('admin', pw!)).status).toBe(200);
    const row = await m.store.db
      .selectFrom('users')
      .select('password_hash')
      .where('username', '=', 'admin')
      .executeTakeFirstOrThrow();
    expect(row.password_hash).toMatch(/^scrypt\$/);
    expect(row.password_hash).not.toContain(pw!);
  });

  it.sequential('failures from one address do not lock the account out for its owner elsewhere', async () => {
    const pw = m.manager.firstAdmin!.generatedPassword!;
    for (let i = 0; i < 5; i++)
      expect((await loginFrom(m.url, '127.0.0.2', 'admin', `wrong-${i}`)).status).toBe(401);
    const blocked = await loginFrom(m.url, '127.0.0.2', 'admin', pw);
    expect(blocked.status).toBe(429);
    expect(blocked.body.error.code).toBe('LOGIN_THROTTLED');
    // The attacker's address is held back; the owner's is not.
    expect((await tryLogin('admin', pw)).status).toBe(200);
    // Nor can the attacker reset the count by logging in to an account of their own.
    expect((await loginFrom(m.url, '127.0.0.2', 'admin', pw)).status).toBe(429);
  });

  it.sequential('repeated failed logins -> 429 LOGIN_THROTTLED with Retry-After, even with the right password', async () => {
    const pw = m.manager.firstAdmin!.generatedPassword!;
    for (let i = 0; i < 5; i++)
      expectError(await tryLogin('admin', `wrong-${i}`), 401, 'INVALID_CREDENTIALS');
    const throttled = await tryLogin('admin', pw);
    expectError(throttled, 429, 'LOGIN_THROTTLED');
    const retry = Number(throttled.headers.get('retry-after'));
    expect(Number.isInteger(retry) && retry >= 1 && retry <= 300).toBe(true);
    // The user name is matched case-insensitively by the throttle.
    expectError(await tryLogin('ADMIN', pw), 429, 'LOGIN_THROTTLED');
    await sleep(retry * 1000 + 200);
    expect((await tryLogin('admin', pw)).status).toBe(200);

    const token = await tokenFor(m.url, 'admin', pw);
    const audit = await client(m.url, token).get('/api/v1/audit?action=auth.login&limit=500');
    const codes = audit.body.items.map(
      (a: { status_code: number; result: string }) => `${a.status_code} ${a.result}`,
    );
    expect(codes).toContain('429 failure');
    expect(codes).toContain('401 failure');
    expect(codes).toContain('200 success');
  });
});
