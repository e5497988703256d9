/**
 * Snapshots through the agent's API with a fake driver: taken once per id (retries answer the
 * same), refused for VMs that do not run, kept in the host's snapshot store, restored in place
 * once per generation (a later restart of that generation boots cold), restored into another
 * VM (a clone), and deleted unless a Diff builds on them. Real QEMU snapshots are tested by the
 * QEMU driver and the end-to-end tests.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { pinnedDigests } from '../images/image-pins';
import { SNAPSHOT_RECORD } from '../snapshots/snapshot-store';
import type { Agent } from './agent';
import { FakeDriver } from './fake-driver';
import {
  fakeImages,
  managerKeys,
  reportOf,
  SignedAgentClient,
  startStandaloneAgent,
  tempDir,
  vmCommand,
  waitFor,
  waitForState,
} from './testing';

const keys = managerKeys();
const backoff = { minMs: 40, maxMs: 160, stableMs: 10_000 };

describe('VM snapshots on the agent (fake driver)', () => {
  let dir: string;
  let stateDir: string;
  let images: ReturnType<typeof fakeImages>;
  let driver: FakeDriver;
  let agent: Agent;
  let client: SignedAgentClient;

  async function start(): Promise<void> {
    ({ agent } = await startStandaloneAgent({
      stateDir,
      drivers: [driver],
      publicKeyPem: keys.publicKeyPem,
      options: { restartBackoff: backoff },
    }));
    client = new SignedAgentClient(agent.url, keys.privateKey);
  }

  beforeEach(async () => {
    dir = tempDir();
    stateDir = path.join(dir, 'state');
    images = fakeImages(dir);
    images.kernel.sha256 = 'a'.repeat(64);
    driver = new FakeDriver('qemu');
    await start();
  });

  afterEach(async () => {
    await agent.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const snapshotDir = (id: string) => path.join(stateDir, 'snapshots', id);
  const take = (vmId: string, snapId: string, type: 'Full' | 'Diff' = 'Full') =>
    client.call('PUT', `/v1/vms/${vmId}/snapshots/${snapId}`, { type });

  async function runningVm(restart: 'never' | 'always' = 'never'): Promise<string> {
    const id = randomUUID();
    await client.put(id, vmCommand(1, 'running', images, { spec: { restart_policy: restart } }));
    await waitForState(agent, id, 'running');
    return id;
  }

  it('takes a snapshot once per id, into the snapshot store, and lists it', async () => {
    const vm = await runningVm();
    const snap = randomUUID();
    const r = await take(vm, snap);
    expect(r.status, r.bytes.toString()).toBe(200);
    expect(r.json).toMatchObject({
      id: snap,
      vm_id: vm,
      status: 'ready',
      type: 'Full',
      parent_id: null,
      vmm: 'qemu',
      vcpu: 1,
      mem_mib: 128,
      guest_agent: false,
      error: null,
    });
    expect(r.json.size_bytes).toBeGreaterThan(0);
    const state = JSON.parse(readFileSync(path.join(snapshotDir(snap), 'vmstate'), 'utf8'));
    expect(state).toMatchObject({ vmId: vm });
    const record = JSON.parse(readFileSync(path.join(snapshotDir(snap), SNAPSHOT_RECORD), 'utf8'));
    expect(record).toMatchObject({
      files: { state: 'vmstate', memory: null },
      image_digests: ['a'.repeat(64)],
    });
    // A retry answers the same snapshot without taking another.
    const again = await take(vm, snap);
    expect(again.json).toEqual(r.json);
    expect(driver.snapshots).toHaveLength(1);
    expect((await client.call('GET', '/v1/snapshots')).json.items).toEqual([r.json]);
    // The snapshot pins the images its restore boots.
    expect((await pinnedDigests(stateDir)).has('a'.repeat(64))).toBe(true);
  });

  it('refuses what it cannot take: a stopped VM, an unknown VM, a Diff without driver support', async () => {
    const stopped = randomUUID();
    await client.put(stopped, vmCommand(1, 'stopped', images));
    await waitForState(agent, stopped, 'stopped');
    const s = await take(stopped, randomUUID());
    expect(s.status).toBe(409);
    expect(s.json.error.code).toBe('VM_INVALID_STATE');
    expect((await take(randomUUID(), randomUUID())).status).toBe(404);
    const vm = await runningVm();
    const d = await take(vm, randomUUID(), 'Diff');
    expect(d.status).toBe(400);
    expect(d.json.error.code).toBe('SNAPSHOT_TYPE_UNSUPPORTED');
    const bad = await client.call('PUT', `/v1/vms/${vm}/snapshots/../../etc`, { type: 'Full' });
    expect(bad.status).toBeGreaterThanOrEqual(400);
    expect(driver.snapshots).toHaveLength(0);
    expect((await client.call('GET', '/v1/snapshots')).json.items).toEqual([]);
  });

  it('answers a failed snapshot with its error and keeps nothing of it', async () => {
    const vm = await runningVm();
    driver.failSnapshot = new Error('disk full');
    const snap = randomUUID();
    const r = await take(vm, snap);
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({ status: 'failed', error: 'disk full' });
    expect(existsSync(snapshotDir(snap))).toBe(false);
    // A retry tries again.
    driver.failSnapshot = null;
    expect((await take(vm, snap)).json.status).toBe('ready');
  });

  it('restores in place once per generation; a later restart of that generation boots cold', async () => {
    const vm = await runningVm('always');
    const snap = randomUUID();
    expect((await take(vm, snap)).json.status).toBe('ready');
    const cmd = vmCommand(2, 'running', images, {
      spec: { restart_policy: 'always' },
      restore: { snapshot_id: snap },
    });
    await client.put(vm, cmd);
    await waitFor('the restore', () => driver.restores.length === 1);
    const running = await waitForState(agent, vm, 'running');
    expect(driver.shutdowns.at(-1)).toMatchObject({ graceful: false });
    expect(driver.restores[0]!.snap).toEqual({
      statePath: path.join(snapshotDir(snap), 'vmstate'),
      type: 'Full',
    });
    expect(driver.restores[0]!.spec.vmDir).toBe(path.join(stateDir, 'vms', vm));
    // A retried command does not restore again.
    await client.put(vm, cmd);
    const bootsBefore = driver.boots.length;
    driver.exit(vm, { reason: 'crashed', code: 1, signal: null });
    await waitFor(
      'the restart',
      () => driver.boots.length > bootsBefore && reportOf(agent, vm)?.state === 'running',
    );
    expect(driver.restores).toHaveLength(1);
    expect(reportOf(agent, vm)!.pid).not.toBe(running.pid);
  });

  it('a restore in place answers starting, and shows running only once the restored VMM runs', async () => {
    const vm = await runningVm();
    const before = reportOf(agent, vm)!;
    const snap = randomUUID();
    expect((await take(vm, snap)).json.status).toBe('ready');
    driver.bootDelayMs = 300;
    const put = await client.put(vm, vmCommand(2, 'running', images, { restore: { snapshot_id: snap } }));
    // The old VMM still runs: "running" at generation 2 would end the restore before it began.
    expect(put.json).toMatchObject({ generation: 2, state: 'starting' });
    const seen = new Set<string>();
    const running = await waitFor('the restored VMM', () => {
      const r = reportOf(agent, vm)!;
      seen.add(r.state);
      return r.state === 'running' ? r : undefined;
    });
    expect(driver.restores).toHaveLength(1);
    expect(running.pid).not.toBe(before.pid);
    expect(driver.isAlive(vm)).toBe(true);
    expect([...seen].every((s) => s === 'starting' || s === 'stopping' || s === 'running')).toBe(true);
  });

  it('restores a snapshot into another VM (a clone) and deletes snapshots no Diff depends on', async () => {
    const source = await runningVm();
    const snap = randomUUID();
    expect((await take(source, snap)).json.status).toBe('ready');
    const clone = randomUUID();
    await client.put(clone, vmCommand(1, 'running', images, { restore: { snapshot_id: snap } }));
    await waitForState(agent, clone, 'running');
    expect(driver.restores.map((r) => r.spec.id)).toEqual([clone]);
    expect(driver.isAlive(source)).toBe(true);

    driver.features = ['diff-snapshot'];
    const diff = randomUUID();
    const d = await take(source, diff, 'Diff');
    expect(d.json).toMatchObject({ status: 'ready', type: 'Diff', parent_id: snap });
    const refused = await client.call('DELETE', `/v1/snapshots/${snap}`);
    expect(refused.status).toBe(409);
    expect(refused.json.error).toMatchObject({ code: 'SNAPSHOT_IN_USE', details: { snapshot_id: diff } });
    expect((await client.call('DELETE', `/v1/snapshots/${diff}`)).status).toBe(204);
    expect((await client.call('DELETE', `/v1/snapshots/${snap}`)).status).toBe(204);
    expect((await client.call('DELETE', `/v1/snapshots/${snap}`)).status).toBe(204);
    expect(existsSync(snapshotDir(snap))).toBe(false);
    expect((await client.call('GET', '/v1/snapshots')).json.items).toEqual([]);
  });

  it('a Diff of a new run builds on nothing: the last snapshot belongs to the previous VMM', async () => {
    driver.features = ['diff-snapshot'];
    const vm = await runningVm();
    const full = randomUUID();
    await take(vm, full);
    await client.put(vm, vmCommand(2, 'running', images, { reboot: true }));
    await waitFor('the reboot', () => driver.boots.length === 2 && reportOf(agent, vm)?.state === 'running');
    const d = await take(vm, randomUUID(), 'Diff');
    expect(d.json).toMatchObject({ status: 'ready', parent_id: null });
  });

  it('removes, at start, snapshot folders the agent stopped in the middle of', async () => {
    const unfinished = snapshotDir(randomUUID());
    mkdirSync(unfinished, { recursive: true });
    writeFileSync(path.join(unfinished, 'vmstate'), 'half');
    await agent.close();
    await start();
    expect(existsSync(unfinished)).toBe(false);
  });
});
