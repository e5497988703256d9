/**
 * P3: a restore against a cold boot of the same guest to the same point, and what a snapshot
 * costs against the guest's memory size. Real QEMU guests (the test guest, TCG), measured two
 * ways in the same run: through a real agent's signed API (the agent alone, as the manager
 * drives it) and through the manager's API with a real `nqvm agent` process (what a user sees:
 * the manager's share is the difference).
 *
 *   npm run build && npx tsx bench/snapshot-restore.ts
 *   BENCH_N=7 BENCH_MEM=128,256,512 npx tsx bench/snapshot-restore.ts
 *
 * "The same point" is the guest answering a command through its guest agent (`true` exec'd over
 * virtio-serial): for the cold boot that is the kernel, the initramfs, the root disk's init and
 * the agent's start; for the restore it is loading the state and the agent answering again.
 * Cold boots and restores alternate (agent, then manager, in each round), so all see the same
 * machine load; all times are performance.now() of this process. A clone (a restore into another
 * VM, re-addressed by the guest agent) is timed too. Snapshot sizes are the files' allocated
 * bytes (memory state plus the disk copy); the guest first fills its memory with random
 * data (a quarter of it) in a tmpfs so the state is not just zero pages. Figures only.
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
import { type AgentProcess, startAgent, startStack, stopAgent } from '../packages/cli/test/stack';
import { goal, median, ms, printTable, ratio, size, sizes, spread } from './bench-kit';

const N = size('BENCH_N', 5, 1);
const MEMS = sizes('BENCH_MEM', '128,256,512', '128');
const GOAL_RATIO = 5;

const sleep = (t: number) => new Promise((r) => setTimeout(r, t));

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

// ---- the same through the manager's API -----------------------------------------------------

type Api = Awaited<ReturnType<typeof startStack>>['api'];
let api: Api | null = null;
let stackClose: (() => Promise<void>) | null = null;
let hostAgent: AgentProcess | null = null;

async function settle(opId: string): Promise<void> {
  for (;;) {
    const r = await api!.get(`/api/v1/operations/${opId}?wait=60`);
    if (r.status !== 200) throw new Error(`operation ${opId}: ${r.status} ${r.text}`);
    if (r.body.status === 'succeeded') return;
    if (r.body.status !== 'queued' && r.body.status !== 'running')
      throw new Error(`operation ${opId} ${r.body.status}: ${JSON.stringify(r.body.error)}`);
  }
}

/** Waits until `true` exec'd through the manager exits 0. */
async function apiServing(vmId: string): Promise<void> {
  const deadline = Date.now() + 180_000;
  for (;;) {
    const e = await api!.post(`/api/v1/vms/${vmId}/exec`, { command: ['true'], timeout_s: 2 });
    if (e.status === 200 && e.body.exit_code === 0) return;
    if (Date.now() > deadline) throw new Error(`VM ${vmId} not serving through the manager: ${e.text}`);
    await sleep(5);
  }
}

/** Sends the request and answers the ms until the guest answers through the manager. */
async function apiUntilServing(vmId: string, send: () => Promise<{ status: number; text: string }>) {
  const t0 = performance.now();
  const r = await send();
  if (r.status !== 202) throw new Error(`${vmId}: ${r.status} ${r.text}`);
  await apiServing(vmId);
  return performance.now() - t0;
}

async function apiStop(vmId: string): Promise<void> {
  const r = await api!.post(`/api/v1/vms/${vmId}/stop`, { force: true });
  if (r.status !== 202) throw new Error(`stop ${vmId}: ${r.status} ${r.text}`);
  await settle(r.body.operation.id);
}

