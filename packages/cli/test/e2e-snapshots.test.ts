/**
 * The built `nqvm` CLI's `vm exec` and `snapshot` commands against a real manager and agent
 * booting QEMU guests that run nqvm's guest agent: exit codes and stdin pass through exec (and
 * a terminal through `exec -it`), a snapshot restores a changed file in place, a clone of it runs
 * with the snapshot's disk and its own, and a Diff on QEMU is refused.
 */
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestManager } from '../../manager/test/harness';
import { type AgentProcess, cli, NQVM, qemuPids, startAgent, startStack, stopAgent, waitFor } from './stack';

describe('vm exec and snapshots through the CLI', () => {
  let t: TestManager;
  let agent: AgentProcess;
  let nqvm: ReturnType<typeof cli>;
  const vms: string[] = [];

  beforeAll(async () => {
    const s = await startStack();
    t = s.t;
    nqvm = cli(t);
    agent = await startAgent(t, 'snap-host');
    await agent.hostId();
  }, 120_000);

  afterAll(async () => {
    for (const name of vms) await nqvm(['vm', 'delete', name, '--force']);
    const ids = (await t.manager.services.store.db.selectFrom('vms').select('id').execute()).map((v) => v.id);
    await waitFor(
      async () => ids.every((id) => qemuPids(id).length === 0),
      30_000,
      () => 'VMs left running',
    ).catch(() => {});
    if (agent) await stopAgent(agent);
    await t?.close();
  }, 90_000);

  /** `vm exec` once the guest agent answers (it starts a little after the VM runs, or is restored). */
  const execReady = (vm: string) =>
    waitFor(
      async () => (await nqvm(['vm', 'exec', vm, '--timeout', '5', '--', 'true'])).code === 0,
      120_000,
      () => `the guest agent of ${vm} never answered:\n${agent.output()}`,
    );
  const sh = (vm: string, script: string, input?: string) =>
    nqvm(['vm', 'exec', vm, '--', 'sh', '-c', script], { input });

  it('runs commands with vm exec: output, exit codes and piped stdin pass through', async () => {
    const created = await nqvm(['vm', 'create', 'snap-src', '--mem', '256M', '-o', 'json']);
    expect(created.code, created.stderr).toBe(0);
    vms.push('snap-src');
    expect(JSON.parse(created.stdout)).toMatchObject({ name: 'snap-src', state: 'running' });
    await execReady('snap-src');

    const wrote = await sh('snap-src', 'echo original > /root/state && sync && cat /root/state');
    expect(wrote, wrote.stderr).toMatchObject({ code: 0, stdout: 'original\n' });
    const three = await sh('snap-src', 'echo to-stderr >&2; exit 3');
    expect(three.code).toBe(3);
    expect(three.stderr).toBe('to-stderr\n');
    const piped = await nqvm(['vm', 'exec', 'snap-src', '--', 'cat'], { input: 'piped in\nsecond line\n' });
    expect(piped, piped.stderr).toMatchObject({ code: 0, stdout: 'piped in\nsecond line\n' });
    const killed = await sh('snap-src', 'kill -TERM $$');
    expect(killed.code).toBe(128 + 15);
    const late = await nqvm(['vm', 'exec', 'snap-src', '--timeout', '1', '--', 'sleep', '30']);
    expect(late.code).toBe(124);
    const json = await nqvm(['vm', 'exec', 'snap-src', '-o', 'json', '--', 'uname', '-s']);
    expect(JSON.parse(json.stdout)).toMatchObject({ exit_code: 0, stdout: 'Linux\n', timed_out: false });
  }, 240_000);

  it('runs `vm exec -it` in a terminal and exits with its code', async () => {
    // A pseudo-terminal from Python's pty module (argv, no shell): the CLI sees a real tty.
    const p = spawn(
      'python3',
      [
        '-c',
        'import pty, sys; sys.exit(pty.spawn(sys.argv[1:]) >> 8)',
        process.execPath,
        NQVM,
        'vm',
        'exec',
        '-it',
        'snap-src',
        '--',
        'sh',
      ],
      {
        env: { ...process.env, NQVM_URL: t.url, NQVM_TOKEN: t.adminToken, NO_COLOR: '1' },
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    const exited = new Promise<number>((r) => p.on('close', (code) => r(code ?? -1)));
    p.stdin.write('[ -t 0 ] && echo tty-$((6*7))\r');
    for (let i = 0; i < 300 && !/tty-42/.test(out); i++) await new Promise((r) => setTimeout(r, 100));
    expect(out, 'the shell ran in a terminal').toMatch(/tty-42/);
    p.stdin.write('exit 5\r');
    expect(await exited, out).toBe(5);
  }, 60_000);

  it('snapshots a VM, restores it in place, and clones it', async () => {
    const snap = await nqvm(['snapshot', 'create', 'snap-src', '--name', 'snap1', '-o', 'json']);
    expect(snap.code, snap.stderr).toBe(0);
    expect(JSON.parse(snap.stdout)).toMatchObject({ name: 'snap1', status: 'ready', snapshot_type: 'Full' });

    const diff = await nqvm(['snapshot', 'create', 'snap-src', '--name', 'snap-diff', '--diff']);
    expect(diff.code).toBe(1);
    expect(diff.stderr).toMatch(/^nqvm: SNAPSHOT_TYPE_UNSUPPORTED: /);

    expect((await sh('snap-src', 'echo changed > /root/state && sync')).code).toBe(0);
    // Not a terminal: no question asked.
    const restored = await nqvm(['snapshot', 'restore', 'snap1', '-o', 'json']);
    expect(restored.code, restored.stderr).toBe(0);
    expect(JSON.parse(restored.stdout)).toMatchObject({ name: 'snap-src', state: 'running' });
    await execReady('snap-src');
    expect((await sh('snap-src', 'cat /root/state')).stdout).toBe('original\n');

    const clone = await nqvm([
      'snapshot',
      'instantiate',
      'snap1',
      '--name',
      'clone',
      '-l',
      'role=clone',
      '-o',
      'json',
    ]);
    expect(clone.code, clone.stderr).toBe(0);
    vms.push('clone');
    expect(JSON.parse(clone.stdout)).toMatchObject({
      name: 'clone',
      state: 'running',
      labels: { role: 'clone' },
    });
    expect(clone.stderr).toMatch(/^placement: .+/m);
    await execReady('clone');
    expect((await sh('clone', 'cat /root/state')).stdout).toBe('original\n');
    expect((await sh('clone', 'echo clone-only > /root/clone-file && sync')).code).toBe(0);
    expect((await sh('clone', 'cat /root/clone-file')).stdout).toBe('clone-only\n');
    const absent = await sh('snap-src', 'test -e /root/clone-file');
    expect(absent.code, 'the clone has a disk of its own').toBe(1);
  }, 420_000);

  it('lists, shows and deletes snapshots', async () => {
    const second = await nqvm([
      'snapshot',
      'create',
      'clone',
      '--name',
      'snap-clone',
      '--description',
      'of the clone',
    ]);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stdout).toMatch(/^description:\s+of the clone$/m);

    const all = await nqvm(['snapshot', 'list', '-o', 'json']);
    expect(all.code, all.stderr).toBe(0);
    const items = JSON.parse(all.stdout) as Array<{ name: string; vm_name: string; size_bytes: number }>;
    expect(items.map((s) => s.name).sort()).toEqual(['snap-clone', 'snap1']);
    expect(items.every((s) => s.size_bytes > 0)).toBe(true);
    const ofClone = await nqvm(['snapshot', 'list', '--vm', 'clone', '-o', 'json']);
    expect(JSON.parse(ofClone.stdout).map((s: { name: string }) => s.name)).toEqual(['snap-clone']);
    const table = await nqvm(['snapshot', 'list']);
    expect(table.stdout).toMatch(/^NAME\s+VM\s+TYPE\s+STATUS\s+SIZE/);
    expect(table.stdout).toMatch(/snap1\s+snap-src\s+Full\s+ready\s+\d+(\.\d)? (KiB|MiB|GiB)/);
    const shown = await nqvm(['snapshot', 'show', 'snap1', '-o', 'yaml']);
    expect(shown.stdout).toMatch(/^name: snap1$/m);

    for (const name of ['snap-clone', 'snap1']) {
      const del = await nqvm(['snapshot', 'delete', name]);
      expect(del.code, del.stderr).toBe(0);
      expect(del.stderr).toBe(`deleted snapshot ${name}\n`);
    }
    // The host removes the files; the snapshot is `deleting` until then.
    const gone = await waitFor(
      async () => {
        const r = await nqvm(['snapshot', 'show', 'snap1']);
        return r.code === 1 ? r : null;
      },
      30_000,
      () => 'snap1 is still there',
    );
    expect(gone.stderr).toMatch(/SNAPSHOT_NOT_FOUND: no snapshot named "snap1"/);
  }, 240_000);
});
