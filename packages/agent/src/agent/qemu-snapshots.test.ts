/**
 * Snapshots of a real guest through the agent's API (QEMU under TCG): commands run in the
 * guest through its guest agent (virtio-serial, no network), a snapshot holds a file and a
 * counter as they were, a restore in place brings both back, and a clone of the snapshot runs
 * beside the source on its own disk, with its own host name and guest agent token. A restore is
 * "running" only once the restored VMM runs, and clones of a snapshot of a paused VM are
 * re-identified too; in both cases the first exec after "running" works, without a retry.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import type { AgentGuestConfig, AgentVmCommand } from '@nqvm/api';
import { BOOT_MARKER, ensureTestGuest, qemuPidsOf as qemuPids, type TestGuest } from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadAgentConfig } from '../config';
import { type Agent, createAgent } from './agent';
import {
  imageRef,
  managerKeys,
  SignedAgentClient,
  silentLogger,
  tempDir,
  vmCommand,
  waitFor,
  waitForState,
} from './testing';

const BOOT_TIMEOUT_MS = 90_000;

describe('snapshots of a real guest (agent, QEMU)', () => {
  const keys = managerKeys();
  const dir = tempDir();
  const stateDir = path.join(dir, 'state');
  const source = randomUUID();
  const clone = randomUUID();
  const snap = randomUUID();
  const pausedSource = randomUUID();
  const pausedClones = [randomUUID(), randomUUID()];
  let guest: TestGuest;
  let agent: Agent;
  let client: SignedAgentClient;
  const figures: Record<string, string> = {};

  const guestConfig = (vmId: string, hostname: string): AgentGuestConfig => ({
    mode: 'auto',
    instance_id: vmId,
    hostname,
    username: null,
    password_hash: null,
    ssh_authorized_keys: [],
    user_data: null,
    network_config: null,
  });
  const command = (vmId: string, generation: number, hostname: string, over: Partial<AgentVmCommand> = {}) =>
    vmCommand(
      generation,
      'running',
      {
        kernel: imageRef(guest.kernel),
        initrd: imageRef(guest.initrd),
        rootfs: { ...imageRef(guest.rootfs), size_bytes: statSync(guest.rootfs).size },
      },
      { ...over, spec: { guest_config: guestConfig(vmId, hostname), restart_policy: 'never' } },
    );

  const exec = async (vmId: string, argv: string[]) => {
    const r = await client.call('POST', `/v1/vms/${vmId}/exec`, { argv, timeout_s: 20 });
    expect(r.status, r.bytes.toString()).toBe(200);
    return {
      ...r.json,
      stdout: Buffer.from(r.json.stdout_b64, 'base64').toString('utf8'),
      stderr: Buffer.from(r.json.stderr_b64, 'base64').toString('utf8'),
    };
  };
  const reportOf = (vmId: string) => agent.vms().find((v) => v.id === vmId);
  const sh = async (vmId: string, script: string) =>
    (await exec(vmId, ['/bin/sh', '-c', script])).stdout.trim();
  const bootedAndServing = async (vmId: string) => {
    await waitForState(agent, vmId, 'running', 30_000);
    await waitFor(
      `the guest agent of ${vmId}`,
      async () =>
        (await client.call('POST', `/v1/vms/${vmId}/exec`, { argv: ['true'], timeout_s: 5 })).status === 200,
      BOOT_TIMEOUT_MS,
    );
  };

  beforeAll(async () => {
    guest = await ensureTestGuest();
    agent = await createAgent(
      loadAgentConfig({ AGENT_BIND: '127.0.0.1:0', FC_RUN_DIR: stateDir, NQVM_AGENT_NAME: 'snap-test' }),
      { managerPublicKey: keys.publicKeyPem, logger: silentLogger },
    );
    client = new SignedAgentClient(agent.url, keys.privateKey);
  }, 300_000);

  afterAll(async () => {
    await agent?.close();
    for (const id of [source, clone, pausedSource, ...pausedClones])
      for (const pid of qemuPids(id)) process.kill(pid, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    console.info('agent snapshot figures:', figures);
  });

  it(
    'runs commands in the guest through the guest agent',
    async () => {
      await client.put(source, command(source, 1, 'snap-src'));
      await bootedAndServing(source);
      expect(await sh(source, 'hostname')).toBe('snap-src');
      const r = await exec(source, ['/bin/sh', '-c', 'echo out; echo err >&2; exit 7']);
      expect(r).toMatchObject({
        exit_code: 7,
        signal: null,
        stdout: 'out\n',
        stderr: 'err\n',
        timed_out: false,
      });
      const missing = await client.call('POST', `/v1/vms/${source}/exec`, {
        argv: ['no-such-cmd'],
        timeout_s: 5,
      });
      expect(missing.status).toBe(400);
      expect(missing.json.error.code).toBe('EXEC_FAILED');
      const times: number[] = [];
      for (let i = 0; i < 20; i++) {
        const t = performance.now();
        await exec(source, ['true']);
        times.push(performance.now() - t);
      }
      figures.execRoundTripMedianMs = times.sort((a, b) => a - b)[10]!.toFixed(1);
    },
    BOOT_TIMEOUT_MS + 60_000,
  );

  it('snapshots, and a restore in place brings the file and the counter back', async () => {
    await sh(source, 'echo one > /root/state; sync');
    await sh(
      source,
      "setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /run/counter; sleep 0.1; done' >/dev/null 2>&1 &",
    );
    await waitFor('the counter', async () => Number(await sh(source, 'cat /run/counter')) > 5, 20_000);
    const t = performance.now();
    const taken = await client.call('PUT', `/v1/vms/${source}/snapshots/${snap}`, { type: 'Full' });
    figures.snapshotMs = (performance.now() - t).toFixed(0);
    expect(taken.status, taken.bytes.toString()).toBe(200);
    expect(taken.json).toMatchObject({ status: 'ready', vmm: 'qemu', guest_agent: true, mem_mib: 128 });
    figures.snapshotMiB = (taken.json.size_bytes / 1024 ** 2).toFixed(1);
    const atSnapshot = Number(await sh(source, 'cat /run/counter'));
    await sh(source, 'echo two > /root/state; sync');
    await waitFor(
      'the counter to move on',
      async () => Number(await sh(source, 'cat /run/counter')) > atSnapshot + 20,
      30_000,
    );

    const r0 = performance.now();
    const put = await client.put(source, command(source, 2, 'snap-src', { restore: { snapshot_id: snap } }));
    // The old VMM still runs: the restore is not done until the restored one runs.
    expect(put.json).toMatchObject({ generation: 2, state: 'starting' });
    const oldPid = qemuPids(source)[0];
    await waitFor(
      'the restored VM to run',
      () => reportOf(source)?.generation === 2 && reportOf(source)?.state === 'running',
      60_000,
    );
    figures.restoreToRunningMs = (performance.now() - r0).toFixed(0);
    expect(reportOf(source)?.pid).not.toBe(oldPid);
    // No retry: the first exec after "running" reaches the restored guest.
    const after = Number(await sh(source, 'cat /run/counter'));
    figures.restoreToExecMs = (performance.now() - r0).toFixed(0);
    // It resumed from the snapshot's value, not from the later one, nor from zero.
    expect(after).toBeGreaterThanOrEqual(atSnapshot);
    expect(after).toBeLessThan(atSnapshot + 20);
    expect(await sh(source, 'echo 3 > /proc/sys/vm/drop_caches; cat /root/state')).toBe('one');
  }, 120_000);

  it(
    'clones the snapshot: its own disk, host name and token, beside the source',
    async () => {
      await client.put(clone, command(clone, 1, 'snap-clone', { restore: { snapshot_id: snap } }));
      await bootedAndServing(clone);
      expect(agent.vms().find((v) => v.id === clone)).toMatchObject({ state: 'running', error: null });
      expect(await sh(clone, 'hostname')).toBe('snap-clone');
      expect(await sh(clone, 'cat /root/state')).toBe('one');
      await sh(clone, 'echo clone-only > /root/state; sync');
      expect(await sh(source, 'echo 3 > /proc/sys/vm/drop_caches; cat /root/state')).toBe('one');
      expect(await sh(clone, 'echo 3 > /proc/sys/vm/drop_caches; cat /root/state')).toBe('clone-only');
      expect(qemuPids(source)).toHaveLength(1);
      expect(qemuPids(clone)).toHaveLength(1);
    },
    BOOT_TIMEOUT_MS + 60_000,
  );

  it(
    'a reboot after the restore boots cold, from the restored disk',
    async () => {
      await client.put(source, command(source, 3, 'snap-src', { reboot: true }));
      await waitFor(
        'a cold boot',
        async () => {
          const text = (await client.call('GET', `/v1/vms/${source}/console?tail=262144`)).bytes.toString();
          return text.split(BOOT_MARKER).length - 1 >= 2;
        },
        BOOT_TIMEOUT_MS,
      );
      await bootedAndServing(source);
      // A cold boot: the counter of the restored run is gone, the disk keeps the restored file.
      expect(await sh(source, 'cat /run/counter 2>/dev/null || echo none')).toBe('none');
      expect(await sh(source, 'cat /root/state')).toBe('one');
    },
    BOOT_TIMEOUT_MS + 60_000,
  );

  it(
    'clones of a snapshot of a PAUSED VM get their own host name and token; exec works once they run',
    async () => {
      // Nothing has talked to this guest's agent when it is paused (no exec), as for a VM made and paused.
      await client.put(pausedSource, command(pausedSource, 1, 'paused-src'));
      await waitFor(
        'the guest to boot',
        async () =>
          (await client.call('GET', `/v1/vms/${pausedSource}/console?tail=262144`)).bytes
            .toString()
            .includes(BOOT_MARKER),
        BOOT_TIMEOUT_MS,
      );
      await client.put(pausedSource, { ...command(pausedSource, 2, 'paused-src'), desired: 'paused' });
      await waitForState(agent, pausedSource, 'paused', 30_000);
      const pausedSnap = randomUUID();
      const taken = await client.call('PUT', `/v1/vms/${pausedSource}/snapshots/${pausedSnap}`, {
        type: 'Full',
      });
      expect(taken.status, taken.bytes.toString()).toBe(200);
      expect(taken.json).toMatchObject({ status: 'ready', guest_agent: true });
      for (const [i, id] of pausedClones.entries()) {
        const t = performance.now();
        await client.put(id, command(id, 1, `paused-clone-${i}`, { restore: { snapshot_id: pausedSnap } }));
        expect(reportOf(id)).toMatchObject({ generation: 1, state: 'starting' });
        await waitForState(agent, id, 'running', 60_000);
        figures[`pausedClone${i}RunningMs`] = (performance.now() - t).toFixed(0);
        // No retry: once it reports running, its guest agent answers to the clone's own token.
        expect(await sh(id, 'hostname')).toBe(`paused-clone-${i}`);
        figures[`pausedClone${i}FirstExecMs`] = (performance.now() - t).toFixed(0);
        expect(reportOf(id)).toMatchObject({ state: 'running', error: null });
      }
      const tokens = [pausedSource, ...pausedClones].map(
        (id) => JSON.parse(readFileSync(path.join(stateDir, 'vms', id, 'guest-agent.json'), 'utf8')).token,
      );
      expect(new Set(tokens).size).toBe(3);
      // The source stays paused, untouched by its clones, and runs on as itself when resumed.
      expect(reportOf(pausedSource)?.state).toBe('paused');
      await client.put(pausedSource, command(pausedSource, 3, 'paused-src'));
      await waitForState(agent, pausedSource, 'running', 30_000);
      expect(await sh(pausedSource, 'hostname')).toBe('paused-src');
    },
    BOOT_TIMEOUT_MS + 120_000,
  );
});
