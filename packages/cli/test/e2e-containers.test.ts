/**
 * The built `nqvm` CLI's `container` commands against a real manager and agent booting QEMU
 * microVMs: an OCI image (busybox, built here) pulled from a real registry with basic auth (the
 * password only on stdin), run in the foreground (its output, then its exit code) and detached
 * as a server, listed, exec'd into, stopped and removed.
 */
import { randomBytes } from 'node:crypto';
import {
  basicAuthorization,
  buildImageFromEntries,
  busyboxLayer,
  type OciRegistry,
  pushImage,
  startOciRegistry,
} from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestManager } from '../../manager/test/harness';
import { type AgentProcess, cli, qemuPids, startAgent, startStack, stopAgent, waitFor } from './stack';

const USER = 'puller';
const PASSWORD = `registry-secret-${randomBytes(6).toString('hex')}`;

/** A busybox image whose default process prints its arguments and environment, then exits 3. */
async function printerImage() {
  return buildImageFromEntries({
    layers: [
      {
        entries: [
          ...(await busyboxLayer()),
          { name: 'www/', type: 'directory' },
          { name: 'www/index.html', type: 'file', content: 'served by the container\n' },
        ],
        compression: 'gzip',
      },
    ],
    config: {
      Entrypoint: ['/bin/sh', '-c', 'echo "args: $*"; env | sort; echo "to stderr" >&2; exit 3', 'printer'],
      Cmd: ['from-image-cmd'],
      Env: ['PATH=/bin:/sbin:/usr/bin:/usr/sbin', 'FROM_IMAGE=yes'],
    },
  });
}

describe('containers through the CLI', () => {
  let t: TestManager;
  let agent: AgentProcess;
  let registry: OciRegistry;
  let nqvm: ReturnType<typeof cli>;
  let image: string;
  const credentials = ['--registry-user', USER, '--registry-password-stdin'];

  beforeAll(async () => {
    registry = await startOciRegistry({ basicAuth: { [USER]: PASSWORD } });
    await pushImage(
      { url: registry.url, repository: 'printer', authorization: basicAuthorization(USER, PASSWORD) },
      'v1',
      await printerImage(),
    );
    image = `${registry.host}/printer:v1`;
    const s = await startStack({}, { containers: true });
    t = s.t;
    nqvm = cli(t);
    agent = await startAgent(t, 'ctr-host');
    await agent.hostId();
  }, 300_000);

  afterAll(async () => {
    const ids = (await t?.manager.services.store.db.selectFrom('vms').select('id').execute())?.map(
      (v) => v.id,
    );
    for (const name of ['printer', 'web']) await nqvm?.(['container', 'rm', '--force', name]);
    await waitFor(
      async () => (ids ?? []).every((id) => qemuPids(id).length === 0),
      30_000,
      () => 'container VMs left running',
    ).catch(() => {});
    if (agent) await stopAgent(agent);
    await t?.close();
    await registry?.stop();
  }, 90_000);

  it('runs an image in the foreground: its output, then its exit code', async () => {
    const run = await nqvm(
      [
        'container',
        'run',
        '--name',
        'printer',
        '-e',
        'GREETING=hello',
        ...credentials,
        image,
        '--',
        'one',
        'two words',
      ],
      { input: `${PASSWORD}\n` },
    );
    expect(run.code, `${run.stderr}\n${agent.output()}`).toBe(3);
    expect(run.stdout).toContain('args: one two words');
    expect(run.stdout).toMatch(/^GREETING=hello$/m);
    expect(run.stdout).toMatch(/^FROM_IMAGE=yes$/m);
    expect(run.stdout).not.toContain('from-image-cmd');
    expect(run.stderr).toContain('to stderr');

    const logs = await nqvm(['container', 'logs', 'printer']);
    expect(logs.code, logs.stderr).toBe(0);
    expect(logs.stdout).toMatch(/^args: one two words$/m);
    expect(logs.stdout).toMatch(/^GREETING=hello$/m);
    expect(logs.stderr).toMatch(/^to stderr$/m);
    const stamped = await nqvm(['container', 'logs', '-t', '--tail', '1', 'printer']);
    expect(stamped.stderr.trim()).toMatch(
      /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d) to stderr$/,
    );

    const shown = await nqvm(['container', 'inspect', 'printer', '-o', 'json']);
    expect(JSON.parse(shown.stdout)).toMatchObject({ name: 'printer', status: 'exited', exit_code: 3 });
    expect(shown.stdout).not.toContain(PASSWORD);
  }, 400_000);

  it('runs a server detached, lists it, execs into it, stops and removes it', async () => {
    const run = await nqvm(
      [
        'container',
        'run',
        '-d',
        '--name',
        'web',
        '--entrypoint',
        '["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]',
        ...credentials,
        image,
      ],
      { input: `${PASSWORD}\n` },
    );
    expect(run.code, `${run.stderr}\n${agent.output()}`).toBe(0);
    expect(run.stdout).toMatch(/^[0-9a-f-]{36}\n$/);

    const ps = await nqvm(['container', 'ps']);
    expect(ps.stdout).toMatch(/^NAME\s+STATUS\s+IMAGE\s+PORTS\s+IP\s+EXIT\s+CREATED$/m);
    expect(ps.stdout).toMatch(/^web\s+running\s+/m);
    expect(ps.stdout).not.toMatch(/^printer\s/m);
    const all = await nqvm(['container', 'ps', '-a', '-o', 'json']);
    expect(
      JSON.parse(all.stdout)
        .map((c: { name: string }) => c.name)
        .sort(),
    ).toEqual(['printer', 'web']);

    const ls = await waitFor(
      async () => {
        const r = await nqvm(['container', 'exec', 'web', '--', 'ls', '/']);
        return r.code === 0 ? r : null;
      },
      60_000,
      () => 'exec never worked in web',
    );
    expect(ls.stdout.split('\n')).toEqual(expect.arrayContaining(['bin', 'www']));
    const served = await nqvm(['container', 'exec', 'web', '--', 'wget', '-qO-', 'http://127.0.0.1:8080/']);
    expect(served, served.stderr).toMatchObject({ code: 0, stdout: 'served by the container\n' });
    expect((await nqvm(['container', 'exec', 'web', '--', 'sh', '-c', 'exit 4'])).code).toBe(4);
    const stats = await nqvm(['container', 'stats', 'web', '-o', 'json']);
    expect(stats.code, stats.stderr).toBe(0);
    expect(JSON.parse(stats.stdout).status).toBe('running');

    const stop = await nqvm(['container', 'stop', 'web', '--time', '5', '-o', 'json']);
    expect(stop.code, stop.stderr).toBe(0);
    expect(JSON.parse(stop.stdout).status).toBe('exited');
    for (const name of ['web', 'printer']) {
      const rm = await nqvm(['container', 'rm', name]);
      expect(rm.code, rm.stderr).toBe(0);
    }
    const left = await nqvm(['container', 'ps', '-a', '-o', 'json']);
    expect(JSON.parse(left.stdout)).toEqual([]);
  }, 400_000);
});
