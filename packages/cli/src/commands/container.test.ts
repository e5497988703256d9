/**
 * `nqvm container ...` flags: -p, -e, --entrypoint and --restart parsed as docker takes them,
 * the ContainerCreate body they make (checked against the API's schema), and `run`, `ps` and
 * `logs` through the whole program against a stand-in API that records what it was sent.
 */
import os from 'node:os';
import path from 'node:path';
import { ContainerCreate } from '@nqvm/api/containers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UsageError } from '../client/output';
import {
  defaultName,
  parseEntrypoint,
  parseLogLine,
  parsePublish,
  parseRestart,
  type RunFlags,
  runBody,
} from './container';
import { type FakeApi, runCli, startFakeApi } from './testing';

const flags = (f: Partial<RunFlags> = {}): RunFlags => ({ env: [], publish: [], label: [], ...f });

describe('container flags', () => {
  it('parses -p HOST:CONTAINER[/tcp|udp] and refuses other shapes', () => {
    expect(parsePublish('8080:80')).toEqual({ host_port: 8080, container_port: 80, protocol: 'tcp' });
    expect(parsePublish('5353:53/udp')).toEqual({ host_port: 5353, container_port: 53, protocol: 'udp' });
    expect(parsePublish('1:65535/tcp')).toEqual({ host_port: 1, container_port: 65535, protocol: 'tcp' });
    for (const bad of ['80', '0:80', '8080:70000', '127.0.0.1:8080:80', '8080:80/sctp', 'a:b', '']) {
      expect(() => parsePublish(bad), bad).toThrow(UsageError);
    }
  });

  it('takes --entrypoint as one word or a JSON argv; empty clears it', () => {
    expect(parseEntrypoint('/docker-entrypoint.sh')).toEqual(['/docker-entrypoint.sh']);
    expect(parseEntrypoint('sh -c')).toEqual(['sh -c']);
    expect(parseEntrypoint('["/bin/sh", "-c"]')).toEqual(['/bin/sh', '-c']);
    expect(parseEntrypoint('')).toEqual([]);
    for (const bad of ['[/bin/sh]', '["sh", 1]', '['])
      expect(() => parseEntrypoint(bad), bad).toThrow(UsageError);
  });

  it('maps --restart no to never', () => {
    expect(parseRestart('no')).toBe('never');
    expect(parseRestart('never')).toBe('never');
    expect(parseRestart('on-failure')).toBe('on-failure');
    expect(parseRestart('always')).toBe('always');
    expect(parseRestart(undefined)).toBeUndefined();
    expect(() => parseRestart('unless-stopped')).toThrow(UsageError);
  });

  it('names a container after its image when --name is not given', () => {
    expect(defaultName('docker.io/library/alpine:3.20', 'ab12')).toBe('alpine-ab12');
    expect(defaultName('127.0.0.1:5000/team/app@sha256:0123', 'ab12')).toBe('app-ab12');
    expect(defaultName('nginx', 'ab12')).toBe('nginx-ab12');
    expect(defaultName('___', 'ab12')).toBe('container-ab12');
    expect(ContainerCreate.shape.name.safeParse(defaultName('registry.local/x'.repeat(9))).success).toBe(
      true,
    );
  });

  it('makes a body the API accepts, with -e NAME taken from the environment', () => {
    const body = runBody(
      '127.0.0.1:5000/app:v1',
      ['--serve', '0.0.0.0:80'],
      flags({
        name: 'app',
        env: ['MODE=fast', 'EMPTY=', 'EQ=a=b', 'FROM_SHELL', 'UNSET_HERE'],
        publish: ['8080:80', '5353:53/udp'],
        entrypoint: '["/app","--verbose"]',
        workdir: '/srv',
        user: '1000:1000',
        cpus: '2',
        memory: '512M',
        restart: 'no',
        label: ['tier=web'],
      }),
      { FROM_SHELL: 'hello' },
    );
    expect(body).toEqual({
      name: 'app',
      image: '127.0.0.1:5000/app:v1',
      command: ['/app', '--verbose'],
      args: ['--serve', '0.0.0.0:80'],
      env: { MODE: 'fast', EMPTY: '', EQ: 'a=b', FROM_SHELL: 'hello' },
      working_dir: '/srv',
      user: '1000:1000',
      ports: [
        { host_port: 8080, container_port: 80, protocol: 'tcp' },
        { host_port: 5353, container_port: 53, protocol: 'udp' },
      ],
      vcpu: 2,
      mem_mib: 512,
      restart_policy: 'never',
      labels: { tier: 'web' },
    });
    expect(ContainerCreate.safeParse(body).error).toBeUndefined();
    // Unset flags leave the server's defaults: no command, args, vcpu, memory or policy sent.
    const bare = runBody('alpine', [], flags({ name: 'bare' }), {});
    expect(bare).toMatchObject({ name: 'bare', image: 'alpine', env: {}, ports: [], labels: {} });
    for (const k of ['command', 'args', 'vcpu', 'mem_mib', 'restart_policy']) {
      expect(bare[k as keyof typeof bare], k).toBeUndefined();
    }
    expect(ContainerCreate.safeParse(bare).success).toBe(true);
  });

  it('refuses bad -e names, --cpus and --memory', () => {
    expect(() => runBody('a', [], flags({ env: ['1X=y'] }), {})).toThrow(/-e must be NAME=value/);
    expect(() => runBody('a', [], flags({ env: ['=y'] }), {})).toThrow(UsageError);
    expect(() => runBody('a', [], flags({ cpus: '1.5' }), {})).toThrow(/--cpus/);
    expect(() => runBody('a', [], flags({ memory: 'lots' }), {})).toThrow(/--memory must be a size/);
  });

  it('splits log lines into time, stream and text', () => {
    expect(parseLogLine('2024-05-01T10:00:00.123Z stdout hello world')).toEqual({
      at: '2024-05-01T10:00:00.123Z',
      stream: 'stdout',
      text: 'hello world',
    });
    expect(parseLogLine('2024-05-01T10:00:00Z stderr ')).toMatchObject({ stream: 'stderr', text: '' });
    expect(parseLogLine('not a log line')).toEqual({ at: null, stream: 'stdout', text: 'not a log line' });
  });
});

