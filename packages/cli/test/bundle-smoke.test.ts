/**
 * What a new user runs, through the built bundle: `scripts/quickstart.sh` exactly as the README
 * shows it (packages, build, `nqvm up` on the embedded SQLite store), then the CLI as the
 * README drives it: login, an OCI image imported from a local registry, `container run`,
 * `vm create` on the defaults and in the reference system's kernel + rootfs form, `vm exec`; a second `nqvm up` beside it says which port is taken
 * and how to pick another. Tests elsewhere run the manager from its sources, where
 * npm resolves each workspace's own dependencies; only this one sees what the bundle loads.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  buildImageFromEntries,
  busyboxLayer,
  freePort,
  type OciRegistry,
  pushImage,
  qemuPidsOf,
  startOciRegistry,
} from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliRun, runNqvm, waitFor } from './stack';

const REPO = path.resolve(__dirname, '..', '..', '..');
const BUNDLE = path.join(REPO, 'packages', 'cli', 'dist', 'nqvm.mjs');
const PASSWORD = 'smoke-test-admin-pw';

describe('the built nqvm as the README starts it', () => {
  let home: string;
  let registry: OciRegistry;
  let up: ChildProcess;
  let upOutput = '';
  let url: string;
  let managerPort: number;
  let agentPort: number;

  const nqvm = (args: string[], input = ''): Promise<CliRun> =>
    runNqvm(args, { NQVM_CONFIG: path.join(home, 'config.json') }, input);
  const ok = async (args: string[], input = ''): Promise<string> => {
    const r = await nqvm(args, input);
    expect(r.code, `nqvm ${args.join(' ')}\n${r.stdout}\n${r.stderr}\n--- nqvm up:\n${upOutput}`).toBe(0);
    return r.stdout;
  };

  beforeAll(async () => {
    expect(fs.existsSync(BUNDLE), 'npm run build makes the bundle this test runs').toBe(true);
    home = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-smoke-'));
    registry = await startOciRegistry();
    await pushImage(
      { url: registry.url, repository: 'hello' },
      'v1',
      await buildImageFromEntries({
        layers: [{ entries: await busyboxLayer(), compression: 'gzip' }],
        config: {
          Entrypoint: ['/bin/sh', '-c', 'echo "hello from $(uname -s) in a container"; exit 7'],
          Env: ['PATH=/bin:/sbin:/usr/bin:/usr/sbin'],
        },
      }),
    );
    managerPort = await freePort();
    agentPort = await freePort();
    url = `http://127.0.0.1:${managerPort}`;
    up = spawn('bash', [path.join(REPO, 'scripts', 'quickstart.sh')], {
      cwd: home,
      env: {
        ...process.env,
        NQVM_DATA_DIR: path.join(home, 'data'),
        MANAGER_BIND: `127.0.0.1:${managerPort}`,
        AGENT_BIND: `127.0.0.1:${agentPort}`,
        NQVM_ADMIN_PASSWORD: PASSWORD,
        NQVM_HEARTBEAT_INTERVAL_S: '1',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    up.stdout?.on('data', (d) => (upOutput += d));
    up.stderr?.on('data', (d) => (upOutput += d));
    await waitFor(
      async () => upOutput.includes('nqvm is up:') || up.exitCode !== null,
      600_000,
      () => `nqvm up did not come up:\n${upOutput}`,
    );
    expect(up.exitCode, upOutput).toBeNull();
  }, 660_000);

  afterAll(async () => {
    if (home) {
      await nqvm(['container', 'rm', '--force', 'hello']).catch(() => undefined);
      await nqvm(['vm', 'delete', '--force', 'smoke']).catch(() => undefined);
      await nqvm(['vm', 'delete', '--force', 'plain']).catch(() => undefined);
    }
    if (up && up.exitCode === null) {
      const done = new Promise((r) => up.once('exit', r));
      process.kill(-(up.pid as number), 'SIGTERM');
      await done;
    }
    await registry?.stop();
  }, 120_000);

  it('logs in, runs an OCI image as a container, creates a VM on the defaults and execs in it', async () => {
    await ok(['login', url, '-u', 'admin', '--password-stdin'], `${PASSWORD}\n`);

    const ref = `${registry.host}/hello:v1`;
    await ok(['image', 'import', ref, '--name', 'hello-rootfs']);
    const image = JSON.parse(await ok(['image', 'show', 'hello-rootfs', '-o', 'json']));
    expect(image).toMatchObject({ kind: 'rootfs', status: 'ready' });

    const run = await nqvm(['container', 'run', '--name', 'hello', ref]);
    expect(run.code, `${run.stdout}\n${run.stderr}\n${upOutput}`).toBe(7);
    expect(run.stdout).toContain('hello from Linux in a container');

    // `--wait ready` returns once the guest is up (its guest agent answered), not when the VMM runs.
    await ok(['vm', 'create', 'smoke', '--wait', 'ready']);
    const vm = JSON.parse(await ok(['vm', 'show', 'smoke', '-o', 'json']));
    expect(vm.state).toBe('running');
    expect(vm.guest_ready_signal, JSON.stringify(vm)).toBe('guest-agent');
    expect(Date.parse(vm.guest_ready_at)).toBeGreaterThan(Date.parse(vm.created_at));
    // On the defaults a VM gets a NIC on the default network, with its address in the guest.
    const addr = await ok(['vm', 'exec', 'smoke', '--', 'ip', '-4', 'addr', 'show', 'eth0']);
    const ip = vm.networks?.[0]?.ip;
    expect(ip, JSON.stringify(vm)).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    expect(addr).toContain(`inet ${ip}/`);

    // The reference system's form, a kernel and a root disk and no initrd, boots too: the
    // built-in kernel's drivers are modules, its companion initrd carries them.
    await ok([
      'vm',
      'create',
      'plain',
      '--kernel',
      'builtin-kernel',
      '--rootfs',
      'builtin-rootfs',
      '--no-network',
    ]);
    const plain = JSON.parse(await ok(['vm', 'show', 'plain', '-o', 'json']));
    expect(plain, JSON.stringify(plain)).toMatchObject({ state: 'running', last_error: null });
    expect(await ok(['vm', 'exec', 'plain', '--', 'cat', '/proc/mounts'])).toMatch(/^\/dev\/vda \/ ext4/m);

    await ok(['vm', 'delete', '--force', 'plain']);
    await ok(['vm', 'delete', '--force', 'smoke']);
    await ok(['container', 'rm', '--force', 'hello']);
    await waitFor(
      async () => qemuPidsOf(vm.id).length === 0,
      30_000,
      () => 'the VM kept running after its delete',
    );
  }, 600_000);

  it('a second nqvm up on the same ports names the taken one and the setting that picks another', async () => {
    const second = (env: Record<string, string>) =>
      runNqvm(['up', '--no-builtin-images', '--no-default-network'], {
        NQVM_DATA_DIR: fs.mkdtempSync(path.join(home, 'second-')),
        NQVM_ADMIN_PASSWORD: PASSWORD,
        ...env,
      });
    const agentTaken = await second({
      MANAGER_BIND: `127.0.0.1:${await freePort()}`,
      AGENT_BIND: `127.0.0.1:${agentPort}`,
    });
    expect(agentTaken.code, agentTaken.stdout).toBe(1);
    expect(agentTaken.stderr).toContain(
      `nqvm: the agent API cannot listen on 127.0.0.1:${agentPort}: port ${agentPort} is taken`,
    );
    expect(agentTaken.stderr).toContain('pick another with AGENT_BIND=HOST:PORT (nqvm up --agent-bind');
    const managerTaken = await second({
      MANAGER_BIND: `127.0.0.1:${managerPort}`,
      AGENT_BIND: `127.0.0.1:${await freePort()}`,
    });
    expect(managerTaken.code, managerTaken.stdout).toBe(1);
    expect(managerTaken.stderr).toContain(
      `nqvm: the manager cannot listen on 127.0.0.1:${managerPort}: port ${managerPort} is taken`,
    );
    expect(managerTaken.stderr).toContain('pick another with MANAGER_BIND=HOST:PORT');
  }, 120_000);
});
