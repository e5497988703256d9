/**
 * A guest nqvm did not build, booted through the whole stack (manager, an `nqvm agent` process,
 * QEMU under TCG): Debian bookworm with systemd and cloud-init and no nqvm guest agent, booted
 * by the test guest's kernel and initramfs. cloud-init reads the config drive (host name, user,
 * SSH key, network config), installs the guest agent from it, and then exec works; the VM
 * reports its guest up; its network has the default route.
 */
import { ensureCloudInitGuest } from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerPathImage } from '../../manager/src/images/images';
import type { TestManager } from '../../manager/test/harness';
import { type AgentProcess, qemuPids, startAgent, startStack, stopAgent, waitFor } from './stack';

const BOOT_MS = 600_000;
const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKq2fP1n3h0bQxv4Xq3Jb6cWJx5yWnD0mVJ1oQ7rGZ2t cloud';

describe('a Debian cloud-init guest', () => {
  let t: TestManager;
  let api: Awaited<ReturnType<typeof startStack>>['api'];
  let agent: AgentProcess;
  let rootfsId: string;
  let networkId: string;
  let vmId: string | undefined;

  beforeAll(async () => {
    const [s, cloud] = await Promise.all([startStack(), ensureCloudInitGuest()]);
    t = s.t;
    api = s.api;
    rootfsId = await registerPathImage(t.manager.services.store, {
      name: 'debian-cloud',
      kind: 'rootfs',
      path: cloud.rootfs,
    });
    const n = await api.post('/api/v1/networks', { name: 'cloud-nat', kind: 'nat', cidr: '10.96.0.0/24' });
    expect(n.status, n.text).toBe(201);
    networkId = n.body.id;
    agent = await startAgent(t, 'cloud-host');
    await agent.hostId();
  }, 600_000);

  afterAll(async () => {
    if (vmId) await api.del(`/api/v1/vms/${vmId}?force=true`);
    await waitFor(
      async () => !vmId || qemuPids(vmId).length === 0,
      30_000,
      () => 'VM left running',
    ).catch(() => {});
    if (agent) await stopAgent(agent);
    await t?.close();
  }, 60_000);

  const exec = (command: string[]) => api.post(`/api/v1/vms/${vmId}/exec`, { command, timeout_s: 30 });
  const out = async (command: string[]) => {
    const r = await exec(command);
    expect(r.status, r.text).toBe(200);
    return (r.body.stdout as string).trim();
  };

  it(
    'gets the guest agent from its config drive: exec, readiness, host name, user and default route work',
    async () => {
      const r = await api.post('/api/v1/vms', {
        name: 'debian-cloud',
        vcpu: 1,
        mem_mib: 512,
        rootfs_image_id: rootfsId,
        networks: [{ network_id: networkId }],
        guest_config: {
          mode: 'cloud-init',
          hostname: 'deb-cloud',
          username: 'alice',
          password: 'Cloud-pw-1',
          ssh_authorized_keys: [KEY],
        },
      });
      expect(r.status, r.text).toBe(202);
      vmId = r.body.vm.id as string;
      const ip = r.body.vm.networks[0].ip as string;
      const t0 = Date.now();
      // The guest agent answers once cloud-init installed it (late in the first boot).
      try {
        await waitFor(
          async () => {
            const v = await api.get(`/api/v1/vms/${vmId}`);
            if (v.body.state === 'failed') throw new Error(`the VM failed: ${v.body.last_error}`);
            return v.body.state === 'running' && (await exec(['true'])).status === 200;
          },
          BOOT_MS,
          () => 'the guest agent of the cloud-init guest never answered',
        );
      } catch (err) {
        const tail = (await api.get(`/api/v1/vms/${vmId}/console?tail=16384`)).text;
        throw new Error(`${(err as Error).message}; its console:\n${tail}`);
      }
      const bootS = ((Date.now() - t0) / 1000).toFixed(1);
      console.log(`cloud-init guest: agent answering ${bootS} s after the create`);

      const vm = await waitFor(
        async () => {
          const v = (await api.get(`/api/v1/vms/${vmId}`)).body;
          return v.guest_ready_at ? v : null;
        },
        30_000,
        () => 'the VM never reported its guest up',
      );
      expect(['guest-agent', 'console']).toContain(vm.guest_ready_signal);
      // It is Debian's systemd that runs, not nqvm's initramfs.
      expect(await out(['cat', '/proc/1/comm'])).toBe('systemd');
      expect(await out(['hostname'])).toBe('deb-cloud');
      expect(await out(['id', '-un', 'alice'])).toBe('alice');
      expect(await out(['cat', '/home/alice/.ssh/authorized_keys'])).toContain(KEY);
      expect(await out(['systemctl', 'is-active', 'nqvm-guest-agent.service'])).toBe('active');
      // The address nqvm gave it, and the default route through the network's gateway.
      const addrs = await out(['ip', '-4', '-o', 'addr', 'show']);
      const why = async () =>
        `${addrs}\n${await out(['sh', '-c', 'ls /etc/systemd/network /etc/netplan /etc/network 2>&1; networkctl 2>&1; cat /etc/systemd/network/* 2>&1'])}`;
      if (!addrs.includes(`inet ${ip}/24`)) expect.fail(await why());
      expect(await out(['ip', 'route', 'show', 'default'])).toMatch(/^default via 10\.96\.0\.1 /);
    },
    BOOT_MS + 60_000,
  );
});
