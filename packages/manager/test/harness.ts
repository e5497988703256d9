/**
 * Test harness: a real manager over a real datastore (a fresh SQLite file, or a fresh
 * PostgreSQL database on 127.0.0.1:5432), driven through HTTP.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { loadManagerConfig } from '../src/config';
import { openDatastore } from '../src/db/datastore';
import { registerPathImage } from '../src/images/images';
import { createManager, type Manager, type ManagerOptions } from '../src/manager';

export const PG_ADMIN_URL = process.env.NQVM_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
export const DATASTORES = ['sqlite', 'postgres'] as const;
export type DatastoreKind = (typeof DATASTORES)[number];
export const ADMIN_PASSWORD = 'admin-password-for-tests';

/** Creates an empty database for one test file; answers its URL and a function to drop it. */
export async function freshDatabaseUrl(
  kind: DatastoreKind,
  dir: string,
): Promise<{ url: string; drop: () => Promise<void> }> {
  if (kind === 'sqlite') return { url: `sqlite:${path.join(dir, 'nqvm.db')}`, drop: async () => {} };
  const name = `nqvm_test_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: PG_ADMIN_URL });
  await admin.connect();
  await admin.query(`create database ${name}`);
  await admin.end();
  const u = new URL(PG_ADMIN_URL);
  u.pathname = `/${name}`;
  return {
    url: u.toString(),
    drop: async () => {
      const c = new pg.Client({ connectionString: PG_ADMIN_URL });
      await c.connect();
      await c.query(`drop database if exists ${name} with (force)`);
      await c.end();
    },
  };
}

export interface TestManager {
  manager: Manager;
  url: string;
  dataDir: string;
  dbUrl: string;
  adminToken: string;
  /** Stops the manager and starts another on the same data folder, datastore and address. */
  restart(): Promise<void>;
  close(): Promise<void>;
}

export async function startManager(
  kind: DatastoreKind,
  env: Record<string, string> = {},
  opts: ManagerOptions = {},
): Promise<TestManager> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-test-'));
  const db = await freshDatabaseUrl(kind, dataDir);
  const settings = {
    NQVM_DATA_DIR: dataDir,
    DATABASE_URL: db.url,
    MANAGER_BIND: '127.0.0.1:0',
    NQVM_ADMIN_PASSWORD: ADMIN_PASSWORD,
    NQVM_LOG_LEVEL: 'silent',
    ...env,
  };
  const open = async (bind: string) => {
    const config = loadManagerConfig({ ...settings, MANAGER_BIND: bind });
    const store = await openDatastore(config.databaseUrl);
    const manager = await createManager(config, { store, loopIntervalMs: 200, ...opts });
    return { store, manager, url: await manager.listen() };
  };
  let { store, manager, url } = await open(settings.MANAGER_BIND);
  const adminToken = await tokenFor(url, 'admin', ADMIN_PASSWORD);
  const t: TestManager = {
    manager,
    url,
    dataDir,
    dbUrl: db.url,
    adminToken,
    async restart() {
      await manager.close();
      await store.close();
      ({ store, manager, url } = await open(new URL(url).host));
      t.manager = manager;
    },
    async close() {
      await manager.close();
      await store.close();
      await db.drop();
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
  return t;
}

/** Registers a stand-in kernel file (4 KiB) as the default kernel: enough for VMs on stand-in hosts. */
export async function registerDefaultKernel(t: TestManager): Promise<void> {
  const kernel = path.join(t.dataDir, 'vmlinux');
  fs.writeFileSync(kernel, Buffer.alloc(4096, 1));
  await registerPathImage(t.manager.services.store, {
    name: 'k',
    kind: 'kernel',
    path: kernel,
    isDefault: true,
  });
}

/** Logs in and mints an API token with the user's role. */
export async function tokenFor(url: string, username: string, password: string): Promise<string> {
  const login = await fetch(`${url}/api/v1/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username, password }),
  });
  if (login.status !== 200) throw new Error(`login failed: ${login.status} ${await login.text()}`);
  const cookies = login.headers
    .getSetCookie()
    .map((c) => c.split(';')[0])
    .join('; ');
  const { csrf_token } = (await login.json()) as { csrf_token: string };
  const res = await fetch(`${url}/api/v1/tokens`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', cookie: cookies, 'x-csrf-token': csrf_token },
    body: JSON.stringify({ name: `t-${randomBytes(4).toString('hex')}` }),
  });
  if (res.status !== 201) throw new Error(`token create failed: ${res.status} ${await res.text()}`);
  return ((await res.json()) as { token: string }).token;
}

/** A small JSON client for tests. */
export function client(url: string, token?: string) {
  const call = async (method: string, p: string, body?: unknown, headers: Record<string, string> = {}) => {
    const res = await fetch(`${url}${p}`, {
      method,
      headers: {
        ...(token ? { authorization: `Bearer ${token}` } : {}),
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...headers,
      },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    // biome-ignore lint/suspicious/noExplicitAny: tests read responses loosely; schemas are checked elsewhere
    let json: any;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    return { status: res.status, body: json, text, headers: res.headers };
  };
  return {
    get: (p: string, h?: Record<string, string>) => call('GET', p, undefined, h),
    post: (p: string, b?: unknown, h?: Record<string, string>) => call('POST', p, b, h),
    patch: (p: string, b?: unknown, h?: Record<string, string>) => call('PATCH', p, b, h),
    del: (p: string, h?: Record<string, string>) => call('DELETE', p, undefined, h),
    call,
  };
}

/** Creates a user with a role and answers an API token for it. */
export async function userWithRole(t: TestManager, role: 'viewer' | 'operator' | 'admin'): Promise<string> {
  const username = `${role}-${randomBytes(3).toString('hex')}`;
  const password = `pw-${randomBytes(8).toString('hex')}`;
  const r = await client(t.url, t.adminToken).post('/api/v1/users', { username, password, role });
  if (r.status !== 201) throw new Error(`user create failed: ${r.status} ${r.text}`);
  return tokenFor(t.url, username, password);
}
