/**
 * Port forwards and the host's own listeners: the agent answers (signed) whether a program on
 * the host listens on a port, read from the host's socket tables, so the manager can refuse a
 * forward that would shadow it; and a VM's forwards are applied each on its own, so one refused
 * forward leaves the others their rules.
 */
import { rmSync } from 'node:fs';
import net from 'node:net';
import type { AgentPortForward } from '@nqvm/api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HostNetwork } from '../network';
import type { Agent } from './agent';
import { FakeDriver } from './fake-driver';
import { managerKeys, SignedAgentClient, startStandaloneAgent, tempDir } from './testing';
import { syncPortForwards } from './vm-network';

describe('the host ports route', () => {
  const keys = managerKeys();
  const dir = tempDir();
  let agent: Agent;
  let client: SignedAgentClient;
  let server: net.Server;
  let port: number;

  beforeAll(async () => {
    ({ agent } = await startStandaloneAgent({
      stateDir: `${dir}/state`,
      drivers: [new FakeDriver('qemu')],
      publicKeyPem: keys.publicKeyPem,
    }));
    client = new SignedAgentClient(agent.url, keys.privateKey);
    server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as net.AddressInfo).port;
  });
  afterAll(async () => {
    server?.close();
    await agent?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('says a port a program listens on is taken, and is free once it closes', async () => {
    expect((await client.call('GET', `/v1/host/ports/tcp/${port}`)).json).toEqual({
      proto: 'tcp',
      port,
      listening: true,
    });
    // UDP is another table: nothing is bound there.
    expect((await client.call('GET', `/v1/host/ports/udp/${port}`)).json.listening).toBe(false);
    await new Promise((r) => server.close(r));
    expect((await client.call('GET', `/v1/host/ports/tcp/${port}`)).json.listening).toBe(false);
  });

  it('refuses bad input and unsigned callers', async () => {
    expect((await client.call('GET', '/v1/host/ports/icmp/80')).status).toBe(400);
    expect((await client.call('GET', '/v1/host/ports/tcp/70000')).status).toBe(400);
    expect((await fetch(`${agent.url}/v1/host/ports/tcp/80`)).status).toBe(401);
  });
});

describe('syncPortForwards', () => {
  it('applies every forward it can and names each refused one', async () => {
    const applied: number[] = [];
    const host = {
      async ensurePortForward(f: { hostPort: number }) {
        if (f.hostPort === 18791) throw new Error('the host already listens on tcp port 18791');
        applied.push(f.hostPort);
        return { actions: [], warnings: [] };
      },
      async removePortForward() {
        return { actions: [], warnings: [] };
      },
    } as unknown as HostNetwork;
    const forward = (n: number, host_port: number): AgentPortForward => ({
      id: `00000000-0000-4000-8000-00000000000${n}`,
      proto: 'tcp',
      host_port,
      guest_ip: '10.0.0.2',
      guest_port: 80,
    });
    await expect(
      syncPortForwards(host, [], [forward(1, 18791), forward(2, 18792), forward(3, 18793)]),
    ).rejects.toThrow('tcp 18791: the host already listens on tcp port 18791');
    expect(applied).toEqual([18792, 18793]);
  });
});