describe.sequential('nqvm container against a stand-in API', () => {
  let api: FakeApi;
  const id = '0b1f2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d';
  const netId = '11111111-2222-4333-8444-555555555555';
  const container = (over: Record<string, unknown> = {}) => ({
    id,
    name: 'web',
    image: 'nginx',
    status: 'running',
    ports: [{ host_port: 8080, container_port: 80, protocol: 'tcp' }],
    ip: '10.0.0.5',
    exit_code: null,
    created_at: new Date().toISOString(),
    env: {},
    labels: {},
    ...over,
  });

  beforeAll(async () => {
    process.env.NQVM_CONFIG = path.join(os.tmpdir(), `nqvm-cli-container-test-${process.pid}.json`);
    api = await startFakeApi((r) => {
      if (r.method === 'GET' && r.path === '/api/v1/networks') {
        return { body: { items: [{ id: netId, name: 'lab' }], next: null } };
      }
      if (r.method === 'POST' && r.path === '/api/v1/containers') {
        return {
          status: 202,
          body: { container: container(r.body as Record<string, unknown>), operation: { id: 'op' } },
        };
      }
      if (r.method === 'GET' && r.path === '/api/v1/containers') {
        return {
          body: {
            items: [
              container(),
              container({ id: 'x', name: 'done', status: 'exited', exit_code: 3, ports: [] }),
            ],
            next: null,
          },
        };
      }
      if (r.method === 'GET' && r.path === `/api/v1/containers/${id}/logs`) {
        return {
          text: '2024-05-01T10:00:00Z stdout out line\n2024-05-01T10:00:01Z stderr err line\n2024-05-01T10:00:02Z stdout last',
        };
      }
      return undefined;
    });
  });
  afterAll(async () => {
    await api?.close();
    delete process.env.NQVM_CONFIG;
  });

  it('sends the flags of `run` as ContainerCreate, the password only from stdin', async () => {
    const r = await runCli(api.url, [
      'container',
      'run',
      '--no-wait',
      '--name',
      'web',
      '-e',
      'A=1',
      '-e',
      'B=two words',
      '-p',
      '8080:80',
      '-p',
      '53:53/udp',
      '--entrypoint',
      '["/bin/sh","-c"]',
      '--restart',
      'no',
      '--cpus',
      '2',
      '--memory',
      '1G',
      '--network',
      'lab',
      'nginx:1.27',
      '--',
      'echo $A',
      '-x',
    ]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toBe(`${id}\n`);
    const sent = api.requests.find((q) => q.method === 'POST')?.body;
    expect(sent).toEqual({
      name: 'web',
      image: 'nginx:1.27',
      command: ['/bin/sh', '-c'],
      args: ['echo $A', '-x'],
      env: { A: '1', B: 'two words' },
      ports: [
        { host_port: 8080, container_port: 80, protocol: 'tcp' },
        { host_port: 53, container_port: 53, protocol: 'udp' },
      ],
      vcpu: 2,
      mem_mib: 1024,
      restart_policy: 'never',
      network_id: netId,
      labels: {},
    });
    expect(ContainerCreate.safeParse(sent).error).toBeUndefined();
  });

  it('refuses a registry user without a password on stdin, and bad flags, with exit 2', async () => {
    const before = api.requests.length;
    const user = await runCli(api.url, ['container', 'run', '--registry-user', 'ci', 'nginx']);
    expect(user.code).toBe(2);
    expect(user.err).toMatch(/--registry-user needs --registry-password-stdin/);
    const port = await runCli(api.url, ['container', 'run', '-p', '80', 'nginx']);
    expect(port.code).toBe(2);
    expect(port.err).toMatch(/-p is HOST_PORT:CONTAINER_PORT/);
    expect(api.requests.slice(before).some((q) => q.method === 'POST')).toBe(false);
  });

  it('lists running containers unless -a, in the columns of docker ps', async () => {
    const r = await runCli(api.url, ['container', 'ps']);
    expect(r.code, r.err).toBe(0);
    const lines = r.out.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^NAME\s+STATUS\s+IMAGE\s+PORTS\s+IP\s+EXIT\s+CREATED$/);
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatch(/^web\s+running\s+nginx\s+8080->80\/tcp\s+10\.0\.0\.5\s+-\s+\d+s$/);
    const all = await runCli(api.url, ['container', 'ps', '-a', '-o', 'json']);
    expect(JSON.parse(all.out).map((c: { name: string }) => c.name)).toEqual(['web', 'done']);
  });

  it('prints log text by stream, with times only with -t', async () => {
    const r = await runCli(api.url, ['container', 'logs', id, '--tail', '5']);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toBe('out line\nlast\n');
    expect(r.err).toBe('err line\n');
    const q = api.requests.at(-1)?.query;
    expect(q?.get('tail')).toBe('5');
    expect(q?.get('follow')).toBeNull();
    const t = await runCli(api.url, ['container', 'logs', id, '-t']);
    expect(t.out).toBe('2024-05-01T10:00:00Z out line\n2024-05-01T10:00:02Z last\n');
  });
});
