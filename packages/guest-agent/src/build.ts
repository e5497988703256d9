/**
 * Compiles the guest agent (C, static) on first use and keeps it in a cache keyed by what
 * went into it: the source bytes, the flags and the compiler's version.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, readFile, rename, rm } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GuestAgentError } from './errors';

export const GUEST_AGENT_SOURCES = ['nqvm-guest-agent.c'] as const;
export const GUEST_AGENT_BINARY_NAME = 'nqvm-guest-agent';
export const GUEST_AGENT_CFLAGS = [
  '-std=gnu11',
  '-static',
  '-Os',
  '-Wall',
  '-Wextra',
  '-Werror',
  '-s',
] as const;
const INSTALL_HINT = 'install gcc and libc6-dev';

export interface EnsureGuestAgentOptions {
  /** Defaults to `$NQVM_CACHE_DIR/guest-agent`, else `~/.cache/nqvm/guest-agent`. */
  cacheDir?: string;
  onProgress?: (msg: string) => void;
  /** Default `gcc`. */
  compiler?: string;
}

export interface GuestAgentBinary {
  /** A static x86-64 Linux executable; treat it as read-only. */
  path: string;
  sha256: string;
}

/**
 * The folder holding the agent's C source, found from this module: from the sources
 * (packages/guest-agent/src) and from the bundled CLI (packages/cli/dist).
 */
export function guestAgentSourceDir(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [
    resolve(here, '../native'), // packages/guest-agent/src -> packages/guest-agent/native
    resolve(here, '../../guest-agent/native'), // packages/cli/dist -> packages/guest-agent/native
  ];
  return candidates.find((c) => existsSync(join(c, GUEST_AGENT_SOURCES[0]))) ?? candidates[0]!;
}

function defaultCacheRoot(): string {
  const base = process.env.NQVM_CACHE_DIR;
  return base ? join(base, 'guest-agent') : join(homedir(), '.cache', 'nqvm', 'guest-agent');
}

function run(file: string, args: readonly string[]): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolvePromise, reject) => {
    execFile(file, args, { maxBuffer: 8 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(Object.assign(err, { stderr }));
      else resolvePromise({ stdout, stderr });
    });
  });
}

async function compilerIdentity(compiler: string): Promise<string> {
  try {
    const [version, machine] = await Promise.all([
      run(compiler, ['-dumpfullversion']),
      run(compiler, ['-dumpmachine']),
    ]);
    return `${version.stdout.trim()} ${machine.stdout.trim()}`;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new GuestAgentError('COMPILER_MISSING', `${compiler} not found: ${INSTALL_HINT}`, { cause: err });
    throw new GuestAgentError(
      'BUILD_FAILED',
      `${compiler} -dumpfullversion failed: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
}

function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Build folders left by processes that died mid-build. */
async function removeAbandonedBuilds(root: string): Promise<void> {
  for (const name of await readdir(root).catch(() => [] as string[])) {
    const m = /^\.build-[0-9a-f]+-(\d+)-/.exec(name);
    if (m && !isProcessAlive(Number(m[1]))) await rm(join(root, name), { recursive: true, force: true });
  }
}

async function compile(compiler: string, sources: string[], out: string): Promise<void> {
  try {
    await run(compiler, [...GUEST_AGENT_CFLAGS, '-o', out, ...sources]);
  } catch (err) {
    const stderr = String((err as { stderr?: string }).stderr ?? '');
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new GuestAgentError('COMPILER_MISSING', `${compiler} not found: ${INSTALL_HINT}`, { cause: err });
    // No static libc (libc.a) or no libc headers: libc6-dev is not installed.
    if (/cannot find -lc\b|stdio\.h: No such file/.test(stderr))
      throw new GuestAgentError('COMPILER_MISSING', `the static C library is missing: ${INSTALL_HINT}`, {
        cause: err,
      });
    throw new GuestAgentError('BUILD_FAILED', `compiling the guest agent failed:\n${stderr.trim()}`, {
      cause: err,
    });
  }
}

async function sha256File(path: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(path))
    .digest('hex');
}

const inFlight = new Map<string, Promise<GuestAgentBinary>>();

/**
 * What this process found, by cache and compiler: every VM boot asks, and the key costs two
 * compiler runs and a read of every source (tens of ms). The sources are this package's and do
 * not change under a running process; a compiler upgraded meanwhile counts from the next start.
 */
const found = new Map<string, GuestAgentBinary>();

/**
 * Returns the compiled agent, building it first if the cache has none for this source and
 * compiler. Safe when several processes ask at once: each builds into its own folder and
 * renames it into place; a loser of that race uses the winner's identical file.
 *
 * @example
 * const { path, sha256 } = await ensureGuestAgent({ onProgress: console.log });
 */
export async function ensureGuestAgent(opts: EnsureGuestAgentOptions = {}): Promise<GuestAgentBinary> {
  const root = resolve(opts.cacheDir ?? defaultCacheRoot());
  const compiler = opts.compiler ?? 'gcc';
  const memoKey = `${root}\0${compiler}`;
  const known = found.get(memoKey);
  if (known && existsSync(known.path)) return known;
  const binary = await findOrBuild(root, compiler, opts.onProgress ?? (() => {}));
  found.set(memoKey, binary);
  return binary;
}

async function findOrBuild(
  root: string,
  compiler: string,
  progress: (message: string) => void,
): Promise<GuestAgentBinary> {
  const sourceDir = guestAgentSourceDir();
  const sources = GUEST_AGENT_SOURCES.map((f) => join(sourceDir, f));

  const hash = createHash('sha256');
  for (const file of sources) hash.update(await readFile(file)).update('\0');
  hash
    .update(GUEST_AGENT_CFLAGS.join(' '))
    .update('\0')
    .update(await compilerIdentity(compiler));
  const key = hash.digest('hex').slice(0, 24);
  const finalDir = join(root, key);
  const binary = join(finalDir, GUEST_AGENT_BINARY_NAME);
  if (existsSync(binary)) return { path: binary, sha256: await sha256File(binary) };

  const flightKey = `${root}\0${key}`;
  let build = inFlight.get(flightKey);
  if (!build) {
    build = (async () => {
      await mkdir(root, { recursive: true });
      await removeAbandonedBuilds(root);
      const tmp = await mkdtemp(join(root, `.build-${key}-${process.pid}-`));
      try {
        progress(`compiling the guest agent (${compiler} ${GUEST_AGENT_CFLAGS.join(' ')})`);
        const out = join(tmp, GUEST_AGENT_BINARY_NAME);
        await compile(compiler, sources, out);
        await chmod(out, 0o755);
        try {
          await rename(tmp, finalDir);
        } catch (err) {
          // Another process published the same key first: its file is identical.
          const code = (err as NodeJS.ErrnoException).code;
          if ((code !== 'ENOTEMPTY' && code !== 'EEXIST') || !existsSync(binary)) throw err;
        }
        progress(`guest agent ready: ${binary}`);
        return { path: binary, sha256: await sha256File(binary) };
      } finally {
        await rm(tmp, { recursive: true, force: true });
      }
    })().finally(() => inFlight.delete(flightKey));
    inFlight.set(flightKey, build);
  }
  return build;
}
