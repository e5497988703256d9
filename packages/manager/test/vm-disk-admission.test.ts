/**
 * A create whose disk no host has room for is refused at once (507 INSUFFICIENT_STORAGE, the
 * code a full image store answers), by the free disk the hosts report in their heartbeats, and
 * changes nothing; on both datastores, against a stand-in agent.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerPathImage } from '../src/images/images';
import { client, DATASTORES, startManager, type TestManager } from './harness';
import { expectError } from './helpers';
import { StandInAgent } from './stand-in-agent';

const MiB = 1024 * 1024;

describe.each(DATASTORES)('VM disk admission on %s', (kind) => {
  let t: TestManager;
  let api: ReturnType<typeof client>;
  let host: StandInAgent;

  beforeAll(async () => {
    t = await startManager(kind);
    api = client(t.url, t.adminToken);
    await defaultImage('kernel', 4096);
    // A sparse 64 MiB root image: a VM without disk_size_mib gets a disk that size.
    await defaultImage('rootfs', 64 * MiB);
    host = await StandInAgent.join(
      t.url,
      t.adminToken,
      t.manager.services.managerKey.publicKeyPem,
      `disk-${kind}`,
    );
  });
  afterAll(async () => {
    await host?.close();
    await t?.close();
  });

  const defaultImage = async (kind: 'kernel' | 'rootfs', bytes: number) => {
    const file = path.join(t.dataDir, kind);
    fs.closeSync(fs.openSync(file, 'w'));
    fs.truncateSync(file, bytes);
    await registerPathImage(t.manager.services.store, { name: kind, kind, path: file, isDefault: true });
  };
  /** From now on the host reports `mib` free on its disk; resolves once a heartbeat said so. */
  const reportFree = async (mib: number) => {
    host.capacity.disk_free_mib = mib;
    await host.heartbeat();
  };
  const vmNamed = async (name: string) =>
    (await api.get(`/api/v1/vms?name=${name}&limit=10`)).body.items.filter(
      (v: { name: string }) => v.name === name,
    );

  it('refuses a VM whose disk is larger than any host has free, and makes nothing', async () => {
    await reportFree(40);
    const opsBefore = (await api.get('/api/v1/operations?limit=500')).body.items.length;
    const r = await api.post('/api/v1/vms', { name: 'too-big', disk_size_mib: 1024, networks: [] });
    expectError(r, 507, 'INSUFFICIENT_STORAGE');
    expect(r.body.error.message).toContain(
      `no host has room for the VM's 1024 MiB disk (disk-${kind}: 40 MiB free)`,
    );
    expect(r.body.error.details).toEqual({
      disk_mib: 1024,
      hosts: [{ host_id: host.hostId, name: `disk-${kind}`, disk_free_mib: 40 }],
    });
    expect(await vmNamed('too-big')).toEqual([]);
    expect((await api.get('/api/v1/operations?limit=500')).body.items.length).toBe(opsBefore);
  });

  it('measures a VM without disk_size_mib by its root image', async () => {
    const r = await api.post('/api/v1/vms', { name: 'image-sized', networks: [] });
    expectError(r, 507, 'INSUFFICIENT_STORAGE');
    expect(r.body.error.details.disk_mib).toBe(64);
  });

  it('takes a disk that fits, a VM only defined, and a larger one once space was freed', async () => {
    const fits = await api.post('/api/v1/vms', { name: 'fits', disk_size_mib: 32, networks: [] });
    expect(fits.status, fits.text).toBe(202);
    // Defined, not started: it takes no disk until it starts.
    const defined = await api.post('/api/v1/vms', {
      name: 'defined',
      disk_size_mib: 1024,
      start: false,
      networks: [],
    });
    expect(defined.status, defined.text).toBe(202);
    await reportFree(2048);
    const freed = await api.post('/api/v1/vms', { name: 'after-freeing', disk_size_mib: 1024, networks: [] });
    expect(freed.status, freed.text).toBe(202);
  });

  it('lets hosts that report no free disk (older agents) take the VM', async () => {
    delete host.capacity.disk_free_mib;
    await host.heartbeat();
    // More than the 2048 MiB last reported free, within the host's disk capacity (its VMs reserve 1056).
    const r = await api.post('/api/v1/vms', { name: 'old-agent', disk_size_mib: 90_000, networks: [] });
    expect(r.status, r.text).toBe(202);
  });
});
