import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { closeSync, existsSync, openSync, readSync, rmSync, statSync, writeSync } from 'node:fs';
import path from 'node:path';
import type { AgentVolume } from '@nqvm/api';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Agent } from '../agent/agent';
import { FakeDriver } from '../agent/fake-driver';
import {
  fakeImages,
  managerKeys,
  SignedAgentClient,
  startStandaloneAgent,
  tempDir,
  vmCommand,
  waitFor,
  waitForState,
} from '../agent/testing';
import { VolumeStore, volumeLabel } from './volume-store';

const MiB = 1024 * 1024;
const keys = managerKeys();

function volume(over: Partial<AgentVolume> = {}): AgentVolume {
  return { id: randomUUID(), name: 'data', size_mib: 64, filesystem: 'none', read_only: false, ...over };
}

/** `dumpe2fs -h` fields of an ext4 image file. */
function superblock(file: string): Record<string, string> {
  const out = execFileSync('dumpe2fs', ['-h', file], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  return Object.fromEntries(
    out
      .split('\n')
      .map((l) => /^([^:]+):\s*(.*)$/.exec(l))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => [m[1]!.trim(), m[2]!.trim()]),
  );
}

function readAt(file: string, offset: number, length: number): Buffer {
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    readSync(fd, buf, 0, length, offset);
    return buf;
  } finally {
    closeSync(fd);
  }
}

describe('VolumeStore', () => {
  let dir: string;
  let store: VolumeStore;

  beforeEach(() => {
    dir = tempDir('nqvm-volumes-');
    store = new VolumeStore(dir);
  });

  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('makes a sparse ext4 volume at first use and never again', async () => {
    const v = volume({ name: 'postgres data 2024!', size_mib: 256, filesystem: 'ext4' });
    const first = await store.ensure(v);
    expect(first).toEqual({ file: path.join(dir, 'volumes', `${v.id}.raw`), created: true });
    const st = statSync(first.file);
    expect(st.size).toBe(256 * MiB);
    expect(st.blocks * 512).toBeLessThan(32 * MiB);
    const sb = superblock(first.file);
    expect(sb['Filesystem volume name']).toBe('postgres-data-20');
    expect(Number(sb['Block count']) * Number(sb['Block size'])).toBe(256 * MiB);

    // What the guest wrote survives the next boot's ensure.
    const marker = Buffer.from('written by the guest');
    const fd = openSync(first.file, 'r+');
    writeSync(fd, marker, 0, marker.length, 100 * MiB);
    closeSync(fd);
    expect(await store.ensure(v)).toEqual({ file: first.file, created: false });
    expect(readAt(first.file, 100 * MiB, marker.length)).toEqual(marker);
  });

  it('makes a raw volume without a file system', async () => {
    const v = volume({ size_mib: 32 });
    const { file } = await store.ensure(v);
    expect(statSync(file).size).toBe(32 * MiB);
    expect(statSync(file).blocks).toBe(0);
  });

  it('grows a volume and its ext4 when size_mib grew, never shrinks one', async () => {
    const v = volume({ size_mib: 64, filesystem: 'ext4' });
    const { file } = await store.ensure(v);
    await store.ensure({ ...v, size_mib: 128 });
    expect(statSync(file).size).toBe(128 * MiB);
    const sb = superblock(file);
    expect(Number(sb['Block count']) * Number(sb['Block size'])).toBe(128 * MiB);
    await store.ensure({ ...v, size_mib: 16 });
    expect(statSync(file).size).toBe(128 * MiB);
  });

  it('derives labels of at most 16 safe characters', () => {
    expect(volumeLabel('a'.repeat(40))).toBe('a'.repeat(16));
    expect(volumeLabel('$(rm -rf /)')).toBe('rm--rf');
    expect(volumeLabel('***')).toBe('nqvm-volume');
  });

  it('builds paths only from UUIDs', async () => {
    expect(() => store.fileOf('../../etc/passwd')).toThrow(/not a volume id/);
    await expect(store.ensure(volume({ id: '../x' }))).rejects.toThrow(/not a volume id/);
    expect(await store.remove(randomUUID())).toBe(false);
  });
});

