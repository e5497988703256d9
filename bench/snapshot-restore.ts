/**
 * P3: a restore against a cold boot of the same guest to the same point, and what a snapshot
 * costs against the guest's memory size. Real QEMU guests (the test guest, TCG) driven through a
 * real agent's signed API, as the manager drives it.
 *
 *   npx tsx bench/snapshot-restore.ts
 *   BENCH_N=7 BENCH_MEM=128,256,512 npx tsx bench/snapshot-restore.ts
 *
 * "The same point" is the guest answering a command through its guest agent (`true` exec'd over
 * virtio-serial): for the cold boot that is the kernel, the initramfs, the root disk's init and
 * the agent's start; for the restore it is loading the state and the agent answering again.
 * Cold boots and restores alternate, so both see the same machine load. A clone (a restore into
 * another VM, re-addressed by the guest agent) is timed too. Snapshot sizes are the files'
 * allocated bytes (memory state plus the disk copy); the guest first fills half its memory with
 * random data in a tmpfs so the state is not just zero pages. Figures only.
 */
import { randomUUID } from 'node:crypto';
import { rmSync, statSync } from 'node:fs';
import path from 'node:path';
import type { AgentGuestConfig, AgentVmCommand } from '@nqvm/api';
import { ensureTestGuest, qemuPidsOf, type TestGuest } from '@nqvm/testkit';
import { type Agent, createAgent } from '../packages/agent/src/agent/agent';
import {
  imageRef,
  managerKeys,
  SignedAgentClient,
  silentLogger,
  tempDir,
  vmCommand,
} from '../packages/agent/src/agent/testing';
import { loadAgentConfig } from '../packages/agent/src/config';

const N = Number(process.env.BENCH_N ?? 5);
const MEMS = (process.env.BENCH_MEM ?? '128,256,512').split(',').map(Number);
const GOAL_RATIO = 5;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]!;
const fmt = (ms: number) => `${ms.toFixed(0)} ms`;

function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  return [line(head), w.map((x) => '-'.repeat(x)).join('  '), ...rows.map(line)].join('\n');
}

const dir = tempDir('nqvm-bench-snap-');
let guest: TestGuest;
let agent: Agent;
let client: SignedAgentClient;
const vms: string[] = [];

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

function command(vmId: string, generation: number, memMib: number, over: Partial<AgentVmCommand> = {}) {
  return vmCommand(
    generation,
    'running',
    {
      kernel: imageRef(guest.kernel),
      initrd: imageRef(guest.initrd),
      rootfs: { ...imageRef(guest.rootfs), size_bytes: statSync(guest.rootfs).size },
    },
    { ...over, spec: { mem_mib: memMib, guest_config: guestConfig(vmId, `b-${vmId.slice(0, 8)}`) } },
  );
}

async function exec(vmId: string, argv: string[], timeout_s = 5) {
  return client.call('POST', `/v1/vms/${vmId}/exec`, { argv, timeout_s });
}

/** Sends the command and answers the ms until the guest agent runs `true`. */
async function untilServing(vmId: string, cmd: AgentVmCommand): Promise<number> {
  const t0 = performance.now();
  await client.put(vmId, cmd);
  const deadline = Date.now() + 180_000;
  for (;;) {
    const report = agent.vms().find((v) => v.id === vmId);
    if (report?.generation === cmd.generation && report.state === 'running') {
      const r = await exec(vmId, ['true'], 2);
      if (r.status === 200) return performance.now() - t0;
    }
    if (Date.now() > deadline) throw new Error(`VM ${vmId} not serving at generation ${cmd.generation}`);
    await sleep(5);
  }
}

async function stop(vmId: string, generation: number, memMib: number) {
  await client.put(vmId, {
    ...command(vmId, generation, memMib),
    desired: 'stopped',
    stop: { force: true, timeout_s: 5 },
  });
  const deadline = Date.now() + 30_000;
  while (agent.vms().find((v) => v.id === vmId)?.state !== 'stopped') {
    if (Date.now() > deadline) throw new Error(`VM ${vmId} did not stop`);
    await sleep(20);
  }
}

