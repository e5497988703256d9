/**
 * End to end through the whole stack with real guests (QEMU under TCG): the manager's API,
 * an `nqvm agent` process, the QEMU driver and the test guest.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { registerPathImage } from '@nqvm/manager/images/images';
import { BOOT_MARKER } from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestManager } from '../../manager/test/harness';
import {
  type AgentProcess,
  qemuPids,
  rootfsVariant,
  startAgent,
  startStack,
  stopAgent,
  waitFor,
} from './stack';

const BOOT_MS = 90_000;

describe('VM lifecycle through the whole stack', () => {
  let t: TestManager;
  let api: Awaited<ReturnType<typeof startStack>>['api'];
  let agent: AgentProcess;
  let tickerRootfs: string;
  let deafRootfs: string;
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-e2e-'));
  const created: string[] = [];

  beforeAll(async () => {
    const s = await startStack();
    t = s.t;
    api = s.api;
    const store = t.manager.services.store;
    tickerRootfs = await registerPathImage(store, {
      name: 'rootfs-ticker',
      kind: 'rootfs',
      path: rootfsVariant(s.guest.rootfs, path.join(work, 'ticker.ext4'), {
        inittab: [`::once:/bin/sh -c 'i=0; while true; do echo TICK=$i; i=$((i+1)); sleep 0.2; done'`],
      }),
    });
    deafRootfs = await registerPathImage(store, {
      name: 'rootfs-deaf',
      kind: 'rootfs',
      path: rootfsVariant(s.guest.rootfs, path.join(work, 'deaf.ext4'), {
        remove: ['/etc/acpi/PWRF/00000080'],
      }),
    });
    agent = await startAgent(t, 'e2e-host');
    await agent.hostId();
  }, 120_000);

  afterAll(async () => {
    for (const id of created) await api.del(`/api/v1/vms/${id}?force=true`);
    await waitFor(
      async () => created.every((id) => qemuPids(id).length === 0),
      30_000,
      () => 'VMs left running',
    ).catch(() => {});
    if (agent) await stopAgent(agent);
    await t?.close();
    fs.rmSync(work, { recursive: true, force: true });
  }, 60_000);

  async function settle(opId: string) {
    const r = await api.get(`/api/v1/operations/${opId}?wait=60`);
    expect(r.status).toBe(200);
    return r.body;
  }

  async function console(id: string): Promise<string> {
    const r = await fetch(`${t.url}/api/v1/vms/${id}/console?tail=262144`, {
      headers: { authorization: `Bearer ${t.adminToken}` },
    });
    return r.ok ? r.text() : '';
  }

  async function waitConsole(id: string, re: RegExp, ms = BOOT_MS): Promise<string> {
    return waitFor(
      async () => ((await console(id)).match(re) ? console(id) : null),
      ms,
      () => `console of ${id} never matched ${re}`,
    );
  }

  function lastTick(text: string): number {
    const all = [...text.matchAll(/TICK=(\d+)/g)];
    return all.length ? Number(all[all.length - 1]![1]) : -1;
  }

  it('creates, pauses, resumes, stops gracefully, starts, reboots and deletes a real guest', async () => {
    const res = await api.post('/api/v1/vms', { name: 'life', mem_mib: 128, rootfs_image_id: tickerRootfs });
    expect(res.status).toBe(202);
    const id: string = res.body.vm.id;
    created.push(id);
    expect((await settle(res.body.operation.id)).status).toBe('succeeded');
    await waitConsole(id, new RegExp(BOOT_MARKER));
    await waitConsole(id, /TICK=5/);
    expect(qemuPids(id)).toHaveLength(1);
    expect((await api.get(`/api/v1/vms/${id}/metrics`)).body).toEqual({ vmm: 'qemu', metrics: null });

    const pause = await api.post(`/api/v1/vms/${id}/pause`);
    expect((await settle(pause.body.operation.id)).status).toBe('succeeded');
    expect((await api.get(`/api/v1/vms/${id}`)).body.state).toBe('paused');
    const atPause = lastTick(await console(id));
    await new Promise((r) => setTimeout(r, 1500));
    expect(lastTick(await console(id))).toBe(atPause);

    const resume = await api.post(`/api/v1/vms/${id}/resume`);
    expect((await settle(resume.body.operation.id)).status).toBe('succeeded');
    await waitFor(
      async () => lastTick(await console(id)) > atPause + 2,
      20_000,
      () => 'counter did not continue',
    );

    const stop = await api.post(`/api/v1/vms/${id}/stop`, { timeout_s: 30 });
    expect((await settle(stop.body.operation.id)).status).toBe('succeeded');
    const stopped = (await api.get(`/api/v1/vms/${id}`)).body;
    expect(stopped.state).toBe('stopped');
    expect(qemuPids(id)).toHaveLength(0);
    expect(await console(id)).toMatch(/reboot: Power down|Power down|poweroff/i);

    const start = await api.post(`/api/v1/vms/${id}/start`);
    expect((await settle(start.body.operation.id)).status).toBe('succeeded');
    const bootsBefore = (await console(id)).split(BOOT_MARKER).length;
    await waitFor(
      async () =>
        (await console(id)).split(BOOT_MARKER).length > bootsBefore - 0 && qemuPids(id).length === 1,
      BOOT_MS,
      () => 'no second boot',
    );

    const pidBefore = qemuPids(id)[0];
    const markers = (await console(id)).split(BOOT_MARKER).length;
    const reboot = await api.post(`/api/v1/vms/${id}/reboot`);
    expect((await settle(reboot.body.operation.id)).status).toBe('succeeded');
    await waitFor(
      async () => (await console(id)).split(BOOT_MARKER).length > markers,
      BOOT_MS,
      () => 'reboot did not boot again',
    );
    expect(qemuPids(id)).toHaveLength(1);
    expect(qemuPids(id)[0]).not.toBe(pidBefore);

    expect((await api.del(`/api/v1/vms/${id}`)).status).toBe(409);
    const del = await api.del(`/api/v1/vms/${id}?force=true`);
    expect((await settle(del.body.operation.id)).status).toBe('succeeded');
    expect((await api.get(`/api/v1/vms/${id}`)).status).toBe(404);
    expect(qemuPids(id)).toHaveLength(0);
    expect(fs.existsSync(path.join(agent.stateDir, 'vms', id))).toBe(false);
  }, 300_000);

  it('forces the stop after the timeout when the guest ignores the power button', async () => {
    const res = await api.post('/api/v1/vms', { name: 'deaf', mem_mib: 128, rootfs_image_id: deafRootfs });
    const id: string = res.body.vm.id;
    created.push(id);
    expect((await settle(res.body.operation.id)).status).toBe('succeeded');
    await waitConsole(id, new RegExp(BOOT_MARKER));
    const started = Date.now();
    const stop = await api.post(`/api/v1/vms/${id}/stop`, { timeout_s: 3 });
    expect((await settle(stop.body.operation.id)).status).toBe('succeeded');
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(2500);
    expect((await api.get(`/api/v1/vms/${id}`)).body.state).toBe('stopped');
    expect(qemuPids(id)).toHaveLength(0);
  }, 200_000);

  it('fails a boot that cannot succeed, naming the step, and leaves nothing behind', async () => {
    const missing = await registerPathImage(t.manager.services.store, {
      name: 'kernel-gone',
      kind: 'kernel',
      path: (() => {
        const f = path.join(work, 'vmlinuz-gone');
        fs.writeFileSync(f, 'not a kernel');
        return f;
      })(),
    });
    fs.rmSync(path.join(work, 'vmlinuz-gone'));
    const res = await api.post('/api/v1/vms', { name: 'broken', mem_mib: 128, kernel_image_id: missing });
    const id: string = res.body.vm.id;
    created.push(id);
    const op = await settle(res.body.operation.id);
    expect(op.status).toBe('failed');
    expect(op.error.message).toMatch(/step|resolve-images|kernel/i);
    const vm = (await api.get(`/api/v1/vms/${id}`)).body;
    expect(vm.state).toBe('failed');
    expect(vm.last_error).toMatch(/kernel/i);
    expect(qemuPids(id)).toHaveLength(0);
    const vmDir = path.join(agent.stateDir, 'vms', id);
    const left = fs.existsSync(vmDir) ? fs.readdirSync(vmDir).filter((f) => !f.endsWith('.json')) : [];
    expect(left).toEqual([]);
  }, 120_000);
});
