/**
 * The Firecracker driver through the whole stack, for each supported version: the manager's
 * API, an agent whose Firecracker binary is the spec-validating simulator. Every request the
 * driver sent is checked against that version's spec by a validator independent of the
 * simulator, and none was refused (so none was out of phase).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type Agent, createAgent, FirecrackerDriver, loadAgentConfig } from '@nqvm/agent';
import { registerPathImage } from '@nqvm/manager/images/images';
import {
  FIRECRACKER_SIM_VERSIONS,
  independentSpecValidator,
  journalRequests,
  readJournal,
  writeSimulatorBinary,
  writeTinyElfKernel,
} from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { client, startManager, type TestManager } from '../../manager/test/harness';
import { waitFor } from './stack';

describe.each(FIRECRACKER_SIM_VERSIONS)('Firecracker %s through the manager API', (version) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `nqvm-e2e-fc-${version}-`));
  const journal = path.join(dir, 'journal');
  let t: TestManager;
  let api: ReturnType<typeof client>;
  let agent: Agent;
  let kernelId: string;
  let rootfsId: string;

  beforeAll(async () => {
    t = await startManager('sqlite', { NQVM_HEARTBEAT_INTERVAL_S: '1' });
    api = client(t.url, t.adminToken);
    const bin = await writeSimulatorBinary(path.join(dir, 'bin'), version, { journal });
    const kernel = await writeTinyElfKernel(path.join(dir, 'vmlinux'));
    const rootfs = path.join(dir, 'rootfs.ext4');
    execFileSync('mkfs.ext4', ['-q', '-F', rootfs, '16M'], { stdio: 'ignore' });
    const store = t.manager.services.store;
    kernelId = await registerPathImage(store, {
      name: 'fc-kernel',
      kind: 'kernel',
      path: kernel,
      format: 'elf',
    });
    rootfsId = await registerPathImage(store, { name: 'fc-rootfs', kind: 'rootfs', path: rootfs });
    const join = await api.post('/api/v1/join-tokens', { ttl_s: 600 });
    agent = await createAgent(
      loadAgentConfig({
        AGENT_BIND: '127.0.0.1:0',
        FC_RUN_DIR: path.join(dir, 'agent'),
        NQVM_AGENT_NAME: `fc-${version.replaceAll('.', '-')}`,
        MANAGER_BASE: t.url,
        NQVM_JOIN_TOKEN: join.body.token,
        NQVM_LOG_LEVEL: 'silent',
      }),
      // No Firecracker can run a guest here: the simulator stands in, and KVM is claimed.
      { drivers: [new FirecrackerDriver({ firecrackerBin: bin, probeKvm: async () => true })] },
    );
  }, 60_000);

  afterAll(async () => {
    await agent?.close();
    await t?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const settle = async (opId: string) => (await api.get(`/api/v1/operations/${opId}?wait=30`)).body;
  const vm = async (id: string) => (await api.get(`/api/v1/vms/${id}`)).body;
  const consoleOf = async (id: string) =>
    (
      await fetch(`${t.url}/api/v1/vms/${id}/console?tail=65536`, {
        headers: { authorization: `Bearer ${t.adminToken}` },
      })
    ).text();

  it('creates, pauses, resumes, stops, starts and deletes a VM with spec-valid requests only', async () => {
    const res = await api.post('/api/v1/vms', {
      name: 'fc-vm',
      vmm: 'firecracker',
      mem_mib: 128,
      kernel_image_id: kernelId,
      rootfs_image_id: rootfsId,
    });
    expect(res.status).toBe(202);
    const id: string = res.body.vm.id;
    expect((await settle(res.body.operation.id)).status).toBe('succeeded');
    expect(await vm(id)).toMatchObject({ state: 'running', vmm: 'firecracker' });
    await waitFor(
      async () => (await consoleOf(id)).includes(`guest booted (firecracker v${version})`),
      10_000,
      () => 'no boot on the console',
    );

    const metrics = await api.get(`/api/v1/vms/${id}/metrics`);
    expect(metrics.status).toBe(200);
    expect(metrics.body.vmm).toBe('firecracker');
    expect(metrics.body.metrics).toEqual(expect.objectContaining({ utc_timestamp_ms: expect.any(Number) }));

    for (const [action, state] of [
      ['pause', 'paused'],
      ['resume', 'running'],
      ['stop', 'stopped'],
      ['start', 'running'],
    ] as const) {
      const r = await api.post(`/api/v1/vms/${id}/${action}`);
      expect(r.status, action).toBe(202);
      expect((await settle(r.body.operation.id)).status, action).toBe('succeeded');
      expect((await vm(id)).state, action).toBe(state);
    }
    const del = await api.del(`/api/v1/vms/${id}?force=true`);
    expect((await settle(del.body.operation.id)).status).toBe('succeeded');
    expect((await api.get(`/api/v1/vms/${id}`)).status).toBe(404);
    expect(fs.existsSync(path.join(dir, 'agent', 'vms', id))).toBe(false);

    const requests = journalRequests(await readJournal(journal));
    const validate = independentSpecValidator(version);
    expect(requests.length).toBeGreaterThan(10);
    for (const r of requests) {
      expect(validate(r), `${r.method} ${r.path} ${JSON.stringify(r.body)}`).toBeNull();
      expect(r.status, `${r.method} ${r.path} refused: ${r.fault ?? ''}`).toBeLessThan(400);
    }
    const byProcess = new Map<number, typeof requests>();
    for (const r of requests) byProcess.set(r.pid, [...(byProcess.get(r.pid) ?? []), r]);
    expect(byProcess.size).toBe(2); // one process per boot: the stop ended the first
    for (const reqs of byProcess.values()) {
      const starts = reqs.filter(
        (r) => r.path === '/actions' && (r.body as { action_type?: string })?.action_type === 'InstanceStart',
      );
      expect(starts).toHaveLength(1);
      const startAt = reqs.indexOf(starts[0]!);
      for (const r of reqs.slice(startAt + 1))
        expect(['/vm', '/actions', '/', '/version', '/vm/config', '/mmds']).toContain(r.path);
    }
    if (version === '1.1.0') expect(requests.some((r) => r.path === '/entropy')).toBe(false);
    else expect(requests.some((r) => r.path === '/entropy')).toBe(true);
  }, 120_000);
});
