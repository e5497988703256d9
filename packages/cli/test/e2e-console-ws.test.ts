/**
 * The console WebSocket through the whole stack with a real guest (QEMU under TCG): the
 * manager's route, an `nqvm agent` process, the QEMU-held console. A command typed through the
 * manager runs in the guest, the writer's window size reaches the guest's tty; an agent killed with SIGKILL ends the session with `agent-restart`,
 * and the next agent serves the same console with its scrollback; stopping the VM ends it with
 * `vm-stopped`.
 */
import { ConsoleTestClient } from '@nqvm/agent/console/testing';
import { BOOT_MARKER } from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestManager } from '../../manager/test/harness';
import { type AgentProcess, qemuPids, spawnAgent, startAgent, startStack, stopAgent, waitFor } from './stack';

const BOOT_MS = 120_000;

describe('console WebSocket through the whole stack', () => {
  let t: TestManager;
  let api: Awaited<ReturnType<typeof startStack>>['api'];
  const agents: AgentProcess[] = [];
  const clients: ConsoleTestClient[] = [];
  let vmId: string | undefined;

  beforeAll(async () => {
    const s = await startStack();
    t = s.t;
    api = s.api;
  }, 120_000);

  afterAll(async () => {
    for (const c of clients) c.ws.terminate();
    if (vmId) await api.del(`/api/v1/vms/${vmId}?force=true`);
    await waitFor(
      async () => !vmId || qemuPids(vmId).length === 0,
      30_000,
      () => 'VM left running',
    ).catch(() => {});
    for (const a of agents) await stopAgent(a);
    await t?.close();
  }, 60_000);

  /** Connects through the manager, retrying while the VM or its host is not there yet (409, 503). */
  const connect = (id: string) =>
    waitFor(
      () =>
        ConsoleTestClient.connect(`${t.url.replace(/^http/, 'ws')}/api/v1/vms/${id}/console/ws`, {
          authorization: `Bearer ${t.adminToken}`,
        })
          .then((c) => {
            clients.push(c);
            return c;
          })
          .catch((err: Error) => {
            if (!/HTTP (409|503)/.test(err.message)) throw err;
            return null;
          }),
      30_000,
      () => `the console of ${id}`,
    );

  it('types into the guest, survives an agent kill -9 with its scrollback, and ends with the VM', async () => {
    const agent = await startAgent(t, 'console-host');
    agents.push(agent);
    await agent.hostId();
    const res = await api.post('/api/v1/vms', { name: 'console-e2e', mem_mib: 128 });
    expect(res.status).toBe(202);
    const id: string = res.body.vm.id;
    vmId = id;

    const first = await connect(id);
    await first.waitForOutput(BOOT_MARKER, BOOT_MS);
    expect(first.messages[0]).toMatchObject({ type: 'hello', role: 'writer', writer: 'admin' });
    first.type('echo CONSOLE-$((20+22))\r');
    await first.waitForOutput('CONSOLE-42', 20_000);
    // The writer's window size reaches the guest's console tty (a UART has none of its own).
    first.control({ type: 'resize', cols: 132, rows: 43 });
    await waitFor(
      async () => {
        const since = first.output.length;
        first.type('stty size\r');
        return first
          .waitForOutput('43 132', 2_000, since)
          .then(() => true)
          .catch(() => false);
      },
      30_000,
      () => 'the console size in the guest',
    );

    const pids = qemuPids(id);
    await stopAgent(agent, 'SIGKILL');
    expect(await first.waitForMessage('closed', () => true, 30_000)).toMatchObject({
      reason: 'agent-restart',
    });
    expect((await first.closed).code).toBe(4000);
    expect(qemuPids(id)).toEqual(pids);

    const again = spawnAgent(t, 'console-host', agent.stateDir, agent.bind, undefined);
    agents.push(again);
    await again.hostId();
    const second = await connect(id);
    // The scrollback of the run, kept across the agent restart.
    await second.waitForOutput('CONSOLE-42', 20_000);
    expect(second.output).toContain(BOOT_MARKER);
    second.type('echo AFTER-$((50+1))\r');
    await second.waitForOutput('AFTER-51', 20_000);

    expect((await api.post(`/api/v1/vms/${id}/stop`, { force: true })).status).toBe(202);
    expect(await second.waitForMessage('closed', () => true, 30_000)).toMatchObject({ reason: 'vm-stopped' });
    expect((await second.closed).code).toBe(1000);
  }, 300_000);
});
