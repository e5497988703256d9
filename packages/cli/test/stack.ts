/**
 * The whole stack for end-to-end tests: a real manager (harness) and real agents run as
 * separate `nqvm agent` processes (so they can be killed with SIGKILL or frozen), booting the
 * test guest with QEMU.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { registerPathImage } from '@nqvm/manager/images/images';
import { ensureContainerInit, ensureTestGuest, qemuPidsOf } from '@nqvm/testkit';
import { client, startManager, type TestManager } from '../../manager/test/harness';

export const NQVM = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'bin', 'nqvm.mjs');

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs the built `nqvm` as a separate process with `env` over this one's (no colour) until it
 * exits; `input` is its whole standard input (a pipe, so never a terminal).
 */
export function runNqvm(args: string[], env: Record<string, string>, input = ''): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [NQVM, ...args], {
      env: { ...process.env, NO_COLOR: '1', ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    p.stdin.end(input);
  });
}

/** Runs the built `nqvm` against `t` as its admin (NQVM_URL, NQVM_TOKEN). */
export function cli(t: TestManager) {
  return (args: string[], opts: { input?: string } = {}): Promise<CliRun> =>
    runNqvm(
      args,
      { NQVM_CONFIG: path.join(t.dataDir, 'cli-config.json'), NQVM_URL: t.url, NQVM_TOKEN: t.adminToken },
      opts.input,
    );
}

export interface AgentProcess {
  name: string;
  stateDir: string;
  bind: string;
  proc: ChildProcess;
  output: () => string;
  hostId: () => Promise<string>;
}

/** The initrd image containers boot with (nqvm's container init), by the name the manager looks for. */
export const CONTAINER_INIT_IMAGE = 'builtin-container-init';

/**
 * A manager with the test guest's images as the defaults; with `containers`, also the container
 * init (as `builtin-container-init`), so OCI images run as containers.
 */
export async function startStack(env: Record<string, string> = {}, opts: { containers?: boolean } = {}) {
  const t = await startManager('sqlite', { NQVM_HEARTBEAT_INTERVAL_S: '1', ...env });
  const guest = await ensureTestGuest();
  const store = t.manager.services.store;
  await registerPathImage(store, { name: 'kernel', kind: 'kernel', path: guest.kernel, isDefault: true });
  await registerPathImage(store, { name: 'initrd', kind: 'initrd', path: guest.initrd, isDefault: true });
  await registerPathImage(store, { name: 'rootfs', kind: 'rootfs', path: guest.rootfs, isDefault: true });
  if (opts.containers) {
    const init = await ensureContainerInit();
    await registerPathImage(store, { name: CONTAINER_INIT_IMAGE, kind: 'initrd', path: init.initrd });
  }
  return { t, api: client(t.url, t.adminToken), guest };
}

let nextPort = 19300 + (process.pid % 200) * 4;

export async function startAgent(
  t: TestManager,
  name: string,
  extraEnv: Record<string, string> = {},
  stateDir?: string,
): Promise<AgentProcess> {
  const dir = stateDir ?? fs.mkdtempSync(path.join(os.tmpdir(), `nqvm-e2e-${name}-`));
  const bind = `127.0.0.1:${nextPort++}`;
  const api = client(t.url, t.adminToken);
  let joinToken: string | undefined;
  if (!fs.existsSync(path.join(dir, 'identity.json'))) {
    const jt = await api.post('/api/v1/join-tokens', { ttl_s: 600 });
    joinToken = jt.body.token;
  }
  return spawnAgent(t, name, dir, bind, joinToken, extraEnv);
}

export function spawnAgent(
  t: TestManager,
  name: string,
  stateDir: string,
  bind: string,
  joinToken: string | undefined,
  extraEnv: Record<string, string> = {},
): AgentProcess {
  let out = '';
  const proc = spawn(
    process.execPath,
    [NQVM, 'agent', '--manager', t.url, '--bind', bind, '--state-dir', stateDir, '--name', name],
    {
      env: {
        ...process.env,
        NQVM_LOG_LEVEL: 'warn',
        NQVM_HEARTBEAT_INTERVAL_S: '1',
        ...(joinToken ? { NQVM_JOIN_TOKEN: joinToken } : {}),
        ...extraEnv,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  proc.stdout?.on('data', (d) => (out += d));
  proc.stderr?.on('data', (d) => (out += d));
  const api = client(t.url, t.adminToken);
  return {
    name,
    stateDir,
    bind,
    proc,
    output: () => out,
    hostId: async () => {
      const host = await waitFor(
        async () => {
          const r = await api.get('/api/v1/hosts?limit=500');
          return r.body.items.find(
            (h: { name: string; status: string }) => h.name === name && h.status === 'ready',
          );
        },
        30_000,
        () => `agent ${name} never became ready:\n${out}`,
      );
      return host.id as string;
    },
  };
}

export async function stopAgent(a: AgentProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (a.proc.exitCode !== null || a.proc.signalCode !== null) return;
  const done = new Promise((r) => a.proc.once('exit', r));
  a.proc.kill(signal);
  await done;
}

export async function waitFor<T>(
  fn: () => Promise<T | undefined | null | false>,
  timeoutMs: number,
  what: () => string,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function killVmProcesses(vmIds: string[]): void {
  for (const id of vmIds) for (const pid of qemuPidsOf(id)) process.kill(pid, 'SIGKILL');
}

/**
 * A copy of the guest's root disk changed offline with debugfs (no mount): extra inittab
 * lines (e.g. a counter printing to the console) and files removed (e.g. the power-button
 * handler, to get a guest that ignores a graceful stop).
 */
export function rootfsVariant(
  base: string,
  out: string,
  change: { inittab?: string[]; remove?: string[] },
): string {
  fs.copyFileSync(base, out);
  const inittab = execFileSync('debugfs', ['-R', 'cat /etc/inittab', out], {
    stdio: ['ignore', 'pipe', 'ignore'],
  }).toString();
  const cmds: string[] = [];
  if (change.inittab?.length) {
    const local = `${out}.inittab`;
    fs.writeFileSync(local, `${inittab.trimEnd()}\n${change.inittab.join('\n')}\n`);
    cmds.push('rm /etc/inittab', `write ${local} /etc/inittab`, 'set_inode_field /etc/inittab mode 0100644');
  }
  for (const f of change.remove ?? []) cmds.push(`rm ${f}`);
  const script = `${out}.debugfs`;
  fs.writeFileSync(script, `${cmds.join('\n')}\n`);
  execFileSync('debugfs', ['-w', '-f', script, out], { stdio: 'ignore' });
  return out;
}

export { qemuPidsOf as qemuPids };
