/**
 * `nqvm template ...` against a real manager (SQLite, no hosts): flags become the template spec
 * and the instantiate overrides, names resolve to ids, and refused overrides exit 1 with the
 * failing fields printed. VMs are created stopped, so no guest boots.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadManagerConfig } from '@nqvm/manager/config';
import { createManager, type Manager } from '@nqvm/manager/manager';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { buildProgram } from '../program';

const ADMIN_PASSWORD = 'admin-password-for-cli-tests';

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

describe.sequential('nqvm template', () => {
  let dir: string;
  let manager: Manager;
  let url: string;
  let token: string;

  /** Runs one CLI command; answers its exit code, stdout and stderr. */
  const nqvm = async (...args: string[]) => {
    let out = '';
    let err = '';
    const o = vi.spyOn(process.stdout, 'write').mockImplementation((s) => {
      out += String(s);
      return true;
    });
    const e = vi.spyOn(process.stderr, 'write').mockImplementation((s) => {
      err += String(s);
      return true;
    });
    process.exitCode = 0;
    try {
      await buildProgram()
        .exitOverride()
        .parseAsync(['--server', url, '--token', token, '-o', 'json', ...args], { from: 'user' });
    } finally {
      o.mockRestore();
      e.mockRestore();
    }
    const code = Number(process.exitCode ?? 0);
    process.exitCode = 0;
    return { code, out, err, json: () => JSON.parse(out) };
  };
  const api = async (p: string) => {
    const r = await fetch(`${url}${p}`, { headers: { authorization: `Bearer ${token}` } });
    return r.json();
  };

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-cli-template-'));
    process.env.NQVM_CONFIG = path.join(dir, 'cli.json');
    const config = loadManagerConfig({
      NQVM_DATA_DIR: dir,
      DATABASE_URL: `sqlite:${path.join(dir, 'nqvm.db')}`,
      MANAGER_BIND: '127.0.0.1:0',
      NQVM_ADMIN_PASSWORD: ADMIN_PASSWORD,
      NQVM_LOG_LEVEL: 'silent',
    });
    manager = await createManager(config, { loopIntervalMs: 200 });
    url = await manager.listen();
    token = await adminToken(url);
    const n = await fetch(`${url}/api/v1/networks`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'cli-net', kind: 'isolated', cidr: '10.78.0.0/24' }),
    });
    expect(n.status).toBe(201);
  });
  afterAll(async () => {
    await manager?.close();
    delete process.env.NQVM_CONFIG;
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('creates a template from vm-create flags, shows and lists it by name', async () => {
    const r = await nqvm(
      'template',
      'create',
      'web',
      '--vcpu',
      '2',
      '--mem',
      '1G',
      '--disk-size',
      '2G',
      '--network',
      'cli-net',
      '--user',
      'alice',
      '--ssh-key',
      'ssh-ed25519 AAAA alice',
      '--restart',
      'always',
      '-l',
      'tier=web',
      '-l',
      'env=dev',
      '--description',
      'web nodes',
    );
    expect(r.code, r.err).toBe(0);
    const net = (await api('/api/v1/networks')).items.find((x: { name: string }) => x.name === 'cli-net');
    expect(r.json()).toMatchObject({
      name: 'web',
      description: 'web nodes',
      spec: {
        vcpu: 2,
        mem_mib: 1024,
        disk_size_mib: 2048,
        networks: [{ network_id: net.id }],
        guest_config: { mode: 'auto', username: 'alice', ssh_authorized_keys: ['ssh-ed25519 AAAA alice'] },
        restart_policy: 'always',
        labels: { tier: 'web', env: 'dev' },
      },
    });
    const shown = await nqvm('template', 'show', 'web');
    expect(shown.json().id).toBe(r.json().id);
    const listed = await nqvm('template', 'list');
    expect(listed.json().map((t: { name: string }) => t.name)).toEqual(['web']);
    // Unset flags leave the server defaults.
    const bare = await nqvm('template', 'create', 'bare');
    expect(bare.json().spec).toMatchObject({ vcpu: 1, mem_mib: 256, networks: null, labels: {} });
  });

  it('instantiates VMs with overrides and waits for the (stopped) VM', async () => {
    const a = await nqvm('template', 'instantiate', 'web', '--name', 'web1', '--no-start');
    expect(a.code, a.err).toBe(0);
    expect(a.json()).toMatchObject({ name: 'web1', state: 'stopped', vcpu: 2, mem_mib: 1024 });
    const b = await nqvm(
      'template',
      'instantiate',
      'web',
      '--name',
      'web2',
      '--vcpu',
      '4',
      '--mem',
      '2G',
      '-l',
      'env=prod',
      '--hostname',
      'second',
      '--no-start',
    );
    expect(b.code, b.err).toBe(0);
    const vm = await api(`/api/v1/vms/${b.json().id}`);
    expect(vm).toMatchObject({
      vcpu: 4,
      mem_mib: 2048,
      labels: { tier: 'web', env: 'prod' },
      guest_config: { username: 'alice', hostname: 'second' },
      restart_policy: 'always',
    });
  });

  it('exits 1 naming the fields when the overrides are refused, and creates nothing', async () => {
    const before = (await api('/api/v1/vms')).items.length;
    const r = await nqvm('template', 'instantiate', 'web', '--name', 'bad', '--vcpu', '0', '--no-start');
    expect(r.code).toBe(1);
    expect(r.err).toContain('VALIDATION_FAILED');
    expect(r.err).toContain('body.overrides.vcpu');
    const missing = await nqvm('template', 'instantiate', 'nope', '--name', 'bad2');
    expect(missing.code).toBe(1);
    expect(missing.err).toContain('TEMPLATE_NOT_FOUND');
    expect((await api('/api/v1/vms')).items.length).toBe(before);
  });

  it('makes a template from a VM and deletes templates by name', async () => {
    const r = await nqvm('template', 'from-vm', 'web2', '--name', 'web2-shape');
    expect(r.code, r.err).toBe(0);
    expect(r.json().spec).toMatchObject({ vcpu: 4, mem_mib: 2048, labels: { tier: 'web', env: 'prod' } });
    for (const name of ['web2-shape', 'bare']) {
      const d = await nqvm('template', 'delete', name);
      expect(d.code, d.err).toBe(0);
    }
    const listed = await nqvm('template', 'list');
    expect(listed.json().map((t: { name: string }) => t.name)).toEqual(['web']);
  });
});
