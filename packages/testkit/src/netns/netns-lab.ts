/**
 * Network namespaces for tests: a few hosts on one machine joined by veth pairs, with commands
 * and daemons run inside them. Traffic never leaves the namespaces a lab creates, and
 * `cleanup()` removes them and ends every process in them, also after a failed test. Needs
 * root (CAP_NET_ADMIN, CAP_SYS_ADMIN).
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** Lab namespaces are `nqvmt-<creator pid>-<n>-<label>`: a dead creator marks them stale. */
const LAB_NS = /^nqvmt-(\d+)-\d+-[a-z0-9-]+$/;
const LABEL = /^[a-z0-9][a-z0-9-]{0,15}$/;
const IFNAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;

export interface CommandResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface VethEnd {
  ns: string;
  name: string;
  /** `10.0.0.1/24`, set on this end when given. */
  address?: string;
}

function nsArgv(ns: string, cmd: string, args: readonly string[]): string[] {
  return ['--net=/run/netns/' + ns, '--', cmd, ...args];
}

/** Runs `cmd` in the namespace to its end; never throws on a non-zero exit. */
export function runIn(
  ns: string,
  cmd: string,
  args: readonly string[],
  opts: { input?: string; timeoutMs?: number } = {},
): Promise<CommandResult> {
  return new Promise((resolve) => {
    const child = spawn('nsenter', nsArgv(ns, cmd, args), { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => {
      stdout += b.toString();
    });
    child.stderr.on('data', (b: Buffer) => {
      stderr += b.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 20_000);
    child.once('error', (err) => {
      clearTimeout(timer);
      resolve({ code: null, stdout, stderr: err.message });
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
  });
}

/** Runs `cmd` in the namespace and answers its stdout; throws with stderr on a non-zero exit. */
export async function execIn(ns: string, cmd: string, args: readonly string[]): Promise<string> {
  const r = await runIn(ns, cmd, args);
  if (r.code !== 0)
    throw new Error(`[${ns}] ${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

/**
 * GET `url` from inside the namespace with busybox wget; null when it fails or takes longer
 * than `timeoutMs` (busybox 1.35's own `-T` crashes it, so the deadline is ours).
 */
export async function httpGet(ns: string, url: string, timeoutMs = 5_000): Promise<string | null> {
  const r = await runIn(ns, 'busybox', ['wget', '-q', '-O', '-', url], { timeoutMs });
  return r.code === 0 ? r.stdout : null;
}

function listNamespaces(): string[] {
  const out = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  return out
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(Boolean);
}

/** Ends every process inside `ns`, then deletes it. Synchronous, so it also works at exit. */
function destroyNamespaceSync(ns: string): void {
  try {
    const pids = execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).split('\n').filter(Boolean);
    for (const pid of pids) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  } catch {
    // The namespace may be gone already.
  }
  try {
    execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
  } catch {
    // Already deleted.
  }
}

/** Deletes lab namespaces whose creating process has ended (a test run killed before its cleanup). */
export function sweepStaleNamespaces(): string[] {
  const stale = listNamespaces().filter((ns) => {
    const pid = LAB_NS.exec(ns)?.[1];
    return pid !== undefined && !existsSync(`/proc/${pid}`);
  });
  for (const ns of stale) destroyNamespaceSync(ns);
  return stale;
}

let counter = 0;
const liveLabs = new Set<NetnsLab>();
let exitHookInstalled = false;

/**
 * @example
 * const lab = new NetnsLab();
 * const host = await lab.namespace('host');
 * const lan = await lab.namespace('lan');
 * await lab.veth({ ns: host, name: 'up0', address: '192.168.77.2/24' }, { ns: lan, name: 'lan0', address: '192.168.77.1/24' });
 * expect((await runIn(host, 'busybox', ['ping', '-c1', '192.168.77.1'])).code).toBe(0);
 * await lab.cleanup();
 */
export class NetnsLab {
  private readonly namespaces: string[] = [];
  private readonly processes: ChildProcess[] = [];
  private readonly dirs: string[] = [];

  constructor() {
    sweepStaleNamespaces();
    liveLabs.add(this);
    if (!exitHookInstalled) {
      exitHookInstalled = true;
      process.once('exit', () => {
        for (const lab of liveLabs) lab.cleanupSync();
      });
    }
  }

  /** Creates a namespace with its loopback up; answers its name. */
  async namespace(label: string): Promise<string> {
    if (!LABEL.test(label)) throw new Error(`invalid namespace label ${JSON.stringify(label)}`);
    const ns = `nqvmt-${process.pid}-${counter++}-${label}`;
    execFileSync('ip', ['netns', 'add', ns]);
    this.namespaces.push(ns);
    await execIn(ns, 'ip', ['link', 'set', 'lo', 'up']);
    return ns;
  }

  /** A veth pair between two namespaces, both ends up, with their addresses. */
  async veth(a: VethEnd, b: VethEnd): Promise<void> {
    for (const end of [a, b]) {
      if (!IFNAME.test(end.name)) throw new Error(`invalid interface name ${JSON.stringify(end.name)}`);
    }
    await execIn(a.ns, 'ip', [
      'link',
      'add',
      'name',
      a.name,
      'type',
      'veth',
      'peer',
      'name',
      b.name,
      'netns',
      b.ns,
    ]);
    for (const end of [a, b]) {
      if (end.address) await execIn(end.ns, 'ip', ['address', 'add', end.address, 'dev', end.name]);
      await execIn(end.ns, 'ip', ['link', 'set', 'dev', end.name, 'up']);
    }
  }

  /** Starts a long-running process in the namespace; it ends with the lab. */
  spawn(ns: string, cmd: string, args: readonly string[]): ChildProcess {
    const child = spawn('nsenter', nsArgv(ns, cmd, args), { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout?.resume();
    child.stderr?.resume();
    this.processes.push(child);
    return child;
  }

  /** A folder removed with the lab. */
  async tempDir(): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'nqvm-netns-'));
    this.dirs.push(dir);
    return dir;
  }

  /**
   * busybox httpd in the foreground serving `files` (name -> content, with an `index.html`) on
   * `port`; resolves once it answers.
   */
  async serveHttp(ns: string, port: number, files: Record<string, string>): Promise<ChildProcess> {
    const root = await this.tempDir();
    for (const [name, text] of Object.entries(files)) await writeFile(join(root, name), text);
    const child = this.spawn(ns, 'busybox', ['httpd', '-f', '-p', String(port), '-h', root]);
    for (let i = 0; i < 200; i++) {
      if ((await httpGet(ns, `http://127.0.0.1:${port}/`, 2_000)) !== null) return child;
      await sleep(25);
    }
    throw new Error(`httpd on port ${port} in ${ns} did not come up`);
  }

  /** Ends the lab's processes and every process left in its namespaces, deletes them and its folders. */
  async cleanup(): Promise<void> {
    this.cleanupSync();
    await Promise.all(this.dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
  }

  private cleanupSync(): void {
    for (const p of this.processes.splice(0)) {
      if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    }
    for (const ns of this.namespaces.splice(0).reverse()) destroyNamespaceSync(ns);
    liveLabs.delete(this);
  }
}