async function startManagerSide(): Promise<void> {
  const stack = await startStack();
  api = stack.api;
  stackClose = () => stack.t.close();
  hostAgent = await startAgent(stack.t, 'bench-snap');
  await hostAgent.hostId();
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
    await startManagerSide();
    // ---- P3: restore vs cold boot, alternating, same VM and guest ------------------------
    const mem = MEMS[0]!;
    const vm = randomUUID();
    vms.push(vm);
    let gen = 1;
    await untilServing(vm, command(vm, gen, mem));
    const snap = randomUUID();
    const taken = await client.call('PUT', `/v1/vms/${vm}/snapshots/${snap}`, { type: 'Full' });
    if (taken.json?.status !== 'ready') throw new Error(`snapshot failed: ${taken.bytes.toString()}`);

    const created = await api!.post('/api/v1/vms', { name: 'snap-bench', mem_mib: mem });
    if (created.status !== 202) throw new Error(`create: ${created.status} ${created.text}`);
    const apiVm = created.body.vm.id as string;
    vms.push(apiVm);
    await apiServing(apiVm);
    const apiSnapOp = await api!.post(`/api/v1/vms/${apiVm}/snapshots`, { name: 'bench' });
    if (apiSnapOp.status !== 202) throw new Error(`snapshot: ${apiSnapOp.status} ${apiSnapOp.text}`);
    await settle(apiSnapOp.body.operation.id);
    const apiSnap = apiSnapOp.body.snapshot.id as string;

    const cold: number[] = [];
    const restore: number[] = [];
    const clone: number[] = [];
    const apiCold: number[] = [];
    const apiRestore: number[] = [];
    for (let i = 0; i < N; i++) {
      await stop(vm, ++gen, mem);
      cold.push(await untilServing(vm, command(vm, ++gen, mem)));
      await stop(vm, ++gen, mem);
      restore.push(await untilServing(vm, command(vm, ++gen, mem, { restore: { snapshot_id: snap } })));
      const c = randomUUID();
      vms.push(c);
      clone.push(await untilServing(c, command(c, 1, mem, { restore: { snapshot_id: snap } })));
      await client.del(c);
      await apiStop(apiVm);
      apiCold.push(await apiUntilServing(apiVm, () => api!.post(`/api/v1/vms/${apiVm}/start`)));
      await apiStop(apiVm);
      apiRestore.push(
        await apiUntilServing(apiVm, () =>
          api!.post(`/api/v1/vms/${apiVm}/restore`, { snapshot_id: apiSnap }),
        ),
      );
      console.log(
        `round ${i + 1}/${N}: agent cold ${ms(cold[i]!)}, restore ${ms(restore[i]!)}, clone ${ms(clone[i]!)}; ` +
          `manager cold ${ms(apiCold[i]!)}, restore ${ms(apiRestore[i]!)}`,
      );
    }
    printTable(
      `P3: to the guest agent answering "true" (QEMU ${mem} MiB guest, TCG, ${N} rounds, alternating)`,
      ['path', 'median', 'min', 'max'],
      [
        spread('agent API: cold boot', cold),
        spread('agent API: restore in place', restore),
        spread('agent API: clone (restore into a new VM)', clone),
        spread('manager API: start (cold boot)', apiCold),
        spread('manager API: restore in place', apiRestore),
      ],
    );
    printTable(
      'P3 ratios and the manager share (medians)',
      ['', 'agent API', 'manager API', "manager's share"],
      [
        ['cold boot', ms(median(cold)), ms(median(apiCold)), ms(median(apiCold) - median(cold))],
        ['restore', ms(median(restore)), ms(median(apiRestore)), ms(median(apiRestore) - median(restore))],
        [
          'cold / restore',
          ratio(median(cold), median(restore)),
          ratio(median(apiCold), median(apiRestore)),
          '',
        ],
      ],
    );
    console.log('');
    goal(
      'restore speed-up over a cold boot, agent API',
      median(cold) / median(restore),
      GOAL_RATIO,
      'x',
      false,
    );
    goal(
      'restore speed-up over a cold boot, manager API',
      median(apiCold) / median(apiRestore),
      GOAL_RATIO,
      'x',
      false,
    );
    await stop(vm, ++gen, mem);
    const del = await api!.del(`/api/v1/vms/${apiVm}?force=true`);
    if (del.status === 202) await settle(del.body.operation.id);

    // ---- snapshot time and size against guest memory ---------------------------------------
    const rows: string[][] = [];
    for (const m of MEMS) {
      const id = randomUUID();
      vms.push(id);
      await untilServing(id, command(id, 1, m));
      // A quarter of the memory in use (random bytes in a tmpfs of its own: /dev/shm holds less;
      // half of a 128 MiB guest stalls it), so the state holds real pages. busybox dd: its head
      // -c takes no size suffix.
      const fill = await exec(
        id,
        [
          '/bin/sh',
          '-c',
          `mkdir -p /run/fill && mount -t tmpfs -o size=${m}m fill /run/fill && ` +
            `dd if=/dev/urandom of=/run/fill/data bs=1048576 count=${Math.floor(m / 4)}`,
        ],
        120,
      );
      if (fill.status !== 200 || fill.json.exit_code !== 0)
        throw new Error(`fill failed: ${fill.bytes.toString()}`);
      const times: number[] = [];
      let bytes = 0;
      for (let i = 0; i < Math.max(N > 1 ? 3 : 1, Math.ceil(N / 2)); i++) {
        const s = randomUUID();
        const t0 = performance.now();
        const r = await client.call('PUT', `/v1/vms/${id}/snapshots/${s}`, { type: 'Full' });
        times.push(performance.now() - t0);
        if (r.json?.status !== 'ready') throw new Error(`snapshot failed: ${r.bytes.toString()}`);
        bytes = r.json.size_bytes;
        await client.call('DELETE', `/v1/snapshots/${s}`);
      }
      rows.push([
        `${m} MiB (${Math.floor(m / 4)} MiB filled)`,
        ms(median(times)),
        `${(bytes / 1024 ** 2).toFixed(1)} MiB`,
        `${((bytes / (m * 1024 ** 2)) * 100).toFixed(0)}%`,
      ]);
      console.log(
        `snapshot of a ${m} MiB guest: ${ms(median(times))}, ${(bytes / 1024 ** 2).toFixed(1)} MiB`,
      );
      await client.del(id);
    }
    printTable(
      'snapshot create (pause, save state, copy the disk, resume), agent API, medians',
      ['guest memory', 'time', 'size on disk', 'of memory'],
      rows,
    );
  } finally {
    await agent.close();
    if (hostAgent) await stopAgent(hostAgent, 'SIGKILL');
    for (const id of vms) for (const pid of qemuPidsOf(id)) process.kill(pid, 'SIGKILL');
    await stackClose?.();
    rmSync(dir, { recursive: true, force: true });
    if (hostAgent) rmSync(hostAgent.stateDir, { recursive: true, force: true });
  }
}

await main();
