/**
 * A port forward on a host port that a program on the host already listens on is refused when
 * it is made (409 PORT_IN_USE naming the host), on both datastores, against a stand-in agent
 * that answers which ports its host listens on: for a VM on that host, and for a VM not placed
 * yet when every ready host listens on it. A refused forward records nothing.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerPathImage } from '../src/images/images';
import { client, DATASTORES, startManager, type TestManager } from './harness';
import { expectError, until } from './helpers';
import { StandInAgent } from './stand-in-agent';

describe.each(DATASTORES)('port forwards on a host that listens on the port, on %s', (kind) => {
  let t: TestManager;
  let api: ReturnType<typeof client>;
  let host: StandInAgent;
  let networkId: string;

  beforeAll(async () => {
    t = await startManager(kind);
    api = client(t.url, t.adminToken);
    const kernel = path.join(t.dataDir, 'vmlinux');
    fs.writeFileSync(kernel, Buffer.alloc(4096, 1));
    await registerPathImage(t.manager.services.store, {
      name: 'k',
      kind: 'kernel',
      path: kernel,
      isDefault: true,
    });
    const n = await api.post('/api/v1/networks', { name: 'pf-nat', kind: 'nat', cidr: '10.91.0.0/24' });
    expect(n.status, n.text).toBe(201);
    networkId = n.body.id;
    host = await StandInAgent.join(
      t.url,
      t.adminToken,
      t.manager.services.managerKey.publicKeyPem,
      `pf-${kind}`,
    );
    host.listening.add('tcp/18791');
    host.listening.add('tcp/18793');
  });
  afterAll(async () => {
    await host?.close();
    await t?.close();
  });

  const forwardsOf = async (vmId: string) =>
    (
      await t.manager.services.store.db
        .selectFrom('port_forwards')
        .selectAll()
        .where('vm_id', '=', vmId)
        .execute()
    ).length;

  it('refuses the port for a VM on the host and records nothing; another port is made', async () => {
    const r = await api.post('/api/v1/vms', { name: 'pf-placed', networks: [{ network_id: networkId }] });
    expect(r.status, r.text).toBe(202);
    const id = r.body.vm.id as string;
    const vm = await until('the VM runs on the host', async () => {
      const v = (await api.get(`/api/v1/vms/${id}`)).body;
      return v.state === 'running' ? v : undefined;
    });
    const taken = await api.post(`/api/v1/vms/${id}/port-forwards`, { host_port: 18791, guest_port: 80 });
    expectError(taken, 409, 'PORT_IN_USE');
    expect(taken.body.error.message).toBe(
      `tcp port 18791 is taken on host pf-${kind}: a program there listens on it; pick another host port`,
    );
    expect(taken.body.error.details).toEqual({ host_ids: [host.hostId] });
    expect(await forwardsOf(id)).toBe(0);
    expect((await api.get(`/api/v1/vms/${id}`)).body.generation).toBe(vm.generation);
    // The same port over UDP is another socket: free.
    const udp = await api.post(`/api/v1/vms/${id}/port-forwards`, {
      host_port: 18791,
      guest_port: 53,
      proto: 'udp',
    });
    expect(udp.status, udp.text).toBe(201);
    const free = await api.post(`/api/v1/vms/${id}/port-forwards`, { host_port: 18792, guest_port: 80 });
    expect(free.status, free.text).toBe(201);
    expect(await forwardsOf(id)).toBe(2);
  });

  it('refuses it for a VM not placed yet when every ready host listens on it', async () => {
    const r = await api.post('/api/v1/vms', {
      name: 'pf-unplaced',
      networks: [{ network_id: networkId }],
      start: false,
    });
    expect(r.status, r.text).toBe(202);
    const id = r.body.vm.id as string;
    expect((await api.get(`/api/v1/vms/${id}`)).body.host_id).toBeNull();
    expectError(
      await api.post(`/api/v1/vms/${id}/port-forwards`, { host_port: 18793, guest_port: 80 }),
      409,
      'PORT_IN_USE',
    );
    expect(await forwardsOf(id)).toBe(0);
  });
});
