/**
 * P6: keystroke round trip on the console WebSocket: send one byte, wait for the guest's echo.
 * Two paths to the same QEMU test guest, sampled interleaved:
 *   manager  client -> manager /api/v1/vms/{id}/console/ws -> agent WS -> guest -> back
 *   agent    client -> agent /v1/vms/{id}/console/ws (signed with the manager's key) -> guest
 * The manager runs in this process, the agent is a separate `nqvm agent` process (the built CLI
 * when packages/cli/dist exists: rebuild it first).
 *
 *   npm run build && npx tsx bench/console-rtt.ts
 *   BENCH_SAMPLES=500 npx tsx bench/console-rtt.ts
 *
 * Goal: the manager adds <= 5 ms at p50. Figures only: nothing passes or fails.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ConsoleTestClient } from '@nqvm/agent/console/testing';
import { signManagerRequest } from '@nqvm/api';
import { registerPathImage } from '@nqvm/manager/images/images';
import { BOOT_MARKER, ensureTestGuest } from '@nqvm/testkit';
import { client, startManager } from '../packages/manager/test/harness';
import { size } from './bench-kit';

const NQVM = path.resolve(import.meta.dirname, '..', 'packages', 'cli', 'bin', 'nqvm.mjs');
const SAMPLES = size('BENCH_SAMPLES', 200, 10);
const WARMUP = size('BENCH_WARMUP', 20, 2);
const GOAL_ADDED_P50_MS = 5;
const BOOT_TIMEOUT_MS = 150_000;

function pct(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] ?? Number.NaN;
}
const ms = (v: number) => `${v.toFixed(2)} ms`;

async function waitFor<T>(
  fn: () => Promise<T | null | undefined | false>,
  timeoutMs: number,
  what: () => string,
) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what()}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Makes `c` the writer (input from anyone else is dropped). */
async function becomeWriter(c: ConsoleTestClient): Promise<void> {
  const seen = c.messages.length;
  c.control({ type: 'take' });
  await waitFor(
    async () => c.messages.slice(seen).some((m) => m.type === 'writer' && m.you),
    5_000,
    () => 'the writer role',
  );
}

/** Sends one byte and answers the time until its echo arrives; then rubs it out (untimed). */
async function roundTrip(c: ConsoleTestClient): Promise<number> {
  const from = c.output.length;
  const started = performance.now();
  c.type('x');
  await c.waitForOutput('x', 5_000, from);
  const took = performance.now() - started;
  const before = c.output.length;
  c.type('\x7f');
  await waitFor(
    async () => c.output.length > before,
    5_000,
    () => 'the backspace echo',
  );
  // Let the rest of the erase sequence arrive, so it is not mistaken for the next echo.
  await new Promise((r) => setTimeout(r, 5));
  return took;
}

const t = await startManager('sqlite', { NQVM_HEARTBEAT_INTERVAL_S: '1' });
const api = client(t.url, t.adminToken);
const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-bench-console-'));
let agent: ChildProcess | null = null;
try {
  const guest = await ensureTestGuest();
  const store = t.manager.services.store;
  await registerPathImage(store, { name: 'kernel', kind: 'kernel', path: guest.kernel, isDefault: true });
  await registerPathImage(store, { name: 'initrd', kind: 'initrd', path: guest.initrd, isDefault: true });
  await registerPathImage(store, { name: 'rootfs', kind: 'rootfs', path: guest.rootfs, isDefault: true });
  const jt = await api.post('/api/v1/join-tokens', { ttl_s: 600 });
  let agentOut = '';
  agent = spawn(
    process.execPath,
    [
      NQVM,
      'agent',
      '--manager',
      t.url,
      '--bind',
      '127.0.0.1:0',
      '--state-dir',
      stateDir,
      '--name',
      'bench-console',
    ],
    {
      env: {
        ...process.env,
        NQVM_LOG_LEVEL: 'warn',
        NQVM_HEARTBEAT_INTERVAL_S: '1',
        NQVM_JOIN_TOKEN: jt.body.token,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  agent.stdout?.on('data', (d) => (agentOut += d));
  agent.stderr?.on('data', (d) => (agentOut += d));
  const host = (await waitFor(
    async () =>
      (
        (
          await api.get('/api/v1/hosts')
        ).body.items as { name: string; status: string; address: string }[]
      ).find((h) => h.name === 'bench-console' && h.status === 'ready'),
    60_000,
    () => `the agent never became ready:\n${agentOut}`,
  ))!;
  const res = await api.post('/api/v1/vms', { name: 'rtt', vcpu: 1, mem_mib: 256 });
  if (res.status !== 202) throw new Error(`VM create: ${res.status} ${res.text}`);
  const id: string = res.body.vm.id;

  // Until the host has the VM, the upgrade is refused with 409: try again.
  const viaManager = await waitFor(
    () =>
      ConsoleTestClient.connect(`${t.url.replace(/^http/, 'ws')}/api/v1/vms/${id}/console/ws`, {
        authorization: `Bearer ${t.adminToken}`,
      }).catch((err: Error) => {
        if (!/HTTP 409/.test(err.message)) throw err;
        return null;
      }),
    30_000,
    () => 'the console of the new VM',
  );
  await viaManager.waitForOutput(BOOT_MARKER, BOOT_TIMEOUT_MS);
  const path = `/v1/vms/${id}/console/ws?write=1&user=bench`;
  const direct = await ConsoleTestClient.connect(
    `${host.address.replace(/^http/, 'ws')}${path}`,
    signManagerRequest(t.manager.services.managerKey.privateKey, 'GET', path),
  );
  await direct.waitForMessage('hello');
  // A fresh prompt for the keystrokes.
  await becomeWriter(viaManager);
  viaManager.type('\r');
  await new Promise((r) => setTimeout(r, 500));

  const samples = { manager: [] as number[], agent: [] as number[] };
  for (let i = 0; i < WARMUP + SAMPLES; i++) {
    for (const [name, c] of [
      ['manager', viaManager],
      ['agent', direct],
    ] as const) {
      await becomeWriter(c);
      const took = await roundTrip(c);
      if (i >= WARMUP) samples[name].push(took);
    }
  }

  const rows = (['agent', 'manager'] as const).map((name) => {
    const v = samples[name];
    return `${name.padEnd(8)}  p50 ${ms(pct(v, 50)).padStart(9)}  p99 ${ms(pct(v, 99)).padStart(9)}  (n=${v.length})`;
  });
  const added = pct(samples.manager, 50) - pct(samples.agent, 50);
  console.log(
    `\nP6 console keystroke round trip (send a byte, see its echo), ${SAMPLES} samples each, interleaved`,
  );
  console.log(rows.join('\n'));
  console.log(
    `added by the manager at p50: ${ms(added)} (goal <= ${GOAL_ADDED_P50_MS} ms: ${added <= GOAL_ADDED_P50_MS ? 'met' : 'NOT met'})`,
  );
  viaManager.close();
  direct.close();
  await api.del(`/api/v1/vms/${id}?force=true`);
  await waitFor(
    async () => (await api.get(`/api/v1/vms/${id}`)).status === 404,
    30_000,
    () => 'VM delete',
  );
} finally {
  if (agent && agent.exitCode === null) {
    const exited = new Promise((r) => agent?.once('exit', r));
    agent.kill('SIGTERM');
    await exited;
  }
  await t.close();
  fs.rmSync(stateDir, { recursive: true, force: true });
}
