/**
 * The agent with the real Firecracker driver, run against the Firecracker simulator: VMM
 * choice, the raw disk copy grown to size, console, adoption and delete.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import {
  journalRequests,
  readJournal,
  writeSimulatorBinary,
  writeTinyElfKernel,
} from '@nqvm/testkit/firecracker-sim/index';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadAgentConfig } from '../config';
import { FirecrackerDriver } from '../drivers/firecracker/driver';
import { readProcStartTime } from '../host/proc';
import { type Agent, createAgent } from './agent';
import { FakeDriver } from './fake-driver';
import {
  imageRef,
  managerKeys,
  reportOf,
  SignedAgentClient,
  silentLogger,
  tempDir,
  vmCommand,
  waitForState,
} from './testing';

function blockCount(ext4: string): number {
  const out = execFileSync('dumpe2fs', ['-h', ext4], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  return Number(/^Block count:\s+(\d+)/m.exec(out)?.[1]);
}

describe('agent with the Firecracker driver (simulator)', () => {
  const keys = managerKeys();
  const dir = tempDir();
  const stateDir = path.join(dir, 'state');
  const id = randomUUID();
  const vmDir = path.join(stateDir, 'vms', id);
  let bin: string;
  let agent: Agent;
  let client: SignedAgentClient;
  let kernel: string;
  let rootfs: string;
  const journal = path.join(dir, 'journal');

  const start = async () => {
    // A new driver per agent, as a new agent process has: the old one may still watch its VMs.
    const firecracker = new FirecrackerDriver({
      firecrackerBin: bin,
      probeKvm: async () => true,
      logger: silentLogger,
    });
    agent = await createAgent(
      loadAgentConfig({ AGENT_BIND: '127.0.0.1:0', FC_RUN_DIR: stateDir, NQVM_AGENT_NAME: 'fc-sim' }),
      // QEMU is there too: Firecracker must win because it has (here: claims) KVM.
      {
        drivers: [new FakeDriver('qemu'), firecracker],
        managerPublicKey: keys.publicKeyPem,
        logger: silentLogger,
      },
    );
    client = new SignedAgentClient(agent.url, keys.privateKey);
  };

  beforeAll(async () => {
    bin = await writeSimulatorBinary(path.join(dir, 'bin'), '1.13.1', { journal });
    kernel = await writeTinyElfKernel(path.join(dir, 'vmlinux'));
    rootfs = path.join(dir, 'rootfs.ext4');
    execFileSync('mkfs.ext4', ['-q', '-F', rootfs, '16M'], { stdio: 'ignore' });
    await start();
  });

  afterAll(async () => {
    await agent?.close();
    const pid = reportOf(agent, id)?.pid;
    if (pid) process.kill(pid, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('boots under Firecracker on a sparse copy of the image, grown with its file system', async () => {
    const images = { kernel: imageRef(kernel), rootfs: imageRef(rootfs) };
    await client.put(id, vmCommand(1, 'running', images, { spec: { disk_size_mib: 32 } }));
    const running = await waitForState(agent, id, 'running', 20_000);
    expect(running).toMatchObject({ vmm: 'firecracker', error: null });
    const disk = path.join(vmDir, 'root.raw');
    expect(statSync(disk).size).toBe(32 * 1024 * 1024);
    expect(blockCount(disk) * 1024).toBeGreaterThan(16 * 1024 * 1024);
    expect(statSync(rootfs).size).toBe(16 * 1024 * 1024);
    expect(JSON.parse(readFileSync(path.join(vmDir, 'run.json'), 'utf8'))).toMatchObject({
      kind: 'firecracker',
      pid: running.pid,
    });
    const tail = await client.call('GET', `/v1/vms/${id}/console?tail=4096`);
    expect(tail.status).toBe(200);
    expect(tail.headers.get('content-type')).toBe('application/octet-stream');
  }, 30_000);

  it('adopts the Firecracker VMM after an agent restart', async () => {
    const before = reportOf(agent, id)!;
    await agent.close();
    expect(await readProcStartTime(before.pid!)).not.toBeNull();
    await start();
    expect(reportOf(agent, id)).toMatchObject({ state: 'running', pid: before.pid, vmm: 'firecracker' });
  }, 30_000);

  it('boots a VM with a volume: its disk reaches Firecracker as vol_<hex>, which Firecracker takes', async () => {
    const withVolume = randomUUID();
    const volume = {
      id: randomUUID(),
      name: 'data',
      size_mib: 8,
      filesystem: 'none' as const,
      read_only: false,
    };
    const images = { kernel: imageRef(kernel), rootfs: imageRef(rootfs) };
    await client.put(withVolume, vmCommand(1, 'running', images, { spec: { volumes: [volume] } }));
    const running = await waitForState(agent, withVolume, 'running', 20_000);
    const drives = journalRequests(await readJournal(journal), running.pid!).filter((r) =>
      r.path.startsWith('/drives/'),
    );
    expect(drives.map((r) => [r.path, r.status])).toEqual([
      ['/drives/root', 204],
      [`/drives/vol_${volume.id.slice(0, 8)}`, 204],
    ]);
    await client.del(withVolume);
    await waitForState(agent, withVolume, 'deleted', 20_000);
  }, 30_000);

  it('deletes it: no process, no folder', async () => {
    const { pid } = reportOf(agent, id)!;
    await client.del(id);
    await waitForState(agent, id, 'deleted', 20_000);
    expect(existsSync(vmDir)).toBe(false);
    expect(await readProcStartTime(pid!)).toBeNull();
  }, 30_000);
});

describe('agent with a Firecracker that dies during boot (simulator)', () => {
  const keys = managerKeys();
  const dir = tempDir();
  let agent: Agent;

  afterAll(async () => {
    await agent?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('fails the VM with the request that broke and the VMM’s last output in its error', async () => {
    const bin = await writeSimulatorBinary(path.join(dir, 'bin'), '1.13.1', {
      panicOn: {
        request: 'ACTION InstanceStart',
        message: 'Cannot create the KVM object: Permission denied',
      },
    });
    const kernel = await writeTinyElfKernel(path.join(dir, 'vmlinux'));
    const rootfs = path.join(dir, 'rootfs.ext4');
    execFileSync('mkfs.ext4', ['-q', '-F', rootfs, '16M'], { stdio: 'ignore' });
    agent = await createAgent(
      loadAgentConfig({
        AGENT_BIND: '127.0.0.1:0',
        FC_RUN_DIR: path.join(dir, 'state'),
        NQVM_AGENT_NAME: 'fc-dies',
      }),
      {
        drivers: [
          new FirecrackerDriver({ firecrackerBin: bin, probeKvm: async () => true, logger: silentLogger }),
        ],
        managerPublicKey: keys.publicKeyPem,
        logger: silentLogger,
      },
    );
    const client = new SignedAgentClient(agent.url, keys.privateKey);
    const id = randomUUID();
    await client.put(id, vmCommand(1, 'running', { kernel: imageRef(kernel), rootfs: imageRef(rootfs) }));
    const failed = await waitForState(agent, id, 'failed', 20_000);
    expect(failed.error).toMatch(
      /boot step "instance-start" failed: Firecracker API PUT \/actions: socket hang up; Firecracker was killed by SIGABRT/,
    );
    expect(failed.error).toContain('Cannot create the KVM object: Permission denied');
  }, 30_000);
});
