import { execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import { ensureGuestAgent } from '@nqvm/guest-agent/build';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type BuiltinGuest, ensureBuiltinGuest } from './builtin-guest';
import { resolvePackages } from './debian-packages';
import { defaultRecipe, recipeKey } from './recipe';

const run = promisify(execFile);
const repoRoot = fileURLToPath(new URL('../../../', import.meta.url));

/** The PID of a process that has exited: what a crashed builder leaves in its lock. */
async function deadProcessId(): Promise<number> {
  const child = spawn('true');
  await new Promise((resolve) => child.once('exit', resolve));
  return child.pid!;
}

let guest: BuiltinGuest;
const scratch: string[] = [];

beforeAll(async () => {
  const started = Date.now();
  const progress: string[] = [];
  guest = await ensureBuiltinGuest({ onProgress: (m) => progress.push(m) });
  const built = progress.some((m) => m.startsWith('built '));
  console.log(
    `ensureBuiltinGuest: ${Date.now() - started} ms (${built ? 'built' : 'cache hit'}) -> ${guest.dir}`,
  );
}, 300_000);

afterAll(async () => {
  await Promise.all(scratch.map((d) => rm(d, { recursive: true, force: true })));
});

describe('ensureBuiltinGuest', () => {
  it('produces a kernel, an initramfs and a sparse ext4 root disk', async () => {
    expect(guest.kernelVersion).toMatch(/^\d+\.\d+\.\d+-\d+-cloud-amd64$/);
    const [kernel, initrd, rootfs] = await Promise.all([
      stat(guest.kernel),
      stat(guest.initrd),
      stat(guest.rootfs),
    ]);
    expect(kernel.size).toBeGreaterThan(1_000_000);
    expect(initrd.size).toBeGreaterThan(500_000);
    expect(rootfs.size).toBe(64 * 1024 * 1024);
    expect(rootfs.blocks * 512).toBeLessThan(rootfs.size / 2);
    expect(await readdir(guest.modulesDir!)).toEqual(expect.arrayContaining(['virtio_blk.ko', 'button.ko']));
  });

  it('writes a valid ext4 with busybox init and a minimal /etc', async () => {
    await run('e2fsck', ['-fn', guest.rootfs]);
    const root = (await run('debugfs', ['-R', 'ls /', guest.rootfs])).stdout;
    for (const name of ['bin', 'sbin', 'etc', 'proc', 'sys', 'dev', 'tmp', 'root'])
      expect(root).toContain(name);
    const inittab = (await run('debugfs', ['-R', 'cat /etc/inittab', guest.rootfs])).stdout;
    expect(inittab).toContain('::sysinit:/etc/nqvm/rc');
    const passwd = (await run('debugfs', ['-R', 'cat /etc/passwd', guest.rootfs])).stdout;
    expect(passwd).toMatch(/^root:x:0:0:/);
    const init = (await run('debugfs', ['-R', 'stat /sbin/init', guest.rootfs])).stdout;
    expect(init).toMatch(/Fast link dest: "\/bin\/busybox"/);
  });

  it('packs busybox, the modules and /init into the initramfs', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'nqvm-initrd-'));
    scratch.push(dir);
    const cpio = join(dir, 'initrd.cpio');
    await writeFile(cpio, gunzipSync(await readFile(guest.initrd)));
    const listing = (await run('cpio', ['-it', '--quiet', '-F', cpio])).stdout.split('\n');
    expect(listing).toEqual(
      expect.arrayContaining([
        'init',
        'bin/busybox',
        'bin/sh',
        'sbin/switch_root',
        'dev/console',
        'lib/modules/virtio_blk.ko',
        'lib/modules/virtio_net.ko',
        'lib/modules/button.ko',
        'etc/nqvm/rc',
        'etc/acpi/PWRF/00000080',
      ]),
    );
  });

  it('answers a second call from the cache, fast', async () => {
    const progress: string[] = [];
    const started = performance.now();
    const again = await ensureBuiltinGuest({ onProgress: (m) => progress.push(m) });
    const ms = performance.now() - started;
    console.log(`ensureBuiltinGuest cache hit: ${ms.toFixed(1)} ms`);
    expect(again).toEqual(guest);
    expect(progress).toEqual([]);
    expect(ms).toBeLessThan(1000);
  });

  it('builds once when several processes ask at the same time, taking over a dead builder', async () => {
    const cacheDir = await mkdtemp(join(tmpdir(), 'nqvm-guest-cache-'));
    scratch.push(cacheDir);
    // What a builder killed mid-way leaves behind: its lock and its half-built folder.
    const { kernel, busybox } = await resolvePackages();
    const key = recipeKey(defaultRecipe(kernel, busybox, { sha256: (await ensureGuestAgent()).sha256 }));
    const deadPid = await deadProcessId();
    await writeFile(join(cacheDir, `${key}.lock`), `${deadPid}\n`);
    await mkdir(join(cacheDir, `.build-${key}-${deadPid}-x1y2z3`, 'out'), { recursive: true });
    const script = join(cacheDir, 'ask.mts');
    const moduleUrl = new URL('./builtin-guest.ts', import.meta.url).href;
    await writeFile(
      script,
      `import { ensureBuiltinGuest } from ${JSON.stringify(moduleUrl)};
const progress = [];
const guest = await ensureBuiltinGuest({ cacheDir: process.argv[2], onProgress: (m) => progress.push(m) });
process.stdout.write(JSON.stringify({ guest, built: progress.some((m) => m.startsWith('built ')) }));
`,
    );
    const ask = () =>
      run(process.execPath, ['--import', 'tsx', script, cacheDir], { cwd: repoRoot }).then(
        (r) => JSON.parse(r.stdout) as { guest: BuiltinGuest; built: boolean },
      );
    const answers = await Promise.all([ask(), ask()]);
    expect(new Set(answers.map((a) => a.guest.dir)).size).toBe(1);
    expect(answers[0]!.guest.dir).toBe(join(cacheDir, key));
    expect(answers.filter((a) => a.built)).toHaveLength(1);
    const left = (await readdir(cacheDir)).filter((n) => n.startsWith('.build-') || n.endsWith('.lock'));
    expect(left).toEqual([]);
    await run('e2fsck', ['-fn', answers[0]!.guest.rootfs]);
  }, 180_000);
});
