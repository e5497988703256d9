import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureGuestAgent, GUEST_AGENT_SOURCES, guestAgentSourceDir } from './build';

let dir: string;

/** A stand-in for gcc: reports `version`, and compiles with gcc unless `linkError` is set. */
async function fakeCompiler(name: string, version: string, linkError?: string): Promise<string> {
  const path = join(dir, name);
  await writeFile(
    path,
    [
      '#!/bin/sh',
      `case "$1" in -dumpfullversion) echo ${version}; exit 0;; -dumpmachine) echo x86_64-linux-gnu; exit 0;; esac`,
      linkError ? `echo '${linkError}' >&2; exit 1` : 'exec gcc "$@"',
      '',
    ].join('\n'),
    { mode: 0o755 },
  );
  return path;
}

/** True for an ELF executable without a program interpreter (statically linked). */
function isStaticElf(bytes: Buffer): boolean {
  if (bytes.subarray(0, 4).toString('latin1') !== '\x7fELF') return false;
  const phoff = Number(bytes.readBigUInt64LE(0x20));
  const phentsize = bytes.readUInt16LE(0x36);
  const phnum = bytes.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) if (bytes.readUInt32LE(phoff + i * phentsize) === 3) return false; // PT_INTERP
  return true;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'nqvm-guest-build-'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('ensureGuestAgent', () => {
  it('finds its C source beside the package', () => {
    expect(existsSync(join(guestAgentSourceDir(), GUEST_AGENT_SOURCES[0]))).toBe(true);
  });

  it('compiles a static binary once, then serves it from the cache', async () => {
    const cacheDir = join(dir, 'cache');
    const progress: string[] = [];
    const built = await ensureGuestAgent({ cacheDir, onProgress: (m) => progress.push(m) });
    expect(dirname(dirname(built.path))).toBe(cacheDir);
    expect(built.path.endsWith('/nqvm-guest-agent')).toBe(true);
    const bytes = await readFile(built.path);
    expect(isStaticElf(bytes)).toBe(true);
    expect(built.sha256).toBe(createHash('sha256').update(bytes).digest('hex'));
    expect(progress[0]).toMatch(/^compiling the guest agent/);

    const again: string[] = [];
    expect(await ensureGuestAgent({ cacheDir, onProgress: (m) => again.push(m) })).toEqual(built);
    expect(again).toEqual([]);

    const usage = await new Promise<{ code: number | null; stderr: string }>((resolve) =>
      execFile(built.path, [], (err, _out, stderr) =>
        resolve({ code: err ? (err.code as number) : 0, stderr }),
      ),
    );
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/^usage: nqvm-guest-agent serve\|container/);
  });

  it('builds racing into the same cache publish one folder and leave no temp folder', async () => {
    const cacheDir = join(dir, 'race');
    const alias = join(dir, 'race-alias');
    await mkdir(cacheDir);
    await symlink(cacheDir, alias);
    // Different spellings of one folder: the in-process de-duplication does not join them.
    const progress: string[] = [];
    const onProgress = (m: string) => progress.push(m);
    const results = await Promise.all([
      ensureGuestAgent({ cacheDir, onProgress }),
      ensureGuestAgent({ cacheDir: alias, onProgress }),
      ensureGuestAgent({ cacheDir, onProgress }),
    ]);
    // Two builds ran (one per spelling) and both published: the loser's rename found the folder.
    expect(progress.filter((m) => m.startsWith('compiling'))).toHaveLength(2);
    expect(progress.filter((m) => m.startsWith('guest agent ready'))).toHaveLength(2);
    expect(new Set(results.map((r) => r.sha256)).size).toBe(1);
    const entries = await readdir(cacheDir);
    expect(entries).toHaveLength(1);
    expect(isStaticElf(await readFile(join(cacheDir, entries[0]!, 'nqvm-guest-agent')))).toBe(true);
  });

  it('keys the cache by the compiler version', async () => {
    const cacheDir = join(dir, 'versions');
    const a = await ensureGuestAgent({ cacheDir, compiler: await fakeCompiler('gcc-a', '12.2.0-a') });
    const b = await ensureGuestAgent({ cacheDir, compiler: await fakeCompiler('gcc-b', '12.2.0-b') });
    expect(a.path).not.toBe(b.path);
    expect((await readdir(cacheDir)).sort()).toHaveLength(2);
  });

  it('asks no compiler again in the same process (every boot asks), until its binary is gone', async () => {
    const cacheDir = join(dir, 'memo');
    const calls = join(dir, 'memo-calls');
    const compiler = join(dir, 'gcc-counted');
    await writeFile(compiler, `#!/bin/sh\necho "$1" >> ${calls}\nexec gcc "$@"\n`, { mode: 0o755 });
    const built = await ensureGuestAgent({ cacheDir, compiler });
    const runs = (await readFile(calls, 'utf8')).split('\n').filter(Boolean).length;
    expect(runs).toBeGreaterThanOrEqual(3); // identity (2) and the build
    expect(await ensureGuestAgent({ cacheDir, compiler })).toEqual(built);
    expect((await readFile(calls, 'utf8')).split('\n').filter(Boolean)).toHaveLength(runs);
    await rm(cacheDir, { recursive: true, force: true });
    const rebuilt = await ensureGuestAgent({ cacheDir, compiler });
    expect(existsSync(rebuilt.path)).toBe(true);
    expect((await readFile(calls, 'utf8')).split('\n').filter(Boolean).length).toBeGreaterThan(runs);
  });

  it('says what to install when gcc or the static libc is missing', async () => {
    await expect(
      ensureGuestAgent({ cacheDir: join(dir, 'x'), compiler: join(dir, 'no-gcc') }),
    ).rejects.toMatchObject({
      code: 'COMPILER_MISSING',
      message: expect.stringContaining('install gcc and libc6-dev'),
    });
    const noLibc = await fakeCompiler(
      'gcc-nolibc',
      '1.0',
      '/usr/bin/ld: cannot find -lc: No such file or directory',
    );
    await expect(ensureGuestAgent({ cacheDir: join(dir, 'y'), compiler: noLibc })).rejects.toMatchObject({
      code: 'COMPILER_MISSING',
      message: 'the static C library is missing: install gcc and libc6-dev',
    });
    const broken = await fakeCompiler('gcc-broken', '1.0', 'x.c:1: error: something else');
    await expect(ensureGuestAgent({ cacheDir: join(dir, 'z'), compiler: broken })).rejects.toMatchObject({
      code: 'BUILD_FAILED',
      message: expect.stringContaining('something else'),
    });
    expect(await readdir(join(dir, 'z'))).toEqual([]);
  });
});
