/**
 * Registration, heartbeats, credential rotation and revocation against a real manager
 * (SQLite), plus TLS pinning against a manager serving HTTPS.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadManagerConfig } from '../../../manager/src/config';
import { openDatastore } from '../../../manager/src/db/datastore';
import { createManager } from '../../../manager/src/manager';
import { client, startManager, type TestManager } from '../../../manager/test/harness';
import { loadAgentConfig } from '../config';
import { type Agent, createAgent } from './agent';
import { FakeDriver } from './fake-driver';
import { SignedAgentClient, silentLogger, tempDir, waitFor } from './testing';

const MiB = 1024 * 1024;

async function joinToken(t: TestManager): Promise<string> {
  const res = await client(t.url, t.adminToken).post('/api/v1/join-tokens', { ttl_s: 600 });
  expect(res.status).toBe(201);
  return res.body.token as string;
}

describe('agent <-> real manager', () => {
  let t: TestManager;
  const dir = tempDir();
  const stateDir = path.join(dir, 'state');
  const name = `agent-${randomBytes(3).toString('hex')}`;
  const driver = new FakeDriver('qemu');
  const agents: Agent[] = [];

  const start = async (env: Record<string, string> = {}) => {
    const agent = await createAgent(
      loadAgentConfig({
        MANAGER_BASE: t.url,
        AGENT_BIND: '127.0.0.1:0',
        FC_RUN_DIR: stateDir,
        NQVM_AGENT_NAME: name,
        NQVM_AGENT_MAX_VCPU: '1',
        NQVM_AGENT_MAX_MEM_MIB: '1024',
        NQVM_AGENT_MAX_DISK_MIB: '2048',
        ...env,
      }),
      { drivers: [driver], logger: silentLogger },
    );
    agents.push(agent);
    return agent;
  };

  beforeAll(async () => {
    t = await startManager('sqlite', { NQVM_HEARTBEAT_INTERVAL_S: '1' });
  });

  afterAll(async () => {
    for (const a of agents) await a.close();
    await t?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('registers with a join token, stores its identity 0600 and shows up ready with its capacity', async () => {
    const agent = await start({ NQVM_JOIN_TOKEN: await joinToken(t) });
    expect(agent.registered).toBe(true);
    expect(agent.hostId).toMatch(/^[0-9a-f-]{36}$/);

    const file = path.join(stateDir, 'identity.json');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const identity = JSON.parse(readFileSync(file, 'utf8'));
    expect(identity).toMatchObject({
      host_id: agent.hostId,
      manager_base: t.url,
      manager_public_key: t.manager.services.managerKey.publicKeyPem,
      tls_fingerprint: null,
    });
    expect(identity.credential).toMatch(/^nqvm_host/);

    const hosts = await client(t.url, t.adminToken).get('/api/v1/hosts');
    const host = hosts.body.items.find((h: { id: string }) => h.id === agent.hostId);
    expect(host).toMatchObject({
      name,
      status: 'ready',
      address: agent.advertiseUrl,
      credential_revoked: false,
      agent_version: '0.1.0',
      capacity: {
        vcpu: 1,
        mem_mib: Math.min(1024, Math.floor(os.totalmem() / MiB)),
        disk_mib: 2048,
        kvm: false,
        drivers: [{ kind: 'qemu', available: true, version: '0.0.1', kvm: false, features: [] }],
      },
    });

    // The manager's requests verify with the key the agent got at registration.
    const signed = new SignedAgentClient(agent.url, t.manager.services.managerKey.privateKey);
    expect((await signed.list()).status).toBe(200);
  });

  it('keeps heartbeating at the interval the manager asks for', async () => {
    const before = (await client(t.url, t.adminToken).get(`/api/v1/hosts/${agents[0]!.hostId}`)).body
      .last_heartbeat_at as string;
    await waitFor(
      'a newer heartbeat',
      async () =>
        (await client(t.url, t.adminToken).get(`/api/v1/hosts/${agents[0]!.hostId}`)).body.last_heartbeat_at >
        before,
      4_000,
    );
  });

  it('rotates its credential and keeps working with the new one', async () => {
    const agent = agents[0]!;
    const old = JSON.parse(readFileSync(path.join(stateDir, 'identity.json'), 'utf8')).credential;
    await agent.rotateCredential();
    const now = JSON.parse(readFileSync(path.join(stateDir, 'identity.json'), 'utf8')).credential;
    expect(now).not.toBe(old);
    expect(statSync(path.join(stateDir, 'identity.json')).mode & 0o777).toBe(0o600);
    await agent.heartbeat();
    const old401 = await client(t.url, old).post('/api/v1/agent/heartbeat', {
      capacity: { vcpu: 1, mem_mib: 1, disk_mib: 1, kvm: false, drivers: [] },
      vms: [],
    });
    expect(old401.status).toBe(401);
  });

  it('restarts from identity.json without a join token', async () => {
    const first = agents[0]!;
    const hostId = first.hostId;
    await first.close();
    expect(await first.stopped).toEqual({ reason: 'closed' });
    const again = await start();
    expect(again.registered).toBe(false);
    expect(again.hostId).toBe(hostId);
    await again.heartbeat();
  });

  it('stops when its credential is revoked, and needs a new join token to come back', async () => {
    const agent = agents.at(-1)!;
    const revoke = await client(t.url, t.adminToken).post(`/api/v1/hosts/${agent.hostId}/revoke-credential`);
    expect(revoke.status).toBe(200);
    await agent.heartbeat();
    expect(await agent.stopped).toMatchObject({ reason: 'credential-revoked' });
    // Its API is closed: nothing serves the manager any more.
    await expect(fetch(`${agent.url}/v1/healthz`)).rejects.toThrow();

    await expect(start()).rejects.toThrow(/refused the stored host credential.*join token/);
    const back = await start({ NQVM_JOIN_TOKEN: await joinToken(t) });
    expect(back.registered).toBe(true);
    expect(back.hostId).toBe(agent.hostId);
  });
});

describe('agent <-> manager over pinned TLS', () => {
  const dir = tempDir();
  let url = '';
  let token = '';
  let close: () => Promise<void> = async () => {};
  const agents: Agent[] = [];

  beforeAll(async () => {
    const cert = path.join(dir, 'cert.pem');
    const key = path.join(dir, 'key.pem');
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-keyout',
        key,
        '-out',
        cert,
        '-days',
        '1',
        '-subj',
        '/CN=nqvm-test',
      ],
      { stdio: 'ignore' },
    );
    const config = loadManagerConfig({
      NQVM_DATA_DIR: path.join(dir, 'manager'),
      MANAGER_BIND: '127.0.0.1:0',
      NQVM_ADMIN_PASSWORD: 'admin-password-for-tests',
      NQVM_LOG_LEVEL: 'silent',
      NQVM_TLS_CERT: cert,
      NQVM_TLS_KEY: key,
    });
    const store = await openDatastore(config.databaseUrl);
    const manager = await createManager(config, { store, loopIntervalMs: 200 });
    url = await manager.listen();
    token = (await manager.services.hosts.createJoinToken({ ttl_s: 600 }, null)).token;
    close = async () => {
      await manager.close();
      await store.close();
    };
  });

  afterAll(async () => {
    for (const a of agents) await a.close();
    await close();
    rmSync(dir, { recursive: true, force: true });
  });

  const start = async (joinToken: string, stateName: string) => {
    const agent = await createAgent(
      loadAgentConfig({
        MANAGER_BASE: url,
        NQVM_JOIN_TOKEN: joinToken,
        AGENT_BIND: '127.0.0.1:0',
        FC_RUN_DIR: path.join(dir, stateName),
        NQVM_AGENT_NAME: `tls-${stateName}`,
      }),
      { drivers: [new FakeDriver('qemu')], logger: silentLogger },
    );
    agents.push(agent);
    return agent;
  };

  it('pins the certificate named in the join token', async () => {
    expect(url).toMatch(/^https:/);
    expect(token).toMatch(/~sha256:[0-9a-f]{64}$/);
    const agent = await start(token, 'pinned');
    expect(agent.registered).toBe(true);
    const identity = JSON.parse(readFileSync(path.join(dir, 'pinned', 'identity.json'), 'utf8'));
    expect(identity.tls_fingerprint).toBe(token.split('~sha256:')[1]);
    await agent.heartbeat();
  });

  it('refuses a manager whose certificate is not the pinned one', async () => {
    const wrong = `${token.split('~')[0]}~sha256:${'0'.repeat(64)}`;
    await expect(start(wrong, 'wrong-pin')).rejects.toThrow(
      /TLS certificate \(sha256:[0-9a-f]{64}\) is not the pinned one/,
    );
  });
});
