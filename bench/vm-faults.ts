/**
 * How fast the agent sees what happens to a VM, with the real QEMU driver and the test guest:
 *
 *   npx tsx bench/vm-faults.ts            (BENCH_N=5 rounds)
 *
 * crash   kill -9 of a running VM's QEMU -> the agent reports `failed` (goal: within 2 s)
 * stop    a graceful stop sent as soon as the VMM runs (the guest still boots) -> `stopped`,
 *         beside the same stop once the guest is up (it takes the power button at once)
 * Figures only (medians of BENCH_N): nothing passes or fails.
 */
import { randomUUID } from 'node:crypto';
import { rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { BOOT_MARKER, ensureTestGuest, qemuPidsOf } from '@nqvm/testkit';
import { createAgent } from '../packages/agent/src/agent/agent';
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
} from '../packages/agent/src/agent/testing';
import { loadAgentConfig } from '../packages/agent/src/config';
import { size } from './bench-kit';

const N = size('BENCH_N', 5, 1);
const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]!;
const now = () => performance.now();

const guest = await ensureTestGuest();
const keys = managerKeys();
const dir = tempDir();
const agent = await createAgent(
  loadAgentConfig({
    AGENT_BIND: '127.0.0.1:0',
    FC_RUN_DIR: path.join(dir, 'state'),
    NQVM_AGENT_NAME: 'bench',
  }),
  { managerPublicKey: keys.publicKeyPem, logger: silentLogger },
);
const client = new SignedAgentClient(agent.url, keys.privateKey);
const images = {
  kernel: imageRef(guest.kernel),
  initrd: imageRef(guest.initrd),
  rootfs: { ...imageRef(guest.rootfs), size_bytes: statSync(guest.rootfs).size },
};
const booted = async (id: string) => {
  await waitFor(
    'the boot marker',
    async () => (await client.call('GET', `/v1/vms/${id}/console?tail=65536`)).bytes.includes(BOOT_MARKER),
    120_000,
  );
};

const crash: number[] = [];
const stopBooting: number[] = [];
const stopUp: number[] = [];
try {
  for (let i = 0; i < N; i++) {
    const id = randomUUID();
    await client.put(id, vmCommand(1, 'running', images));
    const running = await waitForState(agent, id, 'running', 60_000);
    await booted(id);
    let t0 = now();
    process.kill(running.pid!, 'SIGKILL');
    await waitForState(agent, id, 'failed', 30_000);
    crash.push(now() - t0);

    await client.put(id, vmCommand(2, 'running', images));
    await waitForState(agent, id, 'running', 60_000);
    t0 = now();
    await client.put(id, vmCommand(3, 'stopped', images, { stop: { force: false, timeout_s: 60 } }));
    await waitForState(agent, id, 'stopped', 90_000);
    stopBooting.push(now() - t0);

    await client.put(id, vmCommand(4, 'running', images));
    await waitForState(agent, id, 'running', 60_000);
    await booted(id);
    t0 = now();
    await client.put(id, vmCommand(5, 'stopped', images, { stop: { force: false, timeout_s: 60 } }));
    await waitForState(agent, id, 'stopped', 90_000);
    stopUp.push(now() - t0);
    console.log(
      `round ${i + 1}/${N}: crash noticed ${crash[i]!.toFixed(0)} ms, stop while booting ${stopBooting[i]!.toFixed(0)} ms, stop booted ${stopUp[i]!.toFixed(0)} ms`,
    );
    if (reportOf(agent, id)) await client.del(id);
    await waitForState(agent, id, 'deleted', 30_000);
    if (qemuPidsOf(id).length) throw new Error(`VM ${id} left running`);
  }
} finally {
  await agent.close();
  rmSync(dir, { recursive: true, force: true });
}

const row = (name: string, v: number[]) =>
  `${name.padEnd(44)} median ${median(v).toFixed(0).padStart(6)} ms   (${v.map((x) => x.toFixed(0)).join(', ')})`;
console.log(`vm-faults, ${N} rounds, QEMU ${process.env.BENCH_ACCEL ?? 'auto'} (TCG here)`);
console.log(row('crash (kill -9 QEMU) -> reported failed', crash));
console.log(row('graceful stop while booting -> stopped', stopBooting));
console.log(row('graceful stop of a booted guest -> stopped', stopUp));
console.log(`ratio booting / booted stop: ${(median(stopBooting) / median(stopUp)).toFixed(2)}`);
