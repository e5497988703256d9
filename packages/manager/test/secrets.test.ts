/**
 * Secrets at rest and on the wire, on both datastores: after users, sessions, API tokens,
 * join tokens, host credentials and a VM guest password were created over HTTP, no stored
 * value anywhere holds a plaintext secret, and no API answer carries a stored hash.
 */
import { verify } from 'unixcrypt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_PASSWORD, client, DATASTORES, startManager, type TestManager } from './harness';
import { CAPACITY, login, rowsOf, SseClient, tableNames } from './helpers';

// The datastores run side by side (a 2-core machine runs test files one at a time); every test
// within one datastore runs in order.
describe.concurrent.each(DATASTORES)('secrets on %s', (kind) => {
  let t: TestManager;
  let api: ReturnType<typeof client>;
  /** Every plaintext secret that went through the API. */
  const plaintexts = new Map<string, string>();
  let vmId: string;
  const GUEST_PASSWORD = 'guest-Secret-4711';

  beforeAll(async () => {
    t = await startManager(kind);
    api = client(t.url, t.adminToken);
    plaintexts.set('admin password', ADMIN_PASSWORD);
    plaintexts.set('admin token', t.adminToken);

    // Users, with a password set at creation, by an admin PATCH and by the user.
    const alice = await api.post('/api/v1/users', {
      username: 'alice',
      password: 'alice-initial-pw',
      role: 'operator',
    });
    expect(alice.status).toBe(201);
    plaintexts.set('alice initial password', 'alice-initial-pw');
    expect((await api.patch(`/api/v1/users/${alice.body.id}`, { password: 'alice-reset-pw-2' })).status).toBe(
      200,
    );
    plaintexts.set('alice reset password', 'alice-reset-pw-2');
    const bob = await api.post('/api/v1/users', {
      username: 'bob',
      password: 'bob-first-password',
      role: 'viewer',
    });
    expect(bob.status).toBe(201);
    plaintexts.set('bob password', 'bob-first-password');

    // Sessions: the cookie and CSRF values.
    const s = await login(t.url, 'alice', 'alice-reset-pw-2');
    for (const c of s.setCookies) {
      const [name, value] = c.split(';')[0]!.split('=') as [string, string];
      plaintexts.set(`cookie ${name}`, value);
    }
    plaintexts.set('csrf token', s.csrf);
    const bobSession = await login(t.url, 'bob', 'bob-first-password');
    const changed = await client(t.url).post(
      '/api/v1/auth/password',
      { current_password: 'bob-first-password', new_password: 'bob-second-password' },
      { cookie: bobSession.cookie, 'x-csrf-token': bobSession.csrf },
    );
    expect(changed.status, changed.text).toBe(200);
    plaintexts.set('bob new password', 'bob-second-password');
    // A live session stays in the table.
    const live = await login(t.url, 'bob', 'bob-second-password');
    plaintexts.set('bob session', live.cookie.split('; ')[0]!.split('=')[1]!);

    // API tokens.
    const aliceToken = await client(t.url).post(
      '/api/v1/tokens',
      { name: 'alice-ci' },
      { cookie: s.cookie, 'x-csrf-token': s.csrf },
    );
    expect(aliceToken.status).toBe(201);
    plaintexts.set('alice token', aliceToken.body.token);
    const forever = await api.post('/api/v1/tokens', {
      name: 'forever',
      expires_in_days: null,
      role: 'viewer',
    });
    plaintexts.set('viewer token', forever.body.token);
    expect((await api.del(`/api/v1/tokens/${forever.body.id}`)).status).toBe(200);

    // Join tokens and host credentials (including a rotated one).
    const jt = await api.post('/api/v1/join-tokens', { description: 'rack 7' });
    plaintexts.set('join token', jt.body.token);
    const unused = await api.post('/api/v1/join-tokens', {});
    plaintexts.set('unused join token', unused.body.token);
    const reg = await client(t.url, jt.body.token).post('/api/v1/agent/register', {
      name: 'secret-host',
      address: 'http://127.0.0.1:9',
      agent_version: '0.1.0',
      capacity: CAPACITY,
    });
    expect(reg.status, reg.text).toBe(201);
    plaintexts.set('host credential', reg.body.credential);
    const rotated = await client(t.url, reg.body.credential).post('/api/v1/agent/rotate-credential');
    expect(rotated.status, rotated.text).toBe(200);
    plaintexts.set('rotated host credential', rotated.body.credential);

    // A VM with a guest password.
    const vm = await api.post('/api/v1/vms', {
      name: 'secret-vm',
      start: false,
      guest_config: {
        mode: 'cloud-init',
        username: 'ops',
        password: GUEST_PASSWORD,
        ssh_authorized_keys: ['ssh-ed25519 AAAA test'],
      },
    });
    expect(vm.status, vm.text).toBe(202);
    vmId = vm.body.vm.id;
    plaintexts.set('guest password', GUEST_PASSWORD);
    // Failed logins with secrets as the user name must not leave them in the audit log either.
    await client(t.url).post('/api/v1/auth/login', { username: 'alice', password: 'alice-typo-password' });
    plaintexts.set('mistyped password', 'alice-typo-password');
  });
  afterAll(async () => {
    await t?.close();
  });

  const allStored = async () => {
    const out: Array<{ table: string; column: string; value: string }> = [];
    for (const table of await tableNames(t.manager.services.store)) {
      for (const row of await rowsOf(t.manager.services.store, table)) {
        for (const [column, v] of Object.entries(row)) {
          if (v === null || v === undefined) continue;
          out.push({ table, column, value: typeof v === 'string' ? v : JSON.stringify(v) });
        }
      }
    }
    return out;
  };

  it.sequential('no table holds any plaintext password or token, in any column', async () => {
    const stored = await allStored();
    const tables = new Set(stored.map((s) => s.table));
    for (const expected of [
      'users',
      'sessions',
      'api_tokens',
      'join_tokens',
      'hosts',
      'vms',
      'events',
      'audit_events',
      'operations',
    ]) {
      expect(tables).toContain(expected);
    }
    expect(plaintexts.size).toBeGreaterThanOrEqual(15);
    const leaks: string[] = [];
    for (const s of stored) {
      for (const [what, secret] of plaintexts) {
        if (s.value.includes(secret)) leaks.push(`${what} in ${s.table}.${s.column}`);
      }
    }
    expect(leaks).toEqual([]);
  });

  it.sequential('passwords are stored as scrypt hashes, the guest password only as a $6$ crypt hash', async () => {
    const db = t.manager.services.store.db;
    for (const u of await db.selectFrom('users').select(['username', 'password_hash']).execute()) {
      expect(u.password_hash, u.username).toMatch(
        /^scrypt\$16384\$8\$1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{43}$/,
      );
    }
    const row = await db.selectFrom('vms').select('spec').where('id', '=', vmId).executeTakeFirstOrThrow();
    const spec = JSON.parse(row.spec) as { guest_config: Record<string, unknown> };
    const hash = spec.guest_config.password_hash as string;
    expect(hash).toMatch(/^\$6\$[^$]+\$[./0-9A-Za-z]{86}$/);
    expect(verify(GUEST_PASSWORD, hash)).toBe(true);
    expect(verify('something else', hash)).toBe(false);
    expect(spec.guest_config).not.toHaveProperty('password');
    expect((await api.get(`/api/v1/vms/${vmId}`)).body.guest_config).toEqual({
      mode: 'cloud-init',
      username: 'ops',
      has_password: true,
      ssh_authorized_keys: ['ssh-ed25519 AAAA test'],
      hostname: null,
      has_user_data: false,
    });
  });

  it.sequential('bearer secrets are stored only as SHA-256 digests', async () => {
    const db = t.manager.services.store.db;
    const hex = /^[0-9a-f]{64}$/;
    for (const r of await db.selectFrom('api_tokens').select('token_hash').execute())
      expect(r.token_hash).toMatch(hex);
    for (const r of await db.selectFrom('join_tokens').select('token_hash').execute())
      expect(r.token_hash).toMatch(hex);
    for (const r of await db.selectFrom('sessions').select(['id', 'csrf_hash']).execute()) {
      expect(r.id).toMatch(hex);
      expect(r.csrf_hash).toMatch(hex);
    }
    for (const r of await db.selectFrom('hosts').select('credential_hash').execute())
      expect(r.credential_hash).toMatch(hex);
  });

  it.sequential('no API answer (nor the event stream) carries a stored hash or a secret shown once', async () => {
    const db = t.manager.services.store.db;
    const hashes = new Set<string>();
    for (const r of await db.selectFrom('users').select('password_hash').execute())
      hashes.add(r.password_hash);
    for (const r of await db.selectFrom('api_tokens').select('token_hash').execute())
      hashes.add(r.token_hash);
    for (const r of await db.selectFrom('join_tokens').select('token_hash').execute())
      hashes.add(r.token_hash);
    for (const r of await db.selectFrom('sessions').select(['id', 'csrf_hash']).execute()) {
      hashes.add(r.id);
      hashes.add(r.csrf_hash);
    }
    for (const r of await db.selectFrom('hosts').select('credential_hash').execute())
      if (r.credential_hash) hashes.add(r.credential_hash);
    const spec = JSON.parse(
      (await db.selectFrom('vms').select('spec').where('id', '=', vmId).executeTakeFirstOrThrow()).spec,
    );
    hashes.add(spec.guest_config.password_hash);
    expect(hashes.size).toBeGreaterThan(10);

    const users = (await api.get('/api/v1/users?limit=500')).body.items as Array<{ id: string }>;
    const hosts = (await api.get('/api/v1/hosts')).body.items as Array<{ id: string }>;
    const answers: Array<[string, string]> = [];
    for (const p of [
      '/api/v1/users?limit=500',
      ...users.map((u) => `/api/v1/users/${u.id}`),
      '/api/v1/auth/me',
      '/api/v1/tokens?limit=500',
      '/api/v1/join-tokens?limit=500',
      '/api/v1/hosts',
      ...hosts.map((h) => `/api/v1/hosts/${h.id}`),
      '/api/v1/vms',
      `/api/v1/vms/${vmId}`,
      '/api/v1/operations?limit=500',
      '/api/v1/audit?limit=500',
    ]) {
      const r = await api.get(p);
      expect(r.status, p).toBe(200);
      answers.push([p, r.text]);
    }
    answers.push(['login', JSON.stringify((await login(t.url, 'alice', 'alice-reset-pw-2')).body.user)]);
    const sse = await SseClient.open(t.url, {
      authorization: `Bearer ${t.adminToken}`,
      'last-event-id': '0',
    });
    await sse.waitFor((e) => e.event === 'vm.created' && e.data.id === vmId);
    sse.close();
    expect(sse.events.some((e) => e.event === 'user.created')).toBe(true);
    answers.push(['event stream', JSON.stringify(sse.events)]);

    const leaks: string[] = [];
    for (const [where, text] of answers) {
      if (/scrypt\$|\$6\$|password_hash|token_hash|credential_hash|csrf_hash/.test(text))
        leaks.push(`hash material in ${where}`);
      for (const h of hashes) if (text.includes(h)) leaks.push(`a stored hash in ${where}`);
      for (const [what, secret] of plaintexts) if (text.includes(secret)) leaks.push(`${what} in ${where}`);
    }
    expect(leaks).toEqual([]);
  });
});
