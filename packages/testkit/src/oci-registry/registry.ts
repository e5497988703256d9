/**
 * A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) on 127.0.0.1 at a
 * free port, with its own storage folder and config, optionally behind htpasswd basic auth or
 * token auth (see token-server.ts).
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { stringify } from 'yaml';

const execFileP = promisify(execFile);

export const REGISTRY_BINARY = '/usr/bin/docker-registry';

/** What `auth.token` in the registry's config needs; a TokenServer provides it. */
export interface RegistryTokenAuth {
  realm: string;
  service: string;
  issuer: string;
  rootCertBundle: string;
}

export interface RegistryOptions {
  /** Basic auth through an htpasswd file holding these users. */
  basicAuth?: Record<string, string>;
  tokenAuth?: RegistryTokenAuth;
}

export interface OciRegistry {
  /** `http://127.0.0.1:<port>` */
  url: string;
  /** `127.0.0.1:<port>`, the registry part of an image reference. */
  host: string;
  /** The storage root (`<dir>/storage`), to corrupt a blob on purpose. */
  storageDir: string;
  /** Where the registry keeps one blob's bytes. */
  blobPath(digest: string): string;
  /** What the registry printed, for a failing test's message. */
  log(): string;
  stop(): Promise<void>;
}

/** A free TCP port on 127.0.0.1 (closed again before it is returned). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (addr && typeof addr === 'object' ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

/** Starts a registry and waits until it answers `GET /v2/`. */
export async function startOciRegistry(opts: RegistryOptions = {}): Promise<OciRegistry> {
  const dir = await fs.mkdtemp(join(tmpdir(), 'nqvm-registry-'));
  const storageDir = join(dir, 'storage');
  await fs.mkdir(storageDir);
  const port = await freePort();
  const config: Record<string, unknown> = {
    version: 0.1,
    log: { level: 'info', accesslog: { disabled: true } },
    storage: { filesystem: { rootdirectory: storageDir }, delete: { enabled: true } },
    http: { addr: `127.0.0.1:${port}`, secret: randomBytes(16).toString('hex') },
  };
  if (opts.basicAuth) {
    const lines: string[] = [];
    for (const [user, password] of Object.entries(opts.basicAuth)) {
      const { stdout } = await execFileP('htpasswd', ['-Bbn', user, password]);
      lines.push(stdout.trim());
    }
    const htpasswd = join(dir, 'htpasswd');
    await fs.writeFile(htpasswd, `${lines.join('\n')}\n`);
    config.auth = { htpasswd: { realm: 'nqvm-test', path: htpasswd } };
  } else if (opts.tokenAuth) {
    const t = opts.tokenAuth;
    config.auth = {
      token: { realm: t.realm, service: t.service, issuer: t.issuer, rootcertbundle: t.rootCertBundle },
    };
  }
  const configFile = join(dir, 'config.yml');
  await fs.writeFile(configFile, stringify(config));

  const child = spawn(REGISTRY_BINARY, ['serve', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const collect = (c: Buffer) => {
    output = (output + c.toString()).slice(-64 * 1024);
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  // A test runner that exits without stop() must not leave the registry running.
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);

  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    process.off('exit', killOnExit);
    await kill(child, exited);
    await fs.rm(dir, { recursive: true, force: true });
  };
  try {
    await waitUntilServing(url, child);
  } catch (err) {
    await stop();
    throw new Error(`docker-registry did not start: ${(err as Error).message}\n${output}`);
  }
  return {
    url,
    host: `127.0.0.1:${port}`,
    storageDir,
    blobPath: (digest) => {
      const [algo, hex] = digest.split(':') as [string, string];
      return join(storageDir, 'docker/registry/v2/blobs', algo, hex.slice(0, 2), hex, 'data');
    },
    log: () => output,
    stop,
  };
}

async function waitUntilServing(url: string, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`exited with code ${child.exitCode}`);
    try {
      const res = await fetch(`${url}/v2/`);
      await res.arrayBuffer();
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

async function kill(child: ChildProcess, exited: Promise<void>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}
