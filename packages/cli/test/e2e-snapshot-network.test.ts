/**
 * End to end, snapshots through the whole stack with real guests on a NAT network inside a
 * network namespace: a VM with a counter and a file is snapshotted, two clones of the snapshot
 * run at once beside it, each with its own disk, its own MAC and address (the guest agent
 * re-addresses them after the restore) and its own host name, and all three answer pings from
 * the host and from each other. Then a restore in place brings the source's file back. A
 * snapshot of a paused VM gives clones that are re-identified the same way, and each one's first
 * exec, sent the moment its operation succeeded, works.
 */
import fs from 'node:fs';
import { BOOT_MARKER, execIn, NetnsLab } from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestManager } from '../../manager/test/harness';
import { type AgentProcess, killVmProcesses, startAgent, startStack, stopAgent, waitFor } from './stack';

const CIDR = '10.97.0.0/24';

describe('snapshot clones on a network (real guests in a network namespace)', () => {
  let lab: NetnsLab;
  let hostNs: string;
  let t: TestManager;
  let api: Awaited<ReturnType<typeof startStack>>['api'];
  let agent: AgentProcess;
  const created: string[] = [];

  const exec = async (vmId: string, script: string): Promise<string> => {
    const r = await api.post(`/api/v1/vms/${vmId}/exec`, {
      command: ['/bin/sh', '-c', script],
      timeout_s: 30,
    });
    expect(r.status, r.text).toBe(200);
    expect(r.body.exit_code, `${script}: ${r.body.stderr}`).toBe(0);
    return (r.body.stdout as string).trim();
  };
  const operationDone = async (id: string) => {
    const op = (await api.get(`/api/v1/operations/${id}?wait=60`)).body;
    expect(op.status, JSON.stringify(op)).toBe('succeeded');
  };
  const serving = (vmId: string) =>
    waitFor(
      async () =>
        (await api.post(`/api/v1/vms/${vmId}/exec`, { command: ['true'], timeout_s: 5 })).status === 200,
      120_000,
      () => `the guest agent of ${vmId} never answered:\n${agent.output()}`,
    );
  const ping = async (ns: string, ip: string) => {
    try {
      await execIn(ns, 'busybox', ['ping', '-c', '1', '-W', '3', ip]);
      return true;
    } catch {
      return false;
    }
  };

  beforeAll(async () => {
    lab = new NetnsLab();
    hostNs = await lab.namespace('host');
    const s = await startStack();
    t = s.t;
    api = s.api;
    agent = await startAgent(t, 'snap-host', { NQVM_AGENT_NETNS: hostNs });
    await agent.hostId();
  }, 600_000);

  afterAll(async () => {
    killVmProcesses(created);
    if (agent) await stopAgent(agent, 'SIGKILL');
    await lab?.cleanup();
    await t?.close();
    if (agent) fs.rmSync(agent.stateDir, { recursive: true, force: true });
  }, 60_000);

  it('two clones of one snapshot run at once with their own disks, MACs and addresses; a restore brings the file back', async () => {
    const net = await api.post('/api/v1/networks', { name: 'snap-nat', kind: 'nat', cidr: CIDR });
    expect(net.status, net.text).toBe(201);
    const r = await api.post('/api/v1/vms', {
      name: 'snap-src',
      mem_mib: 128,
      vmm: 'qemu',
      networks: [{ network_id: net.body.id }],
    });
    expect(r.status, r.text).toBe(202);
    const src = r.body.vm;
    created.push(src.id);
    await operationDone(r.body.operation.id);
    await serving(src.id);
    await exec(src.id, 'echo original > /root/state; sync');
    await exec(
      src.id,
      "setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /run/counter; sleep 0.1; done' >/dev/null 2>&1 &",
    );

    const snap = await api.post(`/api/v1/vms/${src.id}/snapshots`, {
      name: 'snap-net',
      snapshot_type: 'Full',
    });
    expect(snap.status, snap.text).toBe(202);
    await operationDone(snap.body.operation.id);
    const taken = (await api.get(`/api/v1/snapshots/${snap.body.snapshot.id}`)).body;
    expect(taken).toMatchObject({ status: 'ready', guest_agent: true, vmm: 'qemu' });
    const counterAtSnapshot = Number(await exec(src.id, 'cat /run/counter'));

    const clones: Array<{ id: string; name: string; ip: string; mac: string }> = [];
    for (const name of ['clone-a', 'clone-b']) {
      const c = await api.post(`/api/v1/snapshots/${taken.id}/instantiate`, { name });
      expect(c.status, c.text).toBe(202);
      expect(c.body.warnings.join(' ')).toMatch(/entropy/);
      expect(c.body.placement.host_id).toBe(taken.host_id);
      created.push(c.body.vm.id);
      clones.push({ id: c.body.vm.id, name, ip: c.body.vm.networks[0].ip, mac: c.body.vm.networks[0].mac });
      await operationDone(c.body.operation.id);
    }
    const source = (await api.get(`/api/v1/vms/${src.id}`)).body.networks[0];
    const ips = [source.ip, ...clones.map((c) => c.ip)];
    expect(new Set(ips).size).toBe(3);
    expect(new Set([source.mac, ...clones.map((c) => c.mac)]).size).toBe(3);

    // No retry: each clone's operation succeeded, so it runs re-identified and its guest agent answers.
    for (const c of clones) {
      const vm = (await api.get(`/api/v1/vms/${c.id}`)).body;
      expect(vm).toMatchObject({ state: 'running', last_error: null });
      // The guest now holds the clone's identity, not the snapshot's.
      expect(await exec(c.id, 'cat /sys/class/net/eth0/address')).toBe(c.mac);
      expect(await exec(c.id, 'ip -4 -o addr show dev eth0')).toContain(`${c.ip}/24`);
      expect(await exec(c.id, 'hostname')).toBe(c.name);
      // Its memory is the snapshot's: the counter goes on from there.
      expect(Number(await exec(c.id, 'cat /run/counter'))).toBeGreaterThanOrEqual(counterAtSnapshot);
    }
    // All three answer at once: from the host side of the bridge, and clone to clone.
    for (const ip of ips)
      expect(
        await waitFor(
          () => ping(hostNs, ip),
          30_000,
          () => `no answer from ${ip}`,
        ),
      ).toBe(true);
    await exec(
      clones[0]!.id,
      `ping -c 1 -W 3 ${clones[1]!.ip} >/dev/null && ping -c 1 -W 3 ${source.ip} >/dev/null`,
    );

    // Separate disks: a write in one clone is absent from the other and from the source.
    await exec(clones[0]!.id, 'echo only-a > /root/state; sync');
    const fresh = 'echo 3 > /proc/sys/vm/drop_caches; cat /root/state';
    expect(await exec(clones[1]!.id, fresh)).toBe('original');
    expect(await exec(src.id, fresh)).toBe('original');

    // Restore in place: what the source did after the snapshot is undone.
    await exec(src.id, 'echo changed > /root/state; sync');
    const restore = await api.post(`/api/v1/vms/${src.id}/restore`, { snapshot_id: taken.id });
    expect(restore.status, restore.text).toBe(202);
    await operationDone(restore.body.operation.id);
    expect(await exec(src.id, fresh)).toBe('original');
    expect(await ping(hostNs, source.ip)).toBe(true);

    // Cleanup: the snapshot goes once nothing uses it; no TAP is left.
    for (const id of created) expect((await api.del(`/api/v1/vms/${id}?force=true`)).status).toBe(202);
    for (const id of created)
      await waitFor(
        async () => (await api.get(`/api/v1/vms/${id}`)).status === 404,
        60_000,
        () => `VM ${id} not deleted:\n${agent.output()}`,
      );
    expect((await api.del(`/api/v1/snapshots/${taken.id}`)).status).toBe(200);
    const links = JSON.parse(await execIn(hostNs, 'ip', ['-json', 'link'])) as Array<{ ifname: string }>;
    expect(links.map((l) => l.ifname).filter((n) => n.startsWith('nqt'))).toEqual([]);
  }, 600_000);

  it('clones of a snapshot of a PAUSED VM get their own MAC, address and host name; exec works once their operation succeeded', async () => {
    const net = await api.post('/api/v1/networks', {
      name: 'snap-nat-paused',
      kind: 'nat',
      cidr: '10.97.1.0/24',
    });
    expect(net.status, net.text).toBe(201);
    const r = await api.post('/api/v1/vms', {
      name: 'paused-src',
      mem_mib: 128,
      vmm: 'qemu',
      networks: [{ network_id: net.body.id }],
    });
    expect(r.status, r.text).toBe(202);
    const src = r.body.vm;
    created.push(src.id);
    await operationDone(r.body.operation.id);
    // No exec before the pause: nothing else has talked to the guest's agent, as for a VM made and paused.
    await waitFor(
      async () => (await api.get(`/api/v1/vms/${src.id}/console?tail=262144`)).text.includes(BOOT_MARKER),
      120_000,
      () => `paused-src never booted:\n${agent.output()}`,
    );
    const pause = await api.post(`/api/v1/vms/${src.id}/pause`, {});
    expect(pause.status, pause.text).toBe(202);
    await operationDone(pause.body.operation.id);

    const snap = await api.post(`/api/v1/vms/${src.id}/snapshots`, {
      name: 'snap-paused',
      snapshot_type: 'Full',
    });
    expect(snap.status, snap.text).toBe(202);
    await operationDone(snap.body.operation.id);
    const taken = (await api.get(`/api/v1/snapshots/${snap.body.snapshot.id}`)).body;
    expect(taken).toMatchObject({ status: 'ready', guest_agent: true });

    const clones: Array<{ id: string; name: string; ip: string; mac: string }> = [];
    for (const name of ['paused-clone-a', 'paused-clone-b']) {
      const c = await api.post(`/api/v1/snapshots/${taken.id}/instantiate`, { name });
      expect(c.status, c.text).toBe(202);
      expect(c.body.warnings.join(' ')).not.toMatch(/no nqvm guest agent/);
      created.push(c.body.vm.id);
      const clone = { id: c.body.vm.id, name, ip: c.body.vm.networks[0].ip, mac: c.body.vm.networks[0].mac };
      clones.push(clone);
      await operationDone(c.body.operation.id);
      // No retry: the operation succeeded, so the clone runs as itself and its guest agent answers.
      expect(await exec(clone.id, 'cat /sys/class/net/eth0/address')).toBe(clone.mac);
      expect(await exec(clone.id, 'ip -4 -o addr show dev eth0')).toContain(`${clone.ip}/24`);
      expect(await exec(clone.id, 'hostname')).toBe(name);
      expect((await api.get(`/api/v1/vms/${clone.id}`)).body).toMatchObject({
        state: 'running',
        last_error: null,
      });
    }
    const source = (await api.get(`/api/v1/vms/${src.id}`)).body;
    expect(source.state).toBe('paused');
    expect(new Set([source.networks[0].ip, ...clones.map((c) => c.ip)]).size).toBe(3);
    expect(new Set([source.networks[0].mac, ...clones.map((c) => c.mac)]).size).toBe(3);
    for (const c of clones)
      expect(
        await waitFor(
          () => ping(hostNs, c.ip),
          30_000,
          () => `no answer from ${c.ip}`,
        ),
      ).toBe(true);
    await exec(clones[0]!.id, `ping -c 1 -W 3 ${clones[1]!.ip} >/dev/null`);

    for (const id of [src.id, ...clones.map((c) => c.id)])
      expect((await api.del(`/api/v1/vms/${id}?force=true`)).status).toBe(202);
  }, 600_000);
});
