/**
 * The agent with its real drivers boots the test guest under QEMU (TCG): signed commands,
 * console, graceful stop, adoption after an agent restart, crash detection, delete.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { type AgentGuestConfig, signManagerRequest } from '@nqvm/api';
import { BOOT_MARKER, ensureTestGuest, qemuPidsOf as qemuPids, type TestGuest } from '@nqvm/testkit';
import { parseExposition, promtoolProblems, sampleValue } from '@nqvm/testkit/prometheus';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadAgentConfig } from '../config';
import { ConsoleTestClient } from '../console/testing';
import { QemuDriver } from '../drivers/qemu/qemu-driver';
import { detectCgroups, VmCgroups } from '../host/cgroups';
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

const BOOT_TIMEOUT_MS = 90_000;

describe('agent with QEMU and the test guest', () => {
  const keys = managerKeys();
  const dir = tempDir();
  const stateDir = path.join(dir, 'state');
  const id = randomUUID();
  const vmDir = path.join(stateDir, 'vms', id);
  let guest: TestGuest;
  let agent: Agent;
  let client: SignedAgentClient;

  const start = async () => {
    agent = await createAgent(
      loadAgentConfig({ AGENT_BIND: '127.0.0.1:0', FC_RUN_DIR: stateDir, NQVM_AGENT_NAME: 'qemu-test' }),
      { managerPublicKey: keys.publicKeyPem, logger: silentLogger },
    );
    client = new SignedAgentClient(agent.url, keys.privateKey);
  };

  const images = () => ({
    kernel: imageRef(guest.kernel),
    initrd: imageRef(guest.initrd),
    rootfs: { ...imageRef(guest.rootfs), size_bytes: statSync(guest.rootfs).size },
  });

  const consoleText = async () => {
    const res = await client.call('GET', `/v1/vms/${id}/console?tail=262144`);
    expect(res.status).toBe(200);
    return res.bytes.toString('utf8');
  };

  const markers = (text: string) => text.split(BOOT_MARKER).length - 1;

  /** A guest configuration with a config drive, so the VM gets a guest agent token. */
  const withConfigDrive = (vmId: string, hostname: string): AgentGuestConfig => ({
    mode: 'auto',
    instance_id: vmId,
    hostname,
    username: null,
    password_hash: null,
    ssh_authorized_keys: [],
    user_data: null,
    network_config: null,
  });

  beforeAll(async () => {
    guest = await ensureTestGuest();
    await start();
  });

  afterAll(async () => {
    await agent?.close();
    for (const pid of qemuPids(id)) process.kill(pid, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it(
    'boots the guest on its own qcow2 overlay and shows its console',
    async () => {
      const imageBefore = statSync(guest.rootfs).mtimeMs;
      const res = await client.put(id, vmCommand(1, 'running', images(), { spec: { disk_size_mib: 128 } }));
      expect(res.status).toBe(202);
      const running = await waitForState(agent, id, 'running', 30_000);
      expect(running).toMatchObject({ vmm: 'qemu', generation: 1, error: null });
      expect(qemuPids(id)).toEqual([running.pid]);
      // Its QEMU runs in the VM's own cgroup: one vCPU's worth of CPU, its memory plus the VMM's.
      const layout = await detectCgroups();
      if (layout) {
        const groups = new VmCgroups(layout);
        expect(await groups.pids(id)).toEqual([running.pid]);
        const limits = new QemuDriver({ tcgTbSizeMib: 256 }).cgroupLimits({ vcpu: 1, memMib: 128 }, 'tcg');
        expect(limits.memoryBytes).toBe((128 + 160 + 256) * 1024 * 1024);
        const { cpu, memory } = groups.dirs(id);
        const read = (dir: string, f: string) => readFileSync(path.join(dir, f), 'utf8').trim();
        if (layout.version === 1) {
          expect(read(cpu, 'cpu.cfs_quota_us')).toBe('100000');
          expect(read(memory, 'memory.limit_in_bytes')).toBe(String(limits.memoryBytes));
        } else {
          expect(read(cpu, 'cpu.max')).toBe('100000 100000');
          expect(read(memory, 'memory.max')).toBe(String(limits.memoryBytes));
        }
      }
      await waitFor(
        'the boot marker',
        async () => (await consoleText()).includes(BOOT_MARKER),
        BOOT_TIMEOUT_MS,
      );
      expect(await consoleText()).toMatch(new RegExp(`${BOOT_MARKER}.*root=disk`));

      const info = JSON.parse(
        execFileSync('qemu-img', ['info', '-U', '--output=json', path.join(vmDir, 'root.qcow2')], {
          encoding: 'utf8',
        }),
      );
      expect(info).toMatchObject({
        format: 'qcow2',
        'virtual-size': 128 * 1024 * 1024,
        'backing-filename': guest.rootfs,
      });
      expect(statSync(guest.rootfs).mtimeMs).toBe(imageBefore);
      expect(JSON.parse(readFileSync(path.join(vmDir, 'run.json'), 'utf8'))).toMatchObject({
        vmId: id,
        kind: 'qemu',
        pid: running.pid,
      });
    },
    BOOT_TIMEOUT_MS + 30_000,
  );

  it('scrapes the running guest: CPU seconds rise, its root drive read what it booted from', async () => {
    const scrape = async () => {
      const res = await client.call('GET', '/metrics');
      expect(res.status).toBe(200);
      const text = res.bytes.toString('utf8');
      expect(promtoolProblems(text)).toBeNull();
      return parseExposition(text);
    };
    const first = await scrape();
    const labels = { vm_id: id, vmm: 'qemu' };
    const cpu0 = sampleValue(first, 'nqvm_vm_cpu_seconds_total', labels)!;
    expect(cpu0).toBeGreaterThan(0);
    expect(sampleValue(first, 'nqvm_vm_memory_rss_bytes', labels)).toBeGreaterThan(16 * 1024 * 1024);
    // The kernel read its root file system from the overlay: QMP query-blockstats counted it.
    expect(sampleValue(first, 'nqvm_vm_disk_read_bytes_total', { vm_id: id, drive: 'root' })).toBeGreaterThan(
      0,
    );
    expect(sampleValue(first, 'nqvm_vm_disk_reads_total', { vm_id: id, drive: 'root' })).toBeGreaterThan(0);
    expect(sampleValue(first, 'nqvm_agent_vmm_processes', { vmm: 'qemu' })).toBe(1);
    await new Promise((r) => setTimeout(r, 1_000));
    expect(sampleValue(await scrape(), 'nqvm_vm_cpu_seconds_total', labels)!).toBeGreaterThan(cpu0);

    // The agent's own history of it: a point a second, counters that only grow.
    const seconds = await client.call('GET', `/v1/vms/${id}/usage?resolution=1s`);
    expect(seconds.status).toBe(200);
    const points = seconds.json.points as Array<{ t: number; cpu_seconds: number; disk_read_bytes: number }>;
    expect(points.length).toBeGreaterThanOrEqual(2);
    expect(points.at(-1)!.cpu_seconds).toBeGreaterThan(points[0]!.cpu_seconds);
    expect(points.at(-1)!.t - points[0]!.t).toBeGreaterThanOrEqual(1_000);
    expect(points.at(-1)!.disk_read_bytes).toBeGreaterThan(0);
    const minutes = await client.call('GET', `/v1/vms/${id}/usage?resolution=1m`);
    expect(minutes.json).toMatchObject({ vm_id: id, resolution: '1m', step_s: 60 });
    expect(minutes.json.points.length).toBe(1);
    expect((await client.call('GET', `/v1/vms/${id}/usage?resolution=5s`)).status).toBe(400);
  });

  it(
    'stops gracefully and boots again on the same disk',
    async () => {
      await client.put(id, vmCommand(2, 'stopped', images(), { stop: { force: false, timeout_s: 30 } }));
      await waitForState(agent, id, 'stopped', 40_000);
      expect(qemuPids(id)).toEqual([]);
      expect(await consoleText()).toContain('power button, shutting down');
      expect(existsSync(path.join(vmDir, 'root.qcow2'))).toBe(true);
      expect(existsSync(path.join(vmDir, 'run.json'))).toBe(false);

      await client.put(id, vmCommand(3, 'running', images(), { spec: { disk_size_mib: 128 } }));
      await waitForState(agent, id, 'running', 30_000);
      await waitFor('a second boot marker', async () => markers(await consoleText()) >= 2, BOOT_TIMEOUT_MS);
    },
    2 * BOOT_TIMEOUT_MS,
  );

  it('leaves the VM running when the agent stops, and adopts it on the next start', async () => {
    const before = reportOf(agent, id)!;
    await agent.close();
    expect(qemuPids(id)).toEqual([before.pid]);
    await start();
    expect(reportOf(agent, id)).toMatchObject({ state: 'running', pid: before.pid, generation: 3 });
    // Scrollback survives the restart (the console log seeds it).
    expect(markers(await consoleText())).toBeGreaterThanOrEqual(2);
  }, 30_000);

  it('shows the bytes the guest wrote, once, after an agent restart, where QEMU logged some twice', async () => {
    const wsPath = `/v1/vms/${id}/console/ws?write=1&user=test`;
    const con = await ConsoleTestClient.connect(
      `${agent.url.replace('http', 'ws')}${wsPath}`,
      signManagerRequest(keys.privateKey, 'GET', wsPath),
    );
    const size = (file: string) => statSync(path.join(vmDir, file), { throwIfNoEntry: false })?.size ?? 0;
    const [logFrom, receivedFrom] = [size('console.log'), size('console.received.log')];
    const line = (i: number) => `nqvm-line-${i} abcdefghijklmnopqrstuvwxyz0123456789`;
    con.type(
      `for i in $(seq 1 300); do echo "${line(0).replace('0', '$i')}"; done; echo NQVM-$((6*7))-DONE\n`,
    );
    // The agent falls behind, as on a loaded host: its thread stalls while the guest prints, so
    // QEMU's socket fills up and refuses bytes, which its serial port sends again later.
    const stall = new Int32Array(new SharedArrayBuffer(4));
    for (let i = 0; i < 15 && !con.output.includes('NQVM-42-DONE'); i++) {
      Atomics.wait(stall, 0, 0, 200);
      await new Promise((r) => setTimeout(r, 20));
    }
    await con.waitForOutput('NQVM-42-DONE', BOOT_TIMEOUT_MS);
    con.close();
    const before = await consoleText();
    // QEMU's log holds more than the guest wrote: the refused bytes, twice.
    expect(size('console.log') - logFrom).toBeGreaterThan(size('console.received.log') - receivedFrom);

    await agent.close();
    await start();
    const after = await consoleText();
    expect(after).toBe(before);
    for (let i = 1; i <= 300; i++) expect(after).toContain(`${line(i)}\r\n`);
  }, 120_000);

  // The goal is 2 s (bench/vm-faults.ts prints the figure); the test allows five times that.
  it('reports a crash of the VMM within 10 s', async () => {
    const { pid } = reportOf(agent, id)!;
    process.kill(pid!, 'SIGKILL');
    const failed = await waitForState(agent, id, 'failed', 10_000);
    expect(failed.pid).toBeNull();
    expect(failed.error).toBeTruthy();
  }, 10_000);

  it('deletes the VM: no process, no folder', async () => {
    await client.put(id, vmCommand(4, 'running', images()));
    await waitForState(agent, id, 'running', 30_000);
    const res = await client.del(id);
    expect(res.status).toBe(202);
    await waitForState(agent, id, 'deleted', 20_000);
    expect(qemuPids(id)).toEqual([]);
    expect(existsSync(vmDir)).toBe(false);
    // Its cgroup went with its QEMU.
    const layout = await detectCgroups();
    if (layout)
      await waitFor('the cgroup gone', () => !existsSync(new VmCgroups(layout).dirs(id).cpu), 10_000);
  }, 60_000);

  it('stops a guest that is still booting in seconds, not after the whole graceful timeout', async () => {
    const early = randomUUID();
    // With a guest agent token: a guest that will say when it is up, and has not yet.
    await client.put(
      early,
      vmCommand(1, 'running', images(), { spec: { guest_config: withConfigDrive(early, 'early') } }),
    );
    await waitForState(agent, early, 'running', 30_000);
    // The VMM runs; the guest's kernel is only starting: a single power button press is lost.
    const t0 = Date.now();
    await client.put(early, vmCommand(2, 'stopped', images(), { stop: { force: false, timeout_s: 60 } }));
    const stopped = await waitForState(agent, early, 'stopped', 60_000);
    const tookMs = Date.now() - t0;
    // 5 s for the booting guest to take the power button, then forced: 25 s is five times that.
    expect(tookMs).toBeLessThan(25_000);
    expect(qemuPids(early)).toEqual([]);
    // Either a later press was taken (graceful), or the user is told it was forced.
    if (stopped.error !== null)
      expect(stopped.error).toBe(
        'stopped by force: the guest was still booting and did not take the power button within 5 s',
      );
    await client.del(early);
    await waitForState(agent, early, 'deleted', 20_000);
  }, 120_000);

  it(
    'fails a guest whose kernel panics at boot with the panic and the console’s last lines',
    async () => {
      // The built-in kernel has its disk driver as a module: without its initrd it finds no root.
      const panics = randomUUID();
      await client.put(panics, vmCommand(1, 'running', { ...images(), initrd: null }));
      const failed = await waitForState(agent, panics, 'failed', BOOT_TIMEOUT_MS);
      expect(failed.error).toMatch(/^the guest kernel panicked \(Kernel panic - not syncing: [^)]*\)/);
      expect(failed.error).toContain("its console's last lines:\n");
      // The lines show where it stopped, e.g. "VFS: Unable to mount root fs on unknown-block(0,0)".
      expect(failed.error).toMatch(/root/i);
      expect(qemuPids(panics)).toEqual([]);
      await client.del(panics);
      await waitForState(agent, panics, 'deleted', 20_000);
    },
    BOOT_TIMEOUT_MS + 30_000,
  );

  it(
    'boots again when the guest reboots itself, and stays running',
    async () => {
      const rebooting = randomUUID();
      const tail = async () =>
        (await client.call('GET', `/v1/vms/${rebooting}/console?tail=262144`)).bytes.toString('utf8');
      // With a config drive: its guest agent takes the exec.
      const guest_config = withConfigDrive(rebooting, 'rebooting');
      await client.put(rebooting, vmCommand(1, 'running', images(), { spec: { guest_config } }));
      await waitForState(agent, rebooting, 'running', 30_000);
      await waitFor('the boot marker', async () => (await tail()).includes(BOOT_MARKER), BOOT_TIMEOUT_MS);
      // Up once its guest agent said hello, which the VMM running alone does not say.
      const up = await waitFor(
        'the guest up',
        () => reportOf(agent, rebooting)?.guest_ready,
        BOOT_TIMEOUT_MS,
      );
      expect(up.signal).toBe('guest-agent');
      const first = reportOf(agent, rebooting)!.pid;
      const exec = await client.call('POST', `/v1/vms/${rebooting}/exec`, {
        argv: ['reboot'],
        timeout_s: 10,
      });
      expect(exec.status, JSON.stringify(exec.json)).toBeLessThan(500);
      await waitFor(
        'a second boot marker',
        async () => (await tail()).split(BOOT_MARKER).length - 1 >= 2,
        BOOT_TIMEOUT_MS,
      );
      const again = await waitForState(agent, rebooting, 'running', 30_000);
      expect(again.pid).not.toBe(first);
      expect(again.error).toBeNull();
      // The new run's guest comes up on its own again.
      const upAgain = await waitFor(
        'the rebooted guest up',
        () => reportOf(agent, rebooting)?.guest_ready,
        BOOT_TIMEOUT_MS,
      );
      expect(Date.parse(upAgain.at)).toBeGreaterThan(Date.parse(up.at));
      await client.del(rebooting);
      await waitForState(agent, rebooting, 'deleted', 20_000);
    },
    2 * BOOT_TIMEOUT_MS,
  );
});
