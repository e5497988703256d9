/**
 * Snapshots through the agent's API with the Firecracker driver under the jailer, against the
 * simulator of each version: Full then Diff snapshots kept in the host's store with their chain,
 * a clone restored from the newest Diff (the simulator accepts only a correctly merged memory
 * and its guest goes on from the Diff's tick), a restore in place, and deletes refused while a
 * Diff builds on a snapshot. Every request body is validated against the version's spec by the
 * simulator.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { rmSync } from 'node:fs';
import path from 'node:path';
import {
  FIRECRACKER_SIM_VERSIONS,
  GUEST_TICK_MS,
  readGuestTick,
  writeJailerBinary,
  writeSimulatorBinary,
  writeTinyElfKernel,
} from '@nqvm/testkit/firecracker-sim/index';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadAgentConfig } from '../config';
import { FirecrackerDriver } from '../drivers/firecracker/driver';
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

describe.each(FIRECRACKER_SIM_VERSIONS)(
  'snapshots through the agent, Firecracker %s (simulator, jailer)',
  (version) => {
    const keys = managerKeys();
    const dir = tempDir();
    const stateDir = path.join(dir, 'state');
    const source = randomUUID();
    let agent: Agent;
    let client: SignedAgentClient;
    let images: { kernel: ReturnType<typeof imageRef>; rootfs: ReturnType<typeof imageRef> };
    const vms: string[] = [source];

    const ticks = async (id: string): Promise<number[]> => {
      const text = (await client.call('GET', `/v1/vms/${id}/console?tail=65536`)).bytes.toString();
      return [...text.matchAll(/guest tick (\d+)/g)].map((m) => Number(m[1]));
    };
    const take = async (id: string, type: 'Full' | 'Diff') => {
      const snap = randomUUID();
      const r = await client.call('PUT', `/v1/vms/${id}/snapshots/${snap}`, { type });
      expect(r.status, r.bytes.toString()).toBe(200);
      expect(r.json.status, r.json.error).toBe('ready');
      return r.json;
    };

    beforeAll(async () => {
      const bin = await writeSimulatorBinary(path.join(dir, 'bin'), version);
      const jailerBin = await writeJailerBinary(path.join(dir, 'bin'), version);
      const kernel = await writeTinyElfKernel(path.join(dir, 'vmlinux'));
      const rootfs = path.join(dir, 'rootfs.ext4');
      execFileSync('mkfs.ext4', ['-q', '-F', rootfs, '16M'], { stdio: 'ignore' });
      images = { kernel: imageRef(kernel), rootfs: imageRef(rootfs) };
      const firecracker = new FirecrackerDriver({
        firecrackerBin: bin,
        jailerBin,
        chrootBaseDir: path.join(stateDir, 'jailer'),
        jailIds: { first: 42_000 + FIRECRACKER_SIM_VERSIONS.indexOf(version) * 100, count: 100 },
        cgroupRoot: path.join(dir, 'cgroup'),
        trackDirtyPages: true,
        probeKvm: async () => true,
        logger: silentLogger,
      });
      agent = await createAgent(
        loadAgentConfig({ AGENT_BIND: '127.0.0.1:0', FC_RUN_DIR: stateDir, NQVM_AGENT_NAME: 'fc-snap' }),
        { drivers: [firecracker], managerPublicKey: keys.publicKeyPem, logger: silentLogger },
      );
      client = new SignedAgentClient(agent.url, keys.privateKey);
    });

    afterAll(async () => {
      await agent?.close();
      for (const id of vms) {
        const pid = reportOf(agent, id)?.pid;
        if (pid) process.kill(pid, 'SIGKILL');
      }
      rmSync(dir, { recursive: true, force: true });
    });

    it('keeps a Full and two Diffs as a chain, and clones the newest Diff with the merged memory', async () => {
      await client.put(source, vmCommand(1, 'running', images));
      await waitForState(agent, source, 'running', 20_000);
      const full = await take(source, 'Full');
      expect(full).toMatchObject({ type: 'Full', parent_id: null, vmm: 'firecracker' });
      await new Promise((r) => setTimeout(r, GUEST_TICK_MS * 6));
      const d1 = await take(source, 'Diff');
      await new Promise((r) => setTimeout(r, GUEST_TICK_MS * 6));
      const d2 = await take(source, 'Diff');
      expect([d1.parent_id, d2.parent_id]).toEqual([full.id, d1.id]);
      // A Diff holds only the pages written since the snapshot before it.
      expect(d2.sizes.memory_bytes).toBeLessThan(full.sizes.memory_bytes);

      const clone = randomUUID();
      vms.push(clone);
      await client.put(clone, vmCommand(1, 'running', images, { restore: { snapshot_id: d2.id } }));
      const running = await waitForState(agent, clone, 'running', 20_000);
      // The simulator runs no guest agent: the clone cannot be given its own identity, and says so.
      expect(running.error).toMatch(/ran no nqvm guest agent/);
      // Its guest goes on from the newest Diff's tick (page 0 of that Diff), not from the Full's.
      const tickOf = (s: { id: string }) => readGuestTick(path.join(stateDir, 'snapshots', s.id, 'memory'));
      const [atFull, atD2] = [tickOf(full), tickOf(d2)];
      expect(atD2).toBeGreaterThan(atFull!);
      await waitFor('the clone ticking', async () => (await ticks(clone)).length > 0, 10_000);
      expect(Math.min(...(await ticks(clone)))).toBeGreaterThanOrEqual(atD2!);
      expect(reportOf(agent, source)?.state).toBe('running');

      const refused = await client.call('DELETE', `/v1/snapshots/${full.id}`);
      expect(refused.status).toBe(409);
      expect(refused.json.error).toMatchObject({ code: 'SNAPSHOT_IN_USE', details: { snapshot_id: d1.id } });

      // Restore in place from the first Diff (its chain: the Full and itself).
      await client.put(source, vmCommand(2, 'running', images, { restore: { snapshot_id: d1.id } }));
      await waitFor(
        'the restored source',
        () => reportOf(agent, source)?.generation === 2 && reportOf(agent, source)?.state === 'running',
        20_000,
      );
      expect(reportOf(agent, source)?.error).toBeNull();

      for (const id of [d2.id, d1.id, full.id])
        expect((await client.call('DELETE', `/v1/snapshots/${id}`)).status).toBe(204);
    }, 90_000);
  },
);
