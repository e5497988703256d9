/**
 * The built `nqvm` CLI against a real manager and agent booting QEMU guests: login, VM life
 * cycle with --wait, JSON output for scripts, image import, and the exit codes and messages of
 * the ways a command fails.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_PASSWORD, userWithRole } from '../../manager/test/harness';
import { rawDisk } from '../../manager/test/image-fixtures';
import { type AgentProcess, type CliRun, NQVM, runNqvm, startAgent, startStack, stopAgent } from './stack';

let home: string;

function nqvm(args: string[], opts: { input?: string; env?: Record<string, string> } = {}): Promise<CliRun> {
  return runNqvm(
    args,
    { NQVM_CONFIG: path.join(home, 'config.json'), NQVM_URL: '', NQVM_TOKEN: '', ...opts.env },
    opts.input,
  );
}

describe('the nqvm CLI against a real stack', () => {
  let stack: Awaited<ReturnType<typeof startStack>>;
  let agent: AgentProcess;

  beforeAll(async () => {
    home = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-cli-'));
    stack = await startStack();
    agent = await startAgent(stack.t, 'cli-host');
    await agent.hostId();
  }, 120_000);

  afterAll(async () => {
    if (agent) await stopAgent(agent);
    await stack?.t.close();
    fs.rmSync(home, { recursive: true, force: true });
  });

  it('logs in, keeping only an API token in a 0600 file', async () => {
    const r = await nqvm(['login', stack.t.url, '-u', 'admin', '--password-stdin', '--name', 'test'], {
      input: `${ADMIN_PASSWORD}\n`,
    });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/Logged in to .* as admin/);
    const file = path.join(home, 'config.json');
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    const text = fs.readFileSync(file, 'utf8');
    expect(text).not.toContain(ADMIN_PASSWORD);
    const config = JSON.parse(text);
    expect(config.current).toBe('test');
    expect(config.contexts.test.token).toMatch(/\S{20,}/);
    const ctx = await nqvm(['context', 'list', '-o', 'json']);
    expect(JSON.parse(ctx.stdout)[0]).toMatchObject({ name: 'test', current: true });
  });

  it('creates a VM with --wait, finds it in JSON output, reads its console, stops and deletes it', async () => {
    const created = await nqvm(['vm', 'create', 'cli-vm', '--mem', '256M', '-o', 'json']);
    expect(created.code, created.stderr).toBe(0);
    const vm = JSON.parse(created.stdout);
    expect(vm).toMatchObject({ name: 'cli-vm', state: 'running' });

    const list = await nqvm(['vm', 'list', '-o', 'json']);
    expect(list.code).toBe(0);
    expect(JSON.parse(list.stdout).map((v: { id: string }) => v.id)).toContain(vm.id);

    const table = await nqvm(['vm', 'list']);
    expect(table.stdout).toMatch(/^NAME\s+STATE/);
    expect(table.stdout).toMatch(/cli-vm\s+running/);

    const yaml = await nqvm(['vm', 'show', 'cli-vm', '-o', 'yaml']);
    expect(yaml.stdout).toContain(`id: ${vm.id}`);

    // The guest prints its marker on the serial console once booted.
    let logs = '';
    for (let i = 0; i < 100 && !logs.includes('NQVM-GUEST-READY'); i++) {
      logs = (await nqvm(['vm', 'logs', 'cli-vm'])).stdout;
      if (!logs.includes('NQVM-GUEST-READY')) await new Promise((r) => setTimeout(r, 300));
    }
    expect(logs).toContain('NQVM-GUEST-READY');

    const refused = await nqvm(['vm', 'delete', 'cli-vm']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/VM_INVALID_STATE/);

    const stopped = await nqvm(['vm', 'stop', 'cli-vm', '--force', '-o', 'json']);
    expect(stopped.code, stopped.stderr).toBe(0);
    expect(JSON.parse(stopped.stdout).state).toBe('stopped');

    const deleted = await nqvm(['vm', 'delete', 'cli-vm']);
    expect(deleted.code, deleted.stderr).toBe(0);
    const gone = await nqvm(['vm', 'show', vm.id]);
    expect(gone.code).toBe(1);
  }, 180_000);

  it('opens `vm console` in a pseudo-terminal: runs a command in the guest, reads its output, detaches', async () => {
    const created = await nqvm(['vm', 'create', 'cli-con', '-o', 'json']);
    expect(created.code, created.stderr).toBe(0);
    // A pseudo-terminal from Python's pty module (argv, no shell): the CLI sees a real tty.
    const p = spawn(
      'python3',
      [
        '-c',
        'import pty, sys; sys.exit(pty.spawn(sys.argv[1:]) >> 8)',
        process.execPath,
        NQVM,
        'vm',
        'console',
        'cli-con',
      ],
      {
        env: { ...process.env, NQVM_CONFIG: path.join(home, 'config.json'), NQVM_URL: '', NQVM_TOKEN: '' },
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    const exited = new Promise<number>((r) => p.on('close', (code) => r(code ?? -1)));
    const until = async (re: RegExp, what: string) => {
      for (let i = 0; i < 300 && !re.test(out); i++) await new Promise((r) => setTimeout(r, 100));
      expect(out, what).toMatch(re);
    };
    await until(/connected to the console \(you write/, 'the hello notice');
    await until(/NQVM-GUEST-READY/, 'the scrollback with the boot marker');
    p.stdin.write('echo cli-says-$((6*7))\r');
    await until(/cli-says-42/, 'the guest ran the command');
    p.stdin.write('\x1d');
    await until(/detached from cli-con/, 'the detach notice');
    expect(await exited).toBe(0);
    const stop = await nqvm(['vm', 'delete', 'cli-con', '--force']);
    expect(stop.code, stop.stderr).toBe(0);
  }, 180_000);

  it('imports an image from a file with a progress display and lists it', async () => {
    const file = path.join(home, 'blob.img');
    fs.writeFileSync(file, rawDisk(3 * 1024 * 1024, 7));
    const r = await nqvm(['image', 'import', file, '--name', 'cli-blob', '--kind', 'rootfs', '-o', 'json']);
    expect(r.code, r.stderr).toBe(0);
    const img = JSON.parse(r.stdout);
    expect(img).toMatchObject({ name: 'cli-blob', status: 'ready', size_bytes: 3 * 1024 * 1024 });
    const list = await nqvm(['image', 'list', '-o', 'json']);
    expect(JSON.parse(list.stdout).some((i: { name: string }) => i.name === 'cli-blob')).toBe(true);
    const del = await nqvm(['image', 'delete', 'cli-blob']);
    expect(del.code, del.stderr).toBe(0);
  }, 60_000);

  it('fails with a non-zero exit and the API error code: unknown VM, bad token, refused action, usage', async () => {
    const unknown = await nqvm(['vm', 'show', 'no-such-vm']);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/VM_NOT_FOUND: no VM named "no-such-vm"/);

    const badToken = await nqvm(['vm', 'list'], { env: { NQVM_TOKEN: 'nqvm_not_a_real_token' } });
    expect(badToken.code).toBe(1);
    expect(badToken.stderr).toMatch(/UNAUTHENTICATED|INVALID_CREDENTIALS/);

    const viewer = await userWithRole(stack.t, 'viewer');
    const refused = await nqvm(['vm', 'create', 'nope'], { env: { NQVM_TOKEN: viewer } });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/FORBIDDEN/);

    const usage = await nqvm(['vm', 'create']);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/missing required argument/);

    const badSize = await nqvm(['vm', 'create', 'x', '--mem', 'lots']);
    expect(badSize.code).toBe(2);
    expect(badSize.stderr).toMatch(/--mem must be a size/);
  }, 60_000);

  it('manages networks, hosts, tokens and users', async () => {
    const net = await nqvm(['network', 'create', 'cli-net', '--subnet', '10.250.7.0/24', '-o', 'json']);
    expect(net.code, net.stderr).toBe(0);
    expect(JSON.parse(net.stdout)).toMatchObject({ name: 'cli-net', kind: 'nat', gateway: '10.250.7.1' });
    const overlap = await nqvm(['network', 'create', 'cli-net2', '--subnet', '10.250.7.128/25']);
    expect(overlap.code).toBe(1);
    expect(overlap.stderr).toMatch(/NETWORK_OVERLAP/);
    const nets = await nqvm(['network', 'list']);
    expect(nets.stdout).toMatch(/cli-net\s+nat\s+10\.250\.7\.0\/24/);
    expect((await nqvm(['network', 'delete', 'cli-net'])).code).toBe(0);

    const hosts = await nqvm(['host', 'list', '-o', 'json']);
    expect(JSON.parse(hosts.stdout).map((h: { name: string }) => h.name)).toContain('cli-host');
    const cordon = await nqvm(['host', 'cordon', 'cli-host', '-o', 'json']);
    expect(JSON.parse(cordon.stdout).schedulable).toBe(false);
    expect((await nqvm(['host', 'uncordon', 'cli-host'])).code).toBe(0);

    const token = await nqvm(['token', 'create', 'cli-script', '--role', 'viewer']);
    expect(token.code, token.stderr).toBe(0);
    const secret = token.stdout.trim();
    const asViewer = await nqvm(['vm', 'list', '-o', 'json'], { env: { NQVM_TOKEN: secret } });
    expect(asViewer.code, asViewer.stderr).toBe(0);
    expect((await nqvm(['token', 'revoke', 'cli-script'])).code).toBe(0);
    const revoked = await nqvm(['vm', 'list'], { env: { NQVM_TOKEN: secret } });
    expect(revoked.code).toBe(1);

    const user = await nqvm(['user', 'create', 'carol', '--role', 'operator', '--password-stdin'], {
      input: 'carol-password-1\n',
    });
    expect(user.code, user.stderr).toBe(0);
    const users = await nqvm(['user', 'list', '-o', 'json']);
    expect(JSON.parse(users.stdout).find((u: { username: string }) => u.username === 'carol')).toMatchObject({
      role: 'operator',
    });
    expect((await nqvm(['user', 'delete', 'carol'])).code).toBe(0);
  }, 60_000);

  it('prints completion scripts for bash, zsh and fish', async () => {
    for (const shell of ['bash', 'zsh', 'fish']) {
      const r = await nqvm(['completion', shell]);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain('nqvm');
      expect(r.stdout).toMatch(/vm/);
    }
    const bash = await nqvm(['completion', 'bash']);
    expect(bash.stdout).toContain(
      '"vm") words="list ls show get create start pause resume reboot stop delete rm logs',
    );
  });
});
