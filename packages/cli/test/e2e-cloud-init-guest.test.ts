/**
 * Guests nqvm did not build, booted through the whole stack (manager, an `nqvm agent` process
 * whose networks and QEMU live in a network namespace this test makes, QEMU under TCG): Debian
 * bookworm with systemd, ifupdown and OpenSSH and no nqvm guest agent, booted by the test
 * guest's kernel and initramfs, side by side on one NAT network.
 * - With cloud-init: it reads the config drive (host name, user, SSH key, network config, which
 *   it renders for ifupdown, "eni", where a default route once became a `route` command the
 *   image lacks), installs the guest agent from it, and then exec works; the VM reports its
 *   guest up; it has its address and the default route; SSH with the key works.
 * - Without cloud-init, in mode `inject`: nqvm writes host name, user, key and the ifupdown
 *   configuration of its NIC into the disk before boot; SSH with the injected key works from
 *   the host side, and the guest has its address and default route.
 * Run under `flock /tmp/nqvm-vm.lock`.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { ensureCloudInitGuest, NetnsLab, runIn } from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerPathImage } from '../../manager/src/images/images';
import type { TestManager } from '../../manager/test/harness';
import { type AgentProcess, killVmProcesses, startAgent, startStack, stopAgent, waitFor } from './stack';

const run = promisify(execFile);
const BOOT_MS = 600_000;
const CIDR = '10.96.0.0/24';
const GATEWAY = '10.96.0.1';

describe('Debian guests that are not nqvm’s own', () => {
  let lab: NetnsLab;
  let hostNs: string;
  let t: TestManager;
  let api: Awaited<ReturnType<typeof startStack>>['api'];
  let agent: AgentProcess;
  let work: string;
  let key: string;
  /** The VMs, created together so that both boot at once. */
  const vms: Record<'cloud' | 'plain', { id: string; ip: string }> = {} as never;

  beforeAll(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-e2e-debian-'));
    key = path.join(work, 'id_ed25519');
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'e2e', '-f', key]);
    const publicKey = fs.readFileSync(`${key}.pub`, 'utf8').trim();
    lab = new NetnsLab();
    hostNs = await lab.namespace('host');
    const [s, debian] = await Promise.all([startStack(), ensureCloudInitGuest()]);
    t = s.t;
    api = s.api;
    const image = (name: string, file: string) =>
      registerPathImage(t.manager.services.store, { name, kind: 'rootfs', path: file });
    const images = {
      cloud: await image('debian-cloud', debian.rootfs),
      plain: await image('debian-plain', debian.plainRootfs),
    };
    const n = await api.post('/api/v1/networks', { name: 'debian-nat', kind: 'nat', cidr: CIDR });
    expect(n.status, n.text).toBe(201);
    agent = await startAgent(t, 'debian-host', { NQVM_AGENT_NETNS: hostNs });
    await agent.hostId();
    for (const [which, mode] of [
      ['cloud', 'cloud-init'],
      ['plain', 'inject'],
    ] as const) {
      const r = await api.post('/api/v1/vms', {
        name: `debian-${which}`,
        vcpu: 1,
        mem_mib: 512,
        rootfs_image_id: images[which],
        networks: [{ network_id: n.body.id }],
        guest_config: {
          mode,
          hostname: `deb-${which}`,
          username: 'alice',
          password: 'Debian-pw-1',
          ssh_authorized_keys: [publicKey],
        },
      });
      expect(r.status, r.text).toBe(202);
      vms[which] = { id: r.body.vm.id, ip: r.body.vm.networks[0].ip };
    }
  }, 900_000);

  afterAll(async () => {
    const ids = Object.values(vms).map((v) => v.id);
    for (const id of ids) await api?.del(`/api/v1/vms/${id}?force=true`);
    killVmProcesses(ids);
    if (agent) await stopAgent(agent);
    await lab?.cleanup();
    await t?.close();
    if (agent) fs.rmSync(agent.stateDir, { recursive: true, force: true });
    if (work) fs.rmSync(work, { recursive: true, force: true });
  }, 60_000);

  const failIfFailed = async (id: string) => {
    const v = await api.get(`/api/v1/vms/${id}`);
    if (v.body.state === 'failed') throw new Error(`the VM failed: ${v.body.last_error}`);
    return v.body;
  };
  const withConsole = async <T>(id: string, fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (err) {
      const tail = (await api.get(`/api/v1/vms/${id}/console?tail=16384`)).text;
      throw new Error(`${(err as Error).message}; its console:\n${tail}`);
    }
  };
  /** Runs `command` over SSH as alice with the test's key, from the agent's namespace. */
  const ssh = (ip: string, command: string) =>
    runIn(
      hostNs,
      'ssh',
      [
        '-i',
        key,
        '-o',
        'BatchMode=yes',
        '-o',
        'StrictHostKeyChecking=no',
        '-o',
        'UserKnownHostsFile=/dev/null',
        '-o',
        'ConnectTimeout=5',
        '-o',
        'LogLevel=ERROR',
        `alice@${ip}`,
        command,
      ],
      { timeoutMs: 20_000 },
    );
  /** The first successful SSH answer to `command`. */
  const sshWhenUp = (which: 'cloud' | 'plain', command: string) => {
    const { id, ip } = vms[which];
    let last = '';
    return withConsole(id, () =>
      waitFor(
        async () => {
          await failIfFailed(id);
          const r = await ssh(ip, command);
          last = r.stderr.trim();
          return r.code === 0 ? r.stdout : null;
        },
        BOOT_MS,
        () => `SSH to ${ip} never succeeded (last: ${last})`,
      ),
    );
  };

  it(
    'with cloud-init: gets the guest agent from its config drive; exec, readiness, host name, user, the ifupdown default route and SSH work',
    async () => {
      const { id, ip } = vms.cloud;
      const exec = (command: string[]) => api.post(`/api/v1/vms/${id}/exec`, { command, timeout_s: 30 });
      const out = async (command: string[]) => {
        const r = await exec(command);
        expect(r.status, r.text).toBe(200);
        return (r.body.stdout as string).trim();
      };
      const t0 = Date.now();
      // The guest agent answers once cloud-init installed it (late in the first boot).
      await withConsole(id, () =>
        waitFor(
          async () => (await failIfFailed(id)).state === 'running' && (await exec(['true'])).status === 200,
          BOOT_MS,
          () => 'the guest agent of the cloud-init guest never answered',
        ),
      );
      console.log(
        `cloud-init guest: agent answering ${((Date.now() - t0) / 1000).toFixed(1)} s after the create`,
      );

      const vm = await waitFor(
        async () => {
          const v = (await api.get(`/api/v1/vms/${id}`)).body;
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
      expect(await out(['systemctl', 'is-active', 'nqvm-guest-agent.service'])).toBe('active');
      // cloud-init rendered for ifupdown (eni), the renderer that lost the default route.
      const eni = await out(['sh', '-c', 'cat /etc/network/interfaces.d/50-cloud-init']);
      expect(eni).toMatch(new RegExp(`gateway ${GATEWAY.replaceAll('.', '\\.')}`));
      expect(eni).not.toMatch(/route add/);
      const addrs = await out(['ip', '-4', '-o', 'addr', 'show']);
      if (!addrs.includes(`inet ${ip}/24`)) expect.fail(`${addrs}\n${eni}`);
      expect(await out(['ip', 'route', 'show', 'default'])).toMatch(/^default via 10\.96\.0\.1 /);
      expect((await sshWhenUp('cloud', 'hostname')).trim()).toBe('deb-cloud');
    },
    BOOT_MS + 60_000,
  );

  it(
    'without cloud-init, in mode inject: SSH with the injected key works from the host side; address and default route are set',
    async () => {
      const t0 = Date.now();
      const answer = await sshWhenUp(
        'plain',
        'hostname; id -un; test -e /usr/bin/cloud-init && echo has-cloud-init; ip -4 -o addr show; ip route show default',
      );
      console.log(
        `inject guest: SSH answering ${((Date.now() - t0) / 1000).toFixed(1)} s after the first test`,
      );
      const [hostname, user, ...rest] = answer.trim().split('\n');
      expect(hostname).toBe('deb-plain');
      expect(user).toBe('alice');
      const text = rest.join('\n');
      expect(text).not.toContain('has-cloud-init');
      expect(text).toContain(`inet ${vms.plain.ip}/24`);
      expect(text).toMatch(/default via 10\.96\.0\.1 /);
    },
    BOOT_MS + 60_000,
  );
});
