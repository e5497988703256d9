/**
 * Guests that are not nqvm's own: Debian bookworm with systemd, Debian's ifupdown and OpenSSH,
 * from Debian's packages (debootstrap), as ext4 root disks the test guest's kernel and initramfs
 * boot into (its initramfs loads the virtio drivers, then switches to the disk's /sbin/init).
 * Two images from one tree: with cloud-init (which renders its network for ifupdown, "eni",
 * as on Debian's own cloud images) and, the same without cloud-init (configured offline by
 * nqvm's `inject` mode). No nqvm guest agent is in either: cloud-init installs it from the
 * config drive, as for any cloud image. Built once (a minute or two), cached outside the
 * repository, rebuilt when the recipe changes.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { runHost, tryLock } from '@nqvm/builtin-guest';

export interface CloudInitGuest {
  dir: string;
  /** Sparse ext4 image with cloud-init; copy it (or boot it through an overlay) before writing to it. */
  rootfs: string;
  /** The same system without cloud-init. */
  plainRootfs: string;
}

const RECIPE = {
  suite: 'bookworm',
  mirror: 'http://deb.debian.org/debian',
  // python3-cffi-backend by name: debootstrap resolves no virtual packages (cryptography needs its api).
  packages: [
    'systemd-sysv',
    'udev',
    'cloud-init',
    'iproute2',
    'kmod',
    'python3-cffi-backend',
    'ifupdown',
    'openssh-server',
  ],
  sizeMiB: 2048,
  /** Only the config drive: cloud-init does not wait for network datasources that never answer. */
  cloudCfg: 'datasource_list: [NoCloud, None]\n',
  version: 3,
};

function defaultCacheRoot(): string {
  const base = process.env.NQVM_CACHE_DIR;
  return base ? join(base, 'cloud-init-guest') : join(homedir(), '.cache', 'nqvm', 'cloud-init-guest');
}

/**
 * The Debian cloud-init guest, built on first use.
 *
 * @example
 * const { rootfs } = await ensureCloudInitGuest({ onProgress: console.log });
 */
export async function ensureCloudInitGuest(
  opts: { cacheDir?: string; onProgress?: (m: string) => void } = {},
): Promise<CloudInitGuest> {
  const root = resolve(opts.cacheDir ?? defaultCacheRoot());
  const key = createHash('sha256').update(JSON.stringify(RECIPE)).digest('hex').slice(0, 16);
  const dir = join(root, key);
  const rootfs = join(dir, 'rootfs.ext4');
  const plainRootfs = join(dir, 'plain.ext4');
  await mkdir(root, { recursive: true });
  for (;;) {
    if (existsSync(rootfs)) return { dir, rootfs, plainRootfs };
    const release = await tryLock(join(root, `${key}.lock`));
    if (!release) {
      await sleep(500);
      continue;
    }
    try {
      if (!existsSync(rootfs)) await build(dir, opts.onProgress ?? (() => {}));
    } finally {
      await release();
    }
  }
}

async function build(dir: string, progress: (m: string) => void): Promise<void> {
  const work = `${dir}.build-${process.pid}`;
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  try {
    const tree = join(work, 'root');
    progress(`debootstrap ${RECIPE.suite} with ${RECIPE.packages.join(', ')}`);
    await runHost('debootstrap', [
      '--variant=minbase',
      `--include=${RECIPE.packages.join(',')}`,
      RECIPE.suite,
      tree,
      RECIPE.mirror,
    ]);
    await writeFile(join(tree, 'etc', 'cloud', 'cloud.cfg.d', '90-nqvm-test.cfg'), RECIPE.cloudCfg);
    // A machine id per boot (each VM is a new machine), and no leftovers of the build.
    await writeFile(join(tree, 'etc', 'machine-id'), '');
    await writeFile(join(tree, 'etc', 'hostname'), 'debian\n');
    await rm(join(tree, 'var', 'cache', 'apt', 'archives'), { recursive: true, force: true });
    await mkdir(join(tree, 'var', 'cache', 'apt', 'archives', 'partial'), { recursive: true });
    const mkfs = async (name: string) => {
      progress(`mkfs.ext4 -d ${name}`);
      const image = join(work, name);
      await runHost('mkfs.ext4', ['-q', '-F', '-L', 'root', '-d', tree, image, `${RECIPE.sizeMiB}M`]);
      await stat(image);
    };
    await mkfs('rootfs.ext4');
    // The same system as images without cloud-init come: nothing configures its network.
    await runHost('chroot', [tree, 'dpkg', '--purge', 'cloud-init']);
    await rm(join(tree, 'etc', 'cloud'), { recursive: true, force: true });
    await mkfs('plain.ext4');
    await rm(tree, { recursive: true, force: true });
    await rm(dir, { recursive: true, force: true });
    await rename(work, dir);
  } catch (err) {
    await rm(work, { recursive: true, force: true });
    throw err;
  }
}