describe('volumes on an agent', () => {
  let dir: string;
  let stateDir: string;
  let driver: FakeDriver;
  let agent: Agent;
  let client: SignedAgentClient;
  let images: ReturnType<typeof fakeImages>;

  beforeEach(async () => {
    dir = tempDir('nqvm-volumes-agent-');
    stateDir = path.join(dir, 'state');
    images = fakeImages(dir);
    driver = new FakeDriver('qemu');
    ({ agent } = await startStandaloneAgent({
      stateDir,
      drivers: [driver],
      publicKeyPem: keys.publicKeyPem,
    }));
    client = new SignedAgentClient(agent.url, keys.privateKey);
  });

  afterEach(async () => {
    await agent.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const volumeFile = (id: string) => path.join(stateDir, 'volumes', `${id}.raw`);

  it('attaches volumes after the root disk, keeps them across the VM delete, and deletes them on request', async () => {
    const data = volume({ filesystem: 'ext4' });
    const seed = volume({ size_mib: 8, read_only: true });
    const id = randomUUID();
    await client.put(id, vmCommand(1, 'running', images, { spec: { volumes: [data, seed] } }));
    await waitForState(agent, id, 'running');
    expect(driver.boots[0]!.disks).toEqual([
      expect.objectContaining({ id: 'root', isRoot: true }),
      {
        id: `vol-${data.id.slice(0, 8)}`,
        path: volumeFile(data.id),
        format: 'raw',
        readOnly: false,
        isRoot: false,
      },
      {
        id: `vol-${seed.id.slice(0, 8)}`,
        path: volumeFile(seed.id),
        format: 'raw',
        readOnly: true,
        isRoot: false,
      },
    ]);
    expect(superblock(volumeFile(data.id))['Filesystem volume name']).toBe('data');

    const busy = await client.call('DELETE', `/v1/volumes/${data.id}`);
    expect(busy.status).toBe(409);
    expect(busy.json.error).toMatchObject({ code: 'VOLUME_IN_USE', details: { vm_id: id } });
    expect(existsSync(volumeFile(data.id))).toBe(true);

    await client.del(id);
    await waitFor('the VM folder to go', () => !existsSync(path.join(stateDir, 'vms', id)));
    expect(existsSync(volumeFile(data.id))).toBe(true);
    expect(existsSync(volumeFile(seed.id))).toBe(true);

    expect((await client.call('DELETE', `/v1/volumes/${data.id}`)).status).toBe(204);
    expect(existsSync(volumeFile(data.id))).toBe(false);
    expect((await client.call('DELETE', `/v1/volumes/${data.id}`)).status).toBe(204);
    expect(existsSync(volumeFile(seed.id))).toBe(true);
  });

  it('lets a stopped VM’s volume go, and refuses ids that are not UUIDs', async () => {
    const v = volume();
    const id = randomUUID();
    await client.put(id, vmCommand(1, 'running', images, { spec: { volumes: [v] } }));
    await waitForState(agent, id, 'running');
    await client.put(id, vmCommand(2, 'stopped', images, { spec: { volumes: [v] } }));
    await waitForState(agent, id, 'stopped');
    expect((await client.call('DELETE', `/v1/volumes/${v.id}`)).status).toBe(204);
    expect(existsSync(volumeFile(v.id))).toBe(false);

    const bad = await client.call('DELETE', `/v1/volumes/${encodeURIComponent('../vms')}`);
    expect(bad.status).toBe(400);
    expect((await client.call('DELETE', `/v1/volumes/${v.id.toUpperCase()}`)).status).toBe(400);
  });

  it('removes the volumes a failed boot made, and keeps those that existed', async () => {
    const old = volume({ filesystem: 'ext4' });
    const fresh = volume({ filesystem: 'ext4' });
    const first = randomUUID();
    await client.put(first, vmCommand(1, 'running', images, { spec: { volumes: [old] } }));
    await waitForState(agent, first, 'running');
    await client.put(first, vmCommand(2, 'stopped', images, { spec: { volumes: [old] } }));
    await waitForState(agent, first, 'stopped');

    driver.failBoot = new Error('VMM would not start');
    const second = randomUUID();
    await client.put(second, vmCommand(1, 'running', images, { spec: { volumes: [old, fresh] } }));
    const failed = await waitForState(agent, second, 'failed');
    expect(failed.error).toContain('boot step "boot-vmm" failed');
    expect(existsSync(volumeFile(old.id))).toBe(true);
    expect(existsSync(volumeFile(fresh.id))).toBe(false);
  });
});
