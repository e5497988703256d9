import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { VmExit } from '../drivers/types';
import { readProcStartTime } from '../host/proc';
import type { Agent } from './agent';
import { FakeDriver } from './fake-driver';
import {
  fakeImages,
  imageRef,
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

describe('VM runtime with a fake driver', () => {
  let dir: string;
  let stateDir: string;
  let images: ReturnType<typeof fakeImages>;
  let driver: FakeDriver;
  let agent: Agent;
  let client: SignedAgentClient;
  const agents: Agent[] = [];

  async function start(d: FakeDriver[] = [driver], restartBackoff = backoff): Promise<Agent> {
    const started = await startStandaloneAgent({
      stateDir,
      drivers: d,
      publicKeyPem: keys.publicKeyPem,
      options: { restartBackoff },
    });
    agents.push(started.agent);
    return started.agent;
  }

  beforeEach(async () => {
    dir = tempDir();
    stateDir = path.join(dir, 'state');
    images = fakeImages(dir);
    driver = new FakeDriver('qemu');
    agent = await start();
    client = new SignedAgentClient(agent.url, keys.privateKey);
  });

  afterEach(async () => {
    for (const a of agents.splice(0)) await a.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const vmDir = (id: string) => path.join(stateDir, 'vms', id);
  const waitForEndRecord = (id: string) =>
    waitFor('the record of how the VM ended', () => existsSync(path.join(vmDir(id), 'ended.json')));

  it('boots once per generation: a retried command does nothing', async () => {
    const id = randomUUID();
    const cmd = vmCommand(1, 'running', images);
    const first = await client.put(id, cmd);
    expect(first.status).toBe(202);
    expect(first.json).toMatchObject({ id, generation: 1, state: 'starting' });
    const again = await client.put(id, cmd);
    expect(again.status).toBe(202);
    expect(again.json.generation).toBe(1);
    const running = await waitForState(agent, id, 'running');
    expect(running).toMatchObject({ vmm: 'qemu', error: null });
    expect(running.pid).toBeGreaterThan(0);
    await client.put(id, cmd);
    await client.put(id, vmCommand(1, 'stopped', images));
    await sleep(50);
    expect(driver.boots).toHaveLength(1);
    expect(reportOf(agent, id)?.state).toBe('running');
    const run = JSON.parse(readFileSync(path.join(vmDir(id), 'run.json'), 'utf8'));
    expect(run).toMatchObject({ vmId: id, kind: 'qemu', pid: running.pid });
    const desired = JSON.parse(readFileSync(path.join(vmDir(id), 'desired.json'), 'utf8'));
    expect(desired).toMatchObject({ generation: 1, desired: 'running' });
  });

  it('reports how long each boot step took while the VM runs, the VMM start among them', async () => {
    driver.bootDelayMs = 60;
    const id = randomUUID();
    await client.put(id, vmCommand(1, 'running', images));
    const running = await waitForState(agent, id, 'running');
    const steps = running.boot_steps ?? [];
    expect(steps.map((s) => s.name)).toEqual([
      'choose-vmm',
      'prepare-dir',
      'resolve-images',
      'prepare-disk',
      'prepare-volumes',
      'guest-config',
      'container-drive',
      'prepare-network',
      'boot-vmm',
      'readdress-guest',
      'persist-run-record',
    ]);
    expect(steps.find((s) => s.name === 'boot-vmm')!.ms).toBeGreaterThanOrEqual(55);
    for (const s of steps) expect(s.ms).toBeGreaterThanOrEqual(0);
    await client.put(id, vmCommand(2, 'stopped', images));
    const stopped = await waitForState(agent, id, 'stopped');
    expect(stopped.boot_steps).toBeUndefined();
  });

  it('serializes concurrent commands and converges to the newest', async () => {
    driver.bootDelayMs = 50;
    const id = randomUUID();
    await Promise.all([
      client.put(id, vmCommand(1, 'running', images)),
      client.put(id, vmCommand(2, 'paused', images)),
    ]);
    await waitForState(agent, id, 'paused');
    expect(driver.boots).toHaveLength(1);
    expect(driver.pauses).toBe(1);
    expect(reportOf(agent, id)?.generation).toBe(2);
  });

  it('walks running -> paused -> running -> stopped -> running, with the driver calls each needs', async () => {
    const id = randomUUID();
    await client.put(id, vmCommand(1, 'running', images));
    await waitForState(agent, id, 'running');
    await client.put(id, vmCommand(2, 'paused', images));
    await waitForState(agent, id, 'paused');
    await client.put(id, vmCommand(3, 'running', images));
    await waitForState(agent, id, 'running');
    expect([driver.pauses, driver.resumes]).toEqual([1, 1]);
    const stopping = await client.put(
      id,
      vmCommand(4, 'stopped', images, { stop: { force: false, timeout_s: 7 } }),
    );
    expect(['stopping', 'stopped']).toContain(stopping.json.state);
    await waitForState(agent, id, 'stopped');
    expect(driver.shutdowns).toEqual([{ graceful: true, timeoutMs: 7000 }]);
    expect(existsSync(path.join(vmDir(id), 'run.json'))).toBe(false);
    expect(reportOf(agent, id)?.pid).toBeNull();
    await client.put(id, vmCommand(5, 'running', images));
    await waitForState(agent, id, 'running');
    expect(driver.boots.map((b) => b.generation)).toEqual([1, 5]);
  });

  it('reboots when a new generation says so: forced stop, then boot', async () => {
    const id = randomUUID();
    await client.put(id, vmCommand(1, 'running', images));
    const first = await waitForState(agent, id, 'running');
    await client.put(id, vmCommand(2, 'running', images, { reboot: true }));
    const second = await waitFor('a new pid', () => {
      const r = reportOf(agent, id);
      return r?.state === 'running' && r.pid !== first.pid ? r : undefined;
    });
    expect(second.generation).toBe(2);
    expect(driver.shutdowns).toEqual([{ graceful: false, timeoutMs: 10_000 }]);
    await client.put(id, vmCommand(2, 'running', images, { reboot: true }));
    await sleep(50);
    expect(driver.boots).toHaveLength(2);
  });

  it('forces a stop when asked', async () => {
    const id = randomUUID();
    await client.put(id, vmCommand(1, 'running', images));
    await waitForState(agent, id, 'running');
    await client.put(id, vmCommand(2, 'stopped', images, { stop: { force: true, timeout_s: 30 } }));
    await waitForState(agent, id, 'stopped');
    expect(driver.shutdowns[0]?.graceful).toBe(false);
  });

  it('aborts a boot in progress when told to stop', async () => {
    driver.bootDelayMs = 2_000;
    const id = randomUUID();
    await client.put(id, vmCommand(1, 'running', images));
    await waitFor('boot to begin', () => driver.boots.length === 1);
    await client.put(id, vmCommand(2, 'stopped', images));
    const r = await waitForState(agent, id, 'stopped', 1_000);
    expect(r.error).toBeNull();
    expect(driver.isAlive(id)).toBe(false);
  });

  it('reports a failed boot step by name and leaves nothing behind', async () => {
    driver.failBoot = new Error('no KVM in this test');
    const id = randomUUID();
    await client.put(
      id,
      vmCommand(1, 'running', { ...images, rootfs: images.rootfs }, { spec: { disk_size_mib: 64 } }),
    );
    const failed = await waitForState(agent, id, 'failed');
    expect(failed.error).toBe('boot step "boot-vmm" failed: no KVM in this test');
    // Beside the command, only the record of the failure (its reason outlives an agent restart).
    await waitForEndRecord(id);
    expect(readdirSync(vmDir(id)).sort()).toEqual(['desired.json', 'ended.json']);

    const missing = randomUUID();
    const gone = imageRef(path.join(dir, 'no-such-kernel'));
    await client.put(missing, vmCommand(1, 'running', { kernel: gone }));
    const f2 = await waitForState(agent, missing, 'failed');
    expect(f2.error).toContain('boot step "resolve-images" failed');
    expect(f2.error).toContain(`kernel image ${gone.id}`);
    await waitForEndRecord(missing);
    expect(readdirSync(vmDir(missing)).sort()).toEqual(['desired.json', 'ended.json']);
  });

  it('keeps the disk of a VM that booted before when a later boot fails', async () => {
    const id = randomUUID();
    await client.put(id, vmCommand(1, 'running', images));
    await waitForState(agent, id, 'running');
    expect(existsSync(path.join(vmDir(id), 'root.qcow2'))).toBe(true);
    await client.put(id, vmCommand(2, 'stopped', images));
    await waitForState(agent, id, 'stopped');
    driver.failBoot = new Error('boom');
    await client.put(id, vmCommand(3, 'running', images));
    await waitForState(agent, id, 'failed');
    await waitForEndRecord(id);
    expect(readdirSync(vmDir(id)).sort()).toEqual(['desired.json', 'ended.json', 'root.qcow2']);
  });

  it('refuses a VMM this host does not have, by name', async () => {
    const id = randomUUID();
    await client.put(id, vmCommand(1, 'running', images, { spec: { vmm: 'firecracker' } }));
    const failed = await waitForState(agent, id, 'failed');
    expect(failed.error).toContain(
      'boot step "choose-vmm" failed: VMM firecracker is not available on this host',
    );
  });

  it('prefers Firecracker only when it has KVM', async () => {
    await agent.close();
    const qemu = new FakeDriver('qemu');
    const fc = new FakeDriver('firecracker');
    const a = await start([qemu, fc]);
    const c = new SignedAgentClient(a.url, keys.privateKey);
    const id1 = randomUUID();
    await c.put(id1, vmCommand(1, 'running', images));
    expect((await waitForState(a, id1, 'running')).vmm).toBe('qemu');
    await a.close();
    fc.kvm = true;
    const b = await start([qemu, fc]);
    const id2 = randomUUID();
    await new SignedAgentClient(b.url, keys.privateKey).put(id2, vmCommand(1, 'running', images));
    expect((await waitForState(b, id2, 'running')).vmm).toBe('firecracker');
    expect(readdirSync(vmDir(id2))).toContain('root.raw');
  });

  describe('restart policies', () => {
    it('never: a crash is reported failed and the VM stays down', async () => {
      const id = randomUUID();
      await client.put(id, vmCommand(1, 'running', images));
      await waitForState(agent, id, 'running');
      driver.exit(id, {
        reason: 'crashed',
        code: null,
        signal: 'SIGSEGV',
        message: 'QEMU ended with signal SIGSEGV',
      });
      const r = await waitForState(agent, id, 'failed', 2_000);
      expect(r).toMatchObject({ error: 'QEMU ended with signal SIGSEGV', pid: null, generation: 1 });
      await sleep(backoff.minMs * 3);
      expect(driver.boots).toHaveLength(1);
      expect(existsSync(path.join(vmDir(id), 'run.json'))).toBe(false);
    });

    it('never: a guest poweroff is reported stopped', async () => {
      const id = randomUUID();
      await client.put(id, vmCommand(1, 'running', images));
      await waitForState(agent, id, 'running');
      driver.exit(id, { reason: 'shutdown', code: 0, signal: null, message: 'guest-shutdown' });
      expect(await waitForState(agent, id, 'stopped', 2_000)).toMatchObject({ error: null });
    });

    it('on-failure: restarts after a crash, not after a poweroff', async () => {
      const id = randomUUID();
      await client.put(id, vmCommand(1, 'running', images, { spec: { restart_policy: 'on-failure' } }));
      await waitForState(agent, id, 'running');
      driver.exit(id, { reason: 'crashed', code: 1, signal: null });
      await waitForState(agent, id, 'failed', 2_000);
      await waitFor('a restart', () => driver.boots.length === 2 && reportOf(agent, id)?.state === 'running');
      driver.exit(id, { reason: 'shutdown', code: 0, signal: null });
      await waitForState(agent, id, 'stopped');
      await sleep(backoff.maxMs * 2);
      expect(driver.boots).toHaveLength(2);
    });

    it('always: restarts after a poweroff too, with a doubling backoff', async () => {
      const id = randomUUID();
      await client.put(id, vmCommand(1, 'running', images, { spec: { restart_policy: 'always' } }));
      await waitForState(agent, id, 'running');
      const exits: number[] = [];
      for (let i = 0; i < 4; i++) {
        await waitFor('running', () => reportOf(agent, id)?.state === 'running' && driver.isAlive(id));
        exits.push(Date.now());
        driver.exit(id, { reason: i % 2 ? 'shutdown' : 'crashed', code: 0, signal: null });
        await waitFor(`boot ${i + 2}`, () => driver.boots.length === i + 2, 2_000);
      }
      await waitForState(agent, id, 'running');
      expect(driver.boots).toHaveLength(5);
      // The delay before each restart doubles from minMs up to maxMs.
      const measured = exits.map((t, i) => driver.bootedAt[i + 1]! - t);
      [40, 80, 160, 160].forEach((ms, i) => {
        expect(measured[i]).toBeGreaterThanOrEqual(ms - 5);
      });
      expect(measured[0]).toBeLessThan(160);
    });

    it('a stop from the manager is never undone by the restart policy', async () => {
      const id = randomUUID();
      await client.put(id, vmCommand(1, 'running', images, { spec: { restart_policy: 'always' } }));
      await waitForState(agent, id, 'running');
      await client.put(id, vmCommand(2, 'stopped', images, { spec: { restart_policy: 'always' } }));
      await waitForState(agent, id, 'stopped');
      await sleep(backoff.maxMs);
      expect(driver.boots).toHaveLength(1);
    });

    it('a crash its policy restarts is reported restarting until the VM is back; one it does not, not', async () => {
      // A backoff long enough to read the report in between.
      const slow = await start([driver], { minMs: 1_000, maxMs: 1_000, stableMs: 10_000 });
      const c = new SignedAgentClient(slow.url, keys.privateKey);
      const id = randomUUID();
      await c.put(id, vmCommand(1, 'running', images, { spec: { restart_policy: 'on-failure' } }));
      await waitForState(slow, id, 'running');
      driver.exit(id, { reason: 'crashed', code: null, signal: 'SIGKILL', message: 'QEMU was killed' });
      const failed = await waitForState(slow, id, 'failed', 2_000);
      expect(failed).toMatchObject({ error: 'QEMU was killed', restarting: true });
      const back = await waitForState(slow, id, 'running');
      expect(back.restarting).toBeUndefined();
      expect(driver.boots).toHaveLength(2);

      const other = randomUUID();
      await c.put(other, vmCommand(1, 'running', images, { spec: { restart_policy: 'on-failure' } }));
      await waitForState(slow, other, 'running');
      driver.exit(other, { reason: 'shutdown', code: 0, signal: null, message: 'guest-shutdown' });
      expect((await waitForState(slow, other, 'stopped', 2_000)).restarting).toBeUndefined();
    });

    it('a crash is reported within the 2 s goal', async () => {
      const id = randomUUID();
      await client.put(id, vmCommand(1, 'running', images, { spec: { restart_policy: 'never' } }));
      await waitForState(agent, id, 'running');
      const t0 = Date.now();
      driver.exit(id, { reason: 'crashed', code: null, signal: 'SIGKILL' });
      await waitForState(agent, id, 'failed', 2_000);
      expect(Date.now() - t0).toBeLessThan(2_000);
    });
  });

  describe('delete', () => {
    it('stops the VMM, removes the folder, reports deleted', async () => {
      const id = randomUUID();
      await client.put(id, vmCommand(1, 'running', images));
      await waitForState(agent, id, 'running');
      const deletedAt = Date.now();
      const res = await client.del(id);
      expect(res.status).toBe(202);
      expect(res.json.id).toBe(id);
      const deleted = await waitForState(agent, id, 'deleted');
      expect(deleted.generation).toBe(1);
      expect(existsSync(vmDir(id))).toBe(false);
      expect(driver.isAlive(id)).toBe(false);
      expect(driver.shutdowns[0]?.graceful).toBe(false);
      const list = await client.list();
      expect(list.json.items).toEqual([expect.objectContaining({ id, state: 'deleted' })]);
      // A command signed before the delete (delayed in transit) does not bring it back...
      const late = await client.call(
        'PUT',
        `/v1/vms/${id}`,
        vmCommand(1, 'running', images),
        deletedAt - 500,
      );
      expect(late.json).toMatchObject({ id, state: 'deleted' });
      await sleep(30);
      expect(driver.boots).toHaveLength(1);
      expect(existsSync(vmDir(id))).toBe(false);
      // ...one signed after it is a new decision of the manager.
      await client.put(id, vmCommand(1, 'running', images));
      await waitForState(agent, id, 'running');
      expect(driver.boots).toHaveLength(2);
    });

    it('answers 202 and reports deleted for an unknown id', async () => {
      const id = randomUUID();
      const res = await client.del(id);
      expect(res.status).toBe(202);
      expect(res.json).toMatchObject({ id, state: 'deleted' });
      expect(reportOf(agent, id)?.state).toBe('deleted');
    });

    it('deletes a VM in the middle of its boot', async () => {
      driver.bootDelayMs = 2_000;
      const id = randomUUID();
      await client.put(id, vmCommand(1, 'running', images));
      await waitFor('boot to begin', () => driver.boots.length === 1);
      await client.del(id);
      await waitForState(agent, id, 'deleted', 1_000);
      expect(existsSync(vmDir(id))).toBe(false);
    });
  });

  it('serves the console tail', async () => {
    const id = randomUUID();
    await client.put(id, vmCommand(1, 'running', images));
    await waitForState(agent, id, 'running');
    const res = await client.call('GET', `/v1/vms/${id}/console?tail=7`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('application/octet-stream');
    expect(res.bytes.toString()).toBe(`console of ${id}\n`.slice(-7));
    const big = await client.call('GET', `/v1/vms/${id}/console?tail=${2 * 1024 * 1024}`);
    expect(big.status).toBe(400);
  });

  describe('adoption after an agent restart', () => {
    async function bootThenCloseAgent(
      policy: 'never' | 'on-failure' | 'always',
      desired: 'running' | 'paused' = 'running',
    ) {
      const id = randomUUID();
      await client.put(id, vmCommand(1, desired, images, { spec: { restart_policy: policy } }));
      await waitForState(agent, id, desired);
      await agent.close();
      return id;
    }

    it('re-attaches to a VMM that still runs, without booting it again', async () => {
      const id = await bootThenCloseAgent('never');
      expect(driver.isAlive(id)).toBe(true);
      const pid = driver.boots.length;
      const next = await start();
      expect(reportOf(next, id)).toMatchObject({ state: 'running', generation: 1 });
      expect(driver.boots).toHaveLength(pid);
      // And it is watched again: a crash is reported.
      driver.exit(id, { reason: 'crashed', code: 9, signal: null });
      await waitForState(next, id, 'failed', 2_000);
    });

    it('reports an adopted paused VM paused', async () => {
      const id = await bootThenCloseAgent('never', 'paused');
      const next = await start();
      expect(reportOf(next, id)?.state).toBe('paused');
    });

    it('boots a vanished VMM once when its policy restarts it', async () => {
      const id = await bootThenCloseAgent('always');
      driver.rebootHost();
      const next = await start();
      await waitForState(next, id, 'running');
      await sleep(50);
      expect(driver.boots).toHaveLength(2);
    });

    it('reports a vanished VMM stopped when its policy is never', async () => {
      const id = await bootThenCloseAgent('never');
      driver.rebootHost();
      const next = await start();
      expect(reportOf(next, id)).toMatchObject({ state: 'stopped', pid: null });
      await sleep(50);
      expect(driver.boots).toHaveLength(1);
      expect(existsSync(path.join(vmDir(id), 'run.json'))).toBe(false);
    });

    it('never boots a second VMM beside one it cannot adopt; a new command ends the old one first', async () => {
      const id = await bootThenCloseAgent('always');
      // A real process stands in for the VMM that still runs.
      const stray = spawn('sleep', ['60'], { detached: true, stdio: 'ignore' });
      const pidStartTime = await waitFor('the stray process', () => readProcStartTime(stray.pid!));
      const runFile = path.join(vmDir(id), 'run.json');
      const record = JSON.parse(readFileSync(runFile, 'utf8'));
      writeFileSync(runFile, JSON.stringify({ ...record, pid: stray.pid, pidStartTime }));
      driver.adoptError = new Error('QMP did not answer');
      const next = await start();
      const r = reportOf(next, id)!;
      expect(r.state).toBe('failed');
      expect(r.error).toContain(`VMM pid ${stray.pid} runs but cannot be adopted: QMP did not answer`);
      await sleep(backoff.maxMs);
      expect(driver.boots).toHaveLength(1);

      const exited = new Promise((resolve) => stray.once('exit', resolve));
      const c = new SignedAgentClient(next.url, keys.privateKey);
      await c.put(id, vmCommand(2, 'running', images, { spec: { restart_policy: 'always' } }));
      await waitForState(next, id, 'running');
      expect(await exited).toBeDefined();
      expect(driver.boots).toHaveLength(2);
    });

    /**
     * Boots a VM on `on`, lets it end by itself with `exit`, then closes that agent and starts
     * another; answers the VM's id, its report at the end, and the new agent.
     */
    async function endThenRestartAgent(
      policy: 'never' | 'on-failure' | 'always',
      exit: VmExit,
      ended: 'failed' | 'stopped',
      on = agent,
    ) {
      const id = randomUUID();
      const c = new SignedAgentClient(on.url, keys.privateKey);
      await c.put(id, vmCommand(1, 'running', images, { spec: { restart_policy: policy } }));
      await waitForState(on, id, 'running');
      driver.exit(id, exit);
      const report = await waitForState(on, id, ended, 2_000);
      await on.close();
      return { id, report, next: await start() };
    }

    it('keeps a crash and its reason: the VM stays failed, not booted again', async () => {
      const message = 'QEMU ended with signal SIGSEGV';
      const { id, next } = await endThenRestartAgent(
        'never',
        { reason: 'crashed', code: null, signal: 'SIGSEGV', message },
        'failed',
      );
      expect(reportOf(next, id)).toMatchObject({ state: 'failed', error: message, generation: 1 });
      await sleep(backoff.maxMs);
      expect(driver.boots).toHaveLength(1);
    });

    it('on-failure: a guest that powered off is not booted again by the restart', async () => {
      const { id, next } = await endThenRestartAgent(
        'on-failure',
        { reason: 'shutdown', code: 0, signal: null, message: 'guest-shutdown' },
        'stopped',
      );
      expect(reportOf(next, id)).toMatchObject({ state: 'stopped', error: null });
      await sleep(backoff.maxMs);
      expect(driver.boots).toHaveLength(1);
    });

    it('boots a VM whose restart its policy had scheduled', async () => {
      const slow = await start([driver], { minMs: 60_000, maxMs: 60_000, stableMs: 60_000 });
      const { id, report, next } = await endThenRestartAgent(
        'always',
        { reason: 'crashed', code: 1, signal: null },
        'failed',
        slow,
      );
      expect(report.restarting).toBe(true);
      await waitForState(next, id, 'running');
      expect(driver.boots).toHaveLength(2);
    });

    it('keeps the reason a boot failed', async () => {
      const id = randomUUID();
      driver.failBoot = new Error('the kernel is not a kernel');
      await client.put(id, vmCommand(1, 'running', images, { spec: { restart_policy: 'always' } }));
      const failed = await waitForState(agent, id, 'failed');
      expect(failed.error).toContain('the kernel is not a kernel');
      driver.failBoot = null;
      await agent.close();
      const next = await start();
      expect(reportOf(next, id)).toMatchObject({ state: 'failed', error: failed.error });
    });

    it('answers a retried command after the restart without acting', async () => {
      const id = await bootThenCloseAgent('never');
      const next = await start();
      const c = new SignedAgentClient(next.url, keys.privateKey);
      await c.put(id, vmCommand(1, 'running', images));
      await sleep(30);
      expect(driver.boots).toHaveLength(1);
    });
  });
});
