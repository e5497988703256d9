/**
 * Container VMs through the agent's API with real QEMU guests: nqvm's container init boots a
 * busybox image as the root, runs the given argv with its env, working dir and user, its output
 * becomes timestamped log lines, its exit code is reported and the VM stops; exec runs in a
 * running container; a graceful stop reaches the process as SIGTERM; on-failure restarts a
 * crashing container; output made while the agent is away arrives when it is back.
 */
import { randomUUID } from 'node:crypto';
import { rmSync, statSync } from 'node:fs';
import path from 'node:path';
import type { AgentContainerSpec, AgentVmCommand, AgentVmReport } from '@nqvm/api';
import {
  type ContainerInit,
  ensureContainerInit,
  qemuPidsOf as qemuPids,
  writeBusyboxRootfs,
} from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadAgentConfig } from '../config';
import { type Agent, createAgent } from './agent';
import {
  imageRef,
  managerKeys,
  SignedAgentClient,
  silentLogger,
  tempDir,
  vmCommand,
  waitFor,
  waitForState,
} from './testing';

const BOOT_MS = 90_000;

describe('container VMs (agent, QEMU)', () => {
  const keys = managerKeys();
  const dir = tempDir();
  const stateDir = path.join(dir, 'state');
  const rootfs = path.join(dir, 'image.ext4');
  let init: ContainerInit;
  let agent: Agent;
  let client: SignedAgentClient;
  const started: string[] = [];
  const figures: Record<string, string> = {};

  const start = async () => {
    agent = await createAgent(
      loadAgentConfig({ AGENT_BIND: '127.0.0.1:0', FC_RUN_DIR: stateDir, NQVM_AGENT_NAME: 'ctr-test' }),
      { managerPublicKey: keys.publicKeyPem, logger: silentLogger },
    );
    client = new SignedAgentClient(agent.url, keys.privateKey);
  };
  const command = (
    generation: number,
    container: Partial<AgentContainerSpec> & { argv: string[] },
    over: Partial<AgentVmCommand> & { restart?: 'never' | 'on-failure' | 'always' } = {},
  ): AgentVmCommand =>
    vmCommand(
      generation,
      over.desired ?? 'running',
      {
        kernel: imageRef(init.kernel),
        initrd: imageRef(init.initrd),
        rootfs: { ...imageRef(rootfs), size_bytes: statSync(rootfs).size },
      },
      {
        ...over,
        spec: {
          restart_policy: over.restart ?? 'never',
          container: { env: ['PATH=/bin:/sbin:/usr/bin'], working_dir: null, user: null, ...container },
        },
      },
    );
  const report = (id: string): AgentVmReport | undefined => agent.vms().find((v) => v.id === id);
  const logs = async (id: string, query = '') => {
    const r = await client.call('GET', `/v1/vms/${id}/logs${query}`);
    expect(r.status, r.bytes.toString()).toBe(200);
    return r.bytes.toString('utf8');
  };
  const run = async (container: Partial<AgentContainerSpec> & { argv: string[] }, over = {}) => {
    const id = randomUUID();
    started.push(id);
    await client.put(id, command(1, container, over));
    return id;
  };

  beforeAll(async () => {
    init = await ensureContainerInit();
    await writeBusyboxRootfs(rootfs, {
      files: [{ path: 'srv/hello.txt', mode: 0o644, text: 'hello from the image\n' }],
    });
    await start();
  }, 600_000);

  afterAll(async () => {
    await agent?.close();
    for (const id of started) for (const pid of qemuPids(id)) process.kill(pid, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    console.info('container figures:', figures);
  });

  it(
    'runs the argv with its env, working dir and user; logs it; reports the exit; the VM stops',
    async () => {
      const t0 = performance.now();
      const id = await run({
        argv: [
          '/bin/sh',
          '-c',
          'echo "A=$A args=$* pwd=$(pwd) uid=$(id -u)"; echo oops >&2; exit 3',
          'sh',
          'x',
          'y z',
        ],
        env: ['PATH=/bin:/usr/bin', 'A=1'],
        working_dir: '/srv',
        user: 'app',
      });
      await waitFor('the first log line', async () => (await logs(id)).includes('A=1'), BOOT_MS);
      figures.requestToFirstLogLineMs = (performance.now() - t0).toFixed(0);
      const stopped = await waitForState(agent, id, 'stopped', BOOT_MS);
      expect(stopped.container).toMatchObject({
        running: false,
        exit: { kind: 'exited', value: 3 },
        restarts: 0,
      });
      expect(stopped.container?.started_at).toBeTruthy();
      const text = await logs(id);
      expect(text).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z stdout A=1 args=x y z pwd=\/srv uid=1000$/m);
      expect(text).toMatch(/^\S+ stderr oops$/m);
      expect(await logs(id, '?timestamps=0&stream=stderr')).toBe('oops\n');
      expect((await logs(id, '?tail=1&timestamps=0')).split('\n')).toHaveLength(2);
    },
    BOOT_MS + 30_000,
  );

  it(
    'serves exec in a running container, follows its logs, and stops it with SIGTERM',
    async () => {
      const id = await run({
        argv: ['/bin/sh', '-c', 'trap "echo got-term; exit 0" TERM; while :; do echo tick; sleep 0.3; done'],
      });
      await waitFor('ticks', async () => (await logs(id)).includes('tick'), BOOT_MS);
      const ls = await client.call('POST', `/v1/vms/${id}/exec`, { argv: ['ls', '/srv'], timeout_s: 10 });
      expect(ls.status, ls.bytes.toString()).toBe(200);
      expect(Buffer.from(ls.json.stdout_b64, 'base64').toString()).toBe('hello.txt\n');
      const stats = await client.call('GET', `/v1/vms/${id}/stats`);
      expect(stats.json.host.rss_bytes).toBeGreaterThan(0);
      expect(stats.json.guest.processes).toBeGreaterThan(0);

      // A follower gets new lines, and its response ends when the container stops.
      const follow = fetchFollow(client, `/v1/vms/${id}/logs?follow=1&tail=0&timestamps=0`);
      await waitFor('followed ticks', () => follow.text().includes('tick\n'), 20_000);
      const t0 = performance.now();
      await client.put(
        id,
        command(2, { argv: ['unused'] }, { desired: 'stopped', stop: { force: false, timeout_s: 10 } }),
      );
      const stopped = await waitForState(agent, id, 'stopped', 30_000);
      figures.gracefulStopMs = (performance.now() - t0).toFixed(0);
      expect(stopped.container?.exit).toEqual({ kind: 'exited', value: 0 });
      expect(await logs(id)).toContain('got-term');
      await waitFor('the follow to end', () => follow.ended(), 20_000);
    },
    BOOT_MS + 60_000,
  );

  it(
    'restarts a crashing container with on-failure, counting the restarts',
    async () => {
      const id = await run({ argv: ['/bin/sh', '-c', 'echo crash; exit 1'] }, { restart: 'on-failure' });
      await waitFor('two restarts', async () => (report(id)?.container?.restarts ?? 0) >= 2, 3 * BOOT_MS);
      expect((await logs(id)).split('crash').length - 1).toBeGreaterThanOrEqual(2);
      await client.put(
        id,
        command(2, { argv: ['unused'] }, { desired: 'stopped', stop: { force: true, timeout_s: 5 } }),
      );
      await waitForState(agent, id, 'stopped', 30_000);
    },
    4 * BOOT_MS,
  );

  it(
    'reports a process that cannot start, and keeps output made while the agent was away',
    async () => {
      const bad = await run({ argv: ['/no/such/program'] });
      const ended = await waitForState(agent, bad, 'stopped', BOOT_MS);
      expect(ended.container?.exit?.kind).toBe('unstartable');
      expect(await logs(bad)).toMatch(/nqvm .*no\/such\/program/);

      const id = await run({
        argv: ['/bin/sh', '-c', 'i=0; while :; do i=$((i+1)); echo line-$i; sleep 0.2; done'],
      });
      await waitFor('output', async () => (await logs(id)).includes('line-3'), BOOT_MS);
      await agent.close();
      await new Promise((r) => setTimeout(r, 2_000));
      await start();
      await waitFor(
        'lines made while the agent was away',
        async () => {
          const numbers = [...(await logs(id, '?timestamps=0')).matchAll(/^line-(\d+)$/gm)].map((m) =>
            Number(m[1]),
          );
          // No gap: every line from 1 to the last one is there.
          return numbers.length > 15 && numbers.every((n, i) => n === i + 1);
        },
        30_000,
      );
    },
    2 * BOOT_MS + 60_000,
  );
});

/** A streaming GET whose body is collected as it comes. */
function fetchFollow(client: SignedAgentClient, pathAndQuery: string) {
  let body = '';
  let done = false;
  void client.stream(pathAndQuery, (chunk) => (body += chunk)).finally(() => (done = true));
  return { text: () => body, ended: () => done };
}
