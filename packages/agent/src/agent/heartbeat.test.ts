/**
 * Heartbeat timing and content against a scripted manager: VM changes are sent at once
 * (a burst in few beats), `deleted` reports until delivered, and a 401 stops the agent for good.
 */
import { randomUUID } from 'node:crypto';
import { rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { AgentVmReport } from '@nqvm/api';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { loadAgentConfig } from '../config';
import { type Agent, createAgent } from './agent';
import { FakeDriver } from './fake-driver';
import { Heartbeater } from './heartbeat';
import type { HeartbeatBody, ManagerClient } from './manager-client';
import {
  fakeImages,
  managerKeys,
  SignedAgentClient,
  silentLogger,
  tempDir,
  vmCommand,
  waitFor,
} from './testing';

interface Beat {
  at: number;
  vms: AgentVmReport[];
}

/** Answers register and heartbeat like the manager; `refuse` turns heartbeats into 401s. */
function scriptedManager(publicKeyPem: string) {
  const beats: Beat[] = [];
  const state = { refuse: false, failNext: 0 };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = JSON.parse(Buffer.concat(chunks).toString() || '{}');
      res.setHeader('content-type', 'application/json');
      if (req.url === '/api/v1/agent/register') {
        res.statusCode = 201;
        res.end(
          JSON.stringify({
            host_id: randomUUID(),
            credential: 'nqvm_host_test',
            heartbeat_interval_s: 30,
            manager_public_key: publicKeyPem,
          }),
        );
        return;
      }
      if (req.url === '/api/v1/agent/heartbeat') {
        if (state.refuse) {
          res.statusCode = 401;
          res.end(JSON.stringify({ error: { code: 'UNAUTHENTICATED', message: 'credential revoked' } }));
          return;
        }
        beats.push({ at: Date.now(), vms: body.vms });
        if (state.failNext > 0) {
          state.failNext--;
          res.statusCode = 503;
          res.end(JSON.stringify({ error: { code: 'INTERNAL', message: 'busy' } }));
          return;
        }
        res.end(JSON.stringify({ heartbeat_interval_s: 30 }));
        return;
      }
      res.statusCode = 404;
      res.end('{}');
    });
  });
  return { server, beats, state };
}

describe('heartbeats', () => {
  const keys = managerKeys();
  const dir = tempDir();
  const images = fakeImages(dir);
  const driver = new FakeDriver('qemu');
  const manager = scriptedManager(keys.publicKeyPem);
  let agent: Agent;
  let client: SignedAgentClient;

  beforeAll(async () => {
    await new Promise<void>((resolve) => manager.server.listen(0, '127.0.0.1', resolve));
    const { port } = manager.server.address() as AddressInfo;
    agent = await createAgent(
      loadAgentConfig({
        MANAGER_BASE: `http://127.0.0.1:${port}`,
        NQVM_JOIN_TOKEN: 'nqvm_join_test',
        AGENT_BIND: '127.0.0.1:0',
        FC_RUN_DIR: path.join(dir, 'state'),
        NQVM_AGENT_NAME: 'hb-agent',
      }),
      { drivers: [driver], logger: silentLogger },
    );
    client = new SignedAgentClient(agent.url, keys.privateKey);
    await waitFor('the first heartbeat', () => manager.beats.length > 0);
  });

  afterAll(async () => {
    await agent?.close();
    manager.server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const lastReport = (id: string) => manager.beats.at(-1)?.vms.find((v) => v.id === id);

  it('sends a VM change right away, not at the 30 s interval', async () => {
    const id = randomUUID();
    await client.put(id, vmCommand(1, 'running', images));
    await waitFor('running in a heartbeat', () => lastReport(id)?.state === 'running', 1_000);
    const t0 = Date.now();
    driver.exit(id, { reason: 'crashed', code: null, signal: 'SIGABRT', message: 'QEMU aborted' });
    await waitFor('the crash in a heartbeat', () => lastReport(id)?.state === 'failed', 2_000);
    expect(Date.now() - t0).toBeLessThan(1_000);
    expect(lastReport(id)).toMatchObject({ generation: 1, error: 'QEMU aborted', pid: null, vmm: 'qemu' });
  });

  it('debounces a burst of changes into few heartbeats', async () => {
    const before = manager.beats.length;
    const ids = Array.from({ length: 5 }, () => randomUUID());
    await Promise.all(ids.map((id) => client.put(id, vmCommand(1, 'running', images))));
    await waitFor('all running', () => ids.every((id) => lastReport(id)?.state === 'running'), 2_000);
    expect(manager.beats.length - before).toBeLessThanOrEqual(4);
  });

  it('reports deleted until a heartbeat carrying it succeeds, then forgets the VM', async () => {
    const id = randomUUID();
    await client.put(id, vmCommand(1, 'running', images));
    await waitFor('running', () => lastReport(id)?.state === 'running', 1_000);
    manager.state.failNext = 1;
    await client.del(id);
    await waitFor('deleted reported', () => lastReport(id)?.state === 'deleted', 2_000);
    // The first delivery failed (503): the report is still held and sent again.
    expect(agent.vms().find((v) => v.id === id)?.state).toBe('deleted');
    await agent.heartbeat();
    expect(lastReport(id)?.state).toBe('deleted');
    expect(agent.vms().find((v) => v.id === id)).toBeUndefined();
    await agent.heartbeat();
    expect(lastReport(id)).toBeUndefined();
  });

  it('stops on a 401 and does not keep trying', async () => {
    manager.state.refuse = true;
    const id = randomUUID();
    await client.put(id, vmCommand(1, 'running', images));
    expect(await agent.stopped).toMatchObject({ reason: 'credential-revoked' });
    const count = manager.beats.length;
    await sleep(300);
    expect(manager.beats.length).toBe(count);
    // The VM was left running.
    expect(driver.isAlive(id)).toBe(true);
  });
});

describe('Heartbeater pacing', () => {
  /** A heartbeater whose manager answers at once, counting the beats. */
  function counted() {
    const sent: number[] = [];
    const hb = new Heartbeater({
      client: () =>
        ({
          heartbeat: async () => {
            sent.push(Date.now());
            return { heartbeat_interval_s: 30 };
          },
        }) as unknown as ManagerClient,
      credential: () => 'credential',
      collect: async () => ({ capacity: {}, vms: [] }) as unknown as HeartbeatBody,
      intervalS: 30,
      debounceMs: 50,
      log: silentLogger,
      onDelivered: () => {},
      onRevoked: () => {},
    });
    return { hb, sent };
  }

  it('sends a change after a quiet spell at once, and a burst as its first change and one beat more', async () => {
    vi.useFakeTimers({ now: 1_000_000 });
    try {
      const { hb, sent } = counted();
      hb.start();
      await vi.advanceTimersByTimeAsync(0);
      expect(sent).toHaveLength(1);
      // Quiet for a second: the next change goes out without waiting for the debounce delay.
      await vi.advanceTimersByTimeAsync(1_000);
      hb.poke();
      await vi.advanceTimersByTimeAsync(0);
      expect(sent).toHaveLength(2);
      // A burst right after: one more beat, 50 ms after the last one.
      for (let i = 0; i < 10; i++) hb.poke();
      await vi.advanceTimersByTimeAsync(49);
      expect(sent).toHaveLength(2);
      await vi.advanceTimersByTimeAsync(1);
      expect(sent).toHaveLength(3);
      expect(sent[2]! - sent[1]!).toBe(50);
      hb.stop();
    } finally {
      vi.useRealTimers();
    }
  });
});