async function main() {
  guest = await ensureTestGuest();
  const keys = managerKeys();
  agent = await createAgent(
    loadAgentConfig({
      AGENT_BIND: '127.0.0.1:0',
      FC_RUN_DIR: path.join(dir, 'state'),
      NQVM_AGENT_NAME: 'bench',
    }),
    { managerPublicKey: keys.publicKeyPem, logger: silentLogger },
  );
  client = new SignedAgentClient(agent.url, keys.privateKey);
  try {
    // ---- P3: restore vs cold boot, alternating, same VM and guest ------------------------
    const mem = MEMS[0]!;
    const vm = randomUUID();
    vms.push(vm);
    let gen = 1;
    await untilServing(vm, command(vm, gen, mem));
    const snap = randomUUID();
    const taken = await client.call('PUT', `/v1/vms/${vm}/snapshots/${snap}`, { type: 'Full' });
    if (taken.json?.status !== 'ready') throw new Error(`snapshot failed: ${taken.bytes.toString()}`);
    const cold: number[] = [];
    const restore: number[] = [];
    const clone: number[] = [];
    for (let i = 0; i < N; i++) {
      await stop(vm, ++gen, mem);
      cold.push(await untilServing(vm, command(vm, ++gen, mem)));
      await stop(vm, ++gen, mem);
      restore.push(await untilServing(vm, command(vm, ++gen, mem, { restore: { snapshot_id: snap } })));
      const c = randomUUID();
      vms.push(c);
      clone.push(await untilServing(c, command(c, 1, mem, { restore: { snapshot_id: snap } })));
      await client.del(c);
    }
    const ratio = median(cold) / median(restore);
    console.log(
      `\nP3: to the guest agent answering (QEMU ${mem} MiB guest, TCG, ${N} runs each, alternating)\n`,
    );
    console.log(
      table(
        ['path', 'median', 'min', 'max'],
        [
          ['cold boot', fmt(median(cold)), fmt(Math.min(...cold)), fmt(Math.max(...cold))],
          ['restore in place', fmt(median(restore)), fmt(Math.min(...restore)), fmt(Math.max(...restore))],
          [
            'clone (restore into a new VM)',
            fmt(median(clone)),
            fmt(Math.min(...clone)),
            fmt(Math.max(...clone)),
          ],
        ],
      ),
    );
    console.log(
      `\nrestore is ${ratio.toFixed(1)}x faster than a cold boot (goal >= ${GOAL_RATIO}x): ${ratio >= GOAL_RATIO ? 'met' : 'NOT met'}`,
    );
    await stop(vm, ++gen, mem);

    // ---- snapshot time and size against guest memory ---------------------------------------
    const rows: string[][] = [];
    for (const m of MEMS) {
      const id = randomUUID();
      vms.push(id);
      await untilServing(id, command(id, 1, m));
      // Half the memory in use (random bytes in a tmpfs), so the state holds real pages.
      const fill = await exec(
        id,
        ['/bin/sh', '-c', `head -c ${Math.floor(m / 2)}M /dev/urandom > /dev/shm/fill`],
        120,
      );
      if (fill.status !== 200 || fill.json.exit_code !== 0)
        throw new Error(`fill failed: ${fill.bytes.toString()}`);
      const times: number[] = [];
      let size = 0;
      for (let i = 0; i < Math.max(3, Math.ceil(N / 2)); i++) {
        const s = randomUUID();
        const t0 = performance.now();
        const r = await client.call('PUT', `/v1/vms/${id}/snapshots/${s}`, { type: 'Full' });
        times.push(performance.now() - t0);
        if (r.json?.status !== 'ready') throw new Error(`snapshot failed: ${r.bytes.toString()}`);
        size = r.json.size_bytes;
        await client.call('DELETE', `/v1/snapshots/${s}`);
      }
      rows.push([
        `${m} MiB (${Math.floor(m / 2)} MiB filled)`,
        fmt(median(times)),
        `${(size / 1024 ** 2).toFixed(1)} MiB`,
        `${((size / (m * 1024 ** 2)) * 100).toFixed(0)}%`,
      ]);
      await client.del(id);
    }
    console.log('\nsnapshot create (pause, save state, copy the disk, resume), medians\n');
    console.log(table(['guest memory', 'time', 'size on disk', 'of memory'], rows));
  } finally {
    await agent.close();
    for (const id of vms) for (const pid of qemuPidsOf(id)) process.kill(pid, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
