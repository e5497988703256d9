/**
 * A guest whose disk cannot grow because the host's file system is full: QEMU pauses it (the
 * drives stop on a failed write), the agent shows it paused with the reason, resumes it by
 * itself once space is freed, and a resume from the user works too. Real guest, real file
 * system that fills: the agent's state directory is a small tmpfs holding the VM's overlay.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { mkdirSync, rmSync, statfsSync, statSync, truncateSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { AgentGuestConfig } from '@nqvm/api';
import { ensureTestGuest, qemuPidsOf, type TestGuest } from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadAgentConfig } from '../config';
import { RESUME_FREE_BYTES } from '../drivers/qemu/qemu-vm';
import { type Agent, createAgent } from './agent';
import {
  imageRef,
  managerKeys,
  reportOf,
  SignedAgentClient,
  silentLogger,
  tempDir,
  vmCommand,
  waitFor,
  waitForState,
} from './testing';

const MiB = 1024 * 1024;
const BOOT_TIMEOUT_MS = 120_000;
const FULL = "the host's disk is full: the guest is paused until space is freed (root could not be written)";

describe('a guest on a host whose disk fills up', () => {
  const keys = managerKeys();
  const dir = tempDir('nqvm-disk-full-');
  const stateDir = path.join(dir, 'state');
  const filler = path.join(stateDir, 'filler');
  const id = randomUUID();
  let guest: TestGuest;
  let agent: Agent;
  let client: SignedAgentClient;
  let mounted = false;

  const guest_config: AgentGuestConfig = {
    mode: 'auto',
    instance_id: id,
    hostname: 'diskfull',
    username: null,
    password_hash: null,
    ssh_authorized_keys: [],
    user_data: null,
    network_config: null,
  };
  const command = (generation: number) =>
    vmCommand(
      generation,
      'running',
      { kernel: imageRef(guest.kernel), initrd: imageRef(guest.initrd), rootfs: imageRef(guest.rootfs) },
      { spec: { guest_config } },
    );
  const exec = (script: string, timeout_s = 60) =>
    client.call('POST', `/v1/vms/${id}/exec`, { argv: ['/bin/sh', '-c', script], timeout_s });
  const freeBytes = () => {
    const s = statfsSync(stateDir);
    return s.bavail * s.bsize;
  };
  /** Fills the state directory's file system until `leftBytes` are free. */
  const fillUntil = (leftBytes: number) => {
    rmSync(filler, { force: true });
    execFileSync('fallocate', ['-l', String(freeBytes() - leftBytes), filler]);
  };
  const startAgent = async () => {
    agent = await createAgent(
      loadAgentConfig({ AGENT_BIND: '127.0.0.1:0', FC_RUN_DIR: stateDir, NQVM_AGENT_NAME: 'disk-full' }),
      { managerPublicKey: keys.publicKeyPem, logger: silentLogger },
    );
    client = new SignedAgentClient(agent.url, keys.privateKey);
  };
  const zerosMd5 = (mib: number) =>
    createHash('md5')
      .update(Buffer.alloc(mib * MiB))
      .digest('hex');

  beforeAll(async () => {
    guest = await ensureTestGuest();
    mkdirSync(stateDir);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256m,mode=0700', 'tmpfs', stateDir]);
    mounted = true;
    await startAgent();
  }, BOOT_TIMEOUT_MS);

  afterAll(async () => {
    rmSync(filler, { force: true });
    if (agent) {
      await client.del(id).catch(() => {});
      await waitForState(agent, id, 'deleted', 30_000).catch(() => {});
      await agent.close();
    }
    for (const pid of qemuPidsOf(id)) process.kill(pid, 'SIGKILL');
    if (mounted) execFileSync('umount', ['-l', stateDir]);
    rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it(
    'pauses with the reason when the disk fills, and resumes by itself once space is freed',
    async () => {
      expect((await client.put(id, command(1))).status).toBe(202);
      await waitForState(agent, id, 'running', 30_000);
      await waitFor('the guest agent', () => reportOf(agent, id)?.guest_ready, BOOT_TIMEOUT_MS);
      expect((await exec('sync')).json).toMatchObject({ exit_code: 0 });

      // 24 MiB to write, 8 MiB free on the host: the overlay cannot grow in the middle of it.
      fillUntil(8 * MiB);
      const writing = exec('dd if=/dev/zero of=/fill1 bs=1M count=24 conv=fsync 2>&1', 600);
      const paused = await waitForState(agent, id, 'paused', 120_000);
      expect(paused.error).toBe(FULL);
      expect(paused.pid).toBe(qemuPidsOf(id)[0]);
      // A paused guest answers at once that it is paused, instead of timing out.
      const refused = await exec('true');
      expect(refused.status).toBe(409);
      expect(refused.json.error.code).toBe('VM_INVALID_STATE');

      rmSync(filler);
      const resumed = await waitForState(agent, id, 'running', 30_000);
      expect(resumed.error).toBe(
        "resumed by itself: the host's disk has space again (the guest was paused while it was full)",
      );
      expect((await writing).json).toMatchObject({ exit_code: 0 });
      // Every write the guest made landed: read back from the disk, not from its page cache.
      const read = await exec('sync; echo 3 > /proc/sys/vm/drop_caches; md5sum /fill1');
      expect(Buffer.from(read.json.stdout_b64, 'base64').toString()).toBe(`${zerosMd5(24)}  /fill1\n`);
    },
    BOOT_TIMEOUT_MS + 240_000,
  );

  it(
    'takes a resume from the user (after an agent restart): paused again while the disk is full, running once there is room',
    async () => {
      fillUntil(4 * MiB);
      // In the background of the guest: the agent restarts while the write waits.
      const started = await exec(
        "setsid sh -c 'dd if=/dev/zero of=/fill2 bs=1M count=16 conv=fsync; echo $? > /fill2.rc' </dev/null >/dev/null 2>&1 &",
      );
      expect(started.json).toMatchObject({ exit_code: 0 });
      const paused = await waitForState(agent, id, 'paused', 120_000);
      expect(paused.error).toBe(FULL);
      // An agent restarted meanwhile finds the guest paused, and why.
      await agent.close();
      await startAgent();
      expect(await waitForState(agent, id, 'paused', 30_000)).toMatchObject({ pid: paused.pid, error: FULL });

      // Still full: QEMU retries the write, which fails again, and the guest pauses again.
      expect((await client.put(id, command(2))).status).toBe(202);
      const again = await waitForState(agent, id, 'paused', 30_000);
      expect(again).toMatchObject({ generation: 2, error: FULL });

      // Room for the rest of the write, yet less than the agent waits for before resuming by itself.
      truncateSync(filler, statSync(filler).size - 32 * MiB);
      expect(freeBytes()).toBeLessThan(RESUME_FREE_BYTES);
      await sleep(6_000); // three of the agent's looks at the free space
      expect(reportOf(agent, id)).toMatchObject({ state: 'paused', error: FULL });

      expect((await client.put(id, command(3))).status).toBe(202);
      const running = await waitForState(agent, id, 'running', 30_000);
      expect(running).toMatchObject({ generation: 3, error: null });
      const rc = await waitFor(
        'the write to finish',
        async () =>
          Buffer.from((await exec('cat /fill2.rc 2>/dev/null')).json.stdout_b64, 'base64').toString(),
        60_000,
      );
      expect(rc).toBe('0\n');
      const read = await exec('sync; echo 3 > /proc/sys/vm/drop_caches; md5sum /fill2');
      expect(Buffer.from(read.json.stdout_b64, 'base64').toString()).toBe(`${zerosMd5(16)}  /fill2\n`);
    },
    BOOT_TIMEOUT_MS + 240_000,
  );
});
