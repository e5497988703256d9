/**
 * A real manager for the CLI's unit tests: in-process, SQLite in a temporary directory, no hosts
 * (VMs are created stopped, so no guest boots), with an admin API token for the CLI.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadManagerConfig } from '@nqvm/manager/config';
import { createManager, type Manager } from '@nqvm/manager/manager';
import { runCli } from './testing';

const ADMIN_PASSWORD = 'admin-password-for-cli-tests';

export interface CliTestManager {
  manager: Manager;
  url: string;
  token: string;
  /** Runs one CLI command against this manager with the admin token. */
  // biome-ignore lint/suspicious/noExplicitAny: parsed output of any shape, checked by the assertions
  nqvm(...args: string[]): Promise<{ code: number; out: string; err: string; json: () => any }>;
  /** A request to the API with the admin token; answers status and parsed body. */
  // biome-ignore lint/suspicious/noExplicitAny: parsed bodies of any shape, checked by the assertions
  api(method: string, p: string, body?: unknown): Promise<{ status: number; body: any }>;
  close(): Promise<void>;
}

export async function startCliTestManager(prefix: string): Promise<CliTestManager> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `nqvm-cli-${prefix}-`));
  process.env.NQVM_CONFIG = path.join(dir, 'cli.json');
  const config = loadManagerConfig({
    NQVM_DATA_DIR: dir,
    DATABASE_URL: `sqlite:${path.join(dir, 'nqvm.db')}`,
    MANAGER_BIND: '127.0.0.1:0',
    NQVM_ADMIN_PASSWORD: ADMIN_PASSWORD,
    NQVM_LOG_LEVEL: 'silent',
  });
  const manager = await createManager(config, { loopIntervalMs: 200 });
  const url = await manager.listen();
  const token = await adminToken(url);
  const api = async (method: string, p: string, body?: unknown) => {
    const r = await fetch(`${url}${p}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    return { status: r.status, body: text ? JSON.parse(text) : null };
  };
  return {
    manager,
    url,
    token,
    api,
    nqvm: async (...args: string[]) => {
      const r = await runCli(url, ['--token', token, ...args]);
      return { ...r, json: () => JSON.parse(r.out) };
    },
    close: async () => {
      await manager.close();
      delete process.env.NQVM_CONFIG;
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function adminToken(url: string): Promise<string> {
  const login = await fetch(`${url}/api/v1/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: 'admin', password: ADMIN_PASSWORD }),
  });
  const cookie = login.headers
    .getSetCookie()
    .map((c) => c.split(';')[0])
    .join('; ');
  const { csrf_token } = (await login.json()) as { csrf_token: string };
  const res = await fetch(`${url}/api/v1/tokens`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', cookie, 'x-csrf-token': csrf_token },
    body: JSON.stringify({ name: 'cli-test' }),
  });
  return ((await res.json()) as { token: string }).token;
}
