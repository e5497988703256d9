import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ensureGuestAgent } from '@nqvm/guest-agent/build';
import { isProcessAlive, tryLock } from './build-lock';
import {
  aptStateFingerprint,
  downloadPackage,
  extractPackage,
  HOST_BUSYBOX,
  PackageUnavailableError,
  type ResolvedPackages,
  resolvePackages,
  updatePackageLists,
} from './debian-packages';
import { GUEST_AGENT_PATH } from './guest-files';
import { busyboxApplets, type GuestBinary, initramfsTree, rootfsTree, writeExt4Image } from './guest-images';
import { collectModules } from './kernel-modules';
import { encodeInitramfs } from './newc';
import { defaultRecipe, type GuestRecipe, kernelVersionOf, recipeKey } from './recipe';

/** The built-in guest: a bootable busybox guest, cached on disk. Treat every file as read-only. */
export interface BuiltinGuest {
  /** Cache folder holding the files below. */
  dir: string;
  /** bzImage of Debian's linux-image-*-cloud-amd64. */
  kernel: string;
  /** gzip'd newc initramfs: busybox-static, virtio/ACPI modules and /init. */
  initrd: string;
  /** Sparse ext4 image (about 64 MiB) with busybox and busybox init; copy it before writing to it. */
  rootfs: string;
  /** e.g. `6.1.0-41-cloud-amd64` */
  kernelVersion: string;
  /** The uncompressed .ko files the initramfs carries. */
  modulesDir?: string;
}

export interface EnsureBuiltinGuestOptions {
  /**
   * Defaults to `$NQVM_CACHE_DIR/test-guest`, else `~/.cache/nqvm/test-guest` (the folder's name
   * from when only the tests built it, kept so existing caches stay valid).
   */
  cacheDir?: string;
  onProgress?: (msg: string) => void;
}

interface GuestManifest {
  key: string;
  kernelVersion: string;
  recipe: Pick<GuestRecipe, 'kernel' | 'busybox' | 'modules' | 'rootfsMiB'>;
  modules: { loaded: string[]; builtin: string[]; missing: string[] };
  builtAt: string;
  buildSeconds: number;
}

const FILES = {
  kernel: 'vmlinuz',
  initrd: 'initrd.img',
  rootfs: 'rootfs.ext4',
  modules: 'modules',
  manifest: 'guest.json',
} as const;
const RESOLUTION_FILE = 'packages.json';
const LOCK_POLL_MS = 250;
const LOCK_WAIT_MS = 15 * 60 * 1000;

/** A build step failed; `step` names it, `cause` holds the underlying error. */
export class BuiltinGuestBuildError extends Error {
  constructor(
    readonly step: string,
    options: { cause: unknown },
  ) {
    super(
      `built-in guest build failed at step "${step}": ${(options.cause as Error)?.message ?? options.cause}`,
      options,
    );
    this.name = 'BuiltinGuestBuildError';
  }
}

function defaultCacheRoot(): string {
  const base = process.env.NQVM_CACHE_DIR;
  return base ? join(base, 'test-guest') : join(homedir(), '.cache', 'nqvm', 'test-guest');
}

async function step<T>(name: string, progress: (msg: string) => void, fn: () => Promise<T>): Promise<T> {
  progress(name);
  try {
    return await fn();
  } catch (err) {
    throw new BuiltinGuestBuildError(name, { cause: err });
  }
}

function needsPackageUpdate(err: unknown): boolean {
  return (
    err instanceof PackageUnavailableError ||
    (err instanceof BuiltinGuestBuildError && err.cause instanceof PackageUnavailableError)
  );
}

/** Reads a published guest; `undefined` if absent or incomplete. */
async function readGuest(dir: string): Promise<BuiltinGuest | undefined> {
  try {
    const manifest = JSON.parse(await readFile(join(dir, FILES.manifest), 'utf8')) as GuestManifest;
    const guest: BuiltinGuest = {
      dir,
      kernel: join(dir, FILES.kernel),
      initrd: join(dir, FILES.initrd),
      rootfs: join(dir, FILES.rootfs),
      kernelVersion: manifest.kernelVersion,
      modulesDir: join(dir, FILES.modules),
    };
    await Promise.all([stat(guest.kernel), stat(guest.initrd), stat(guest.rootfs)]);
    return guest;
  } catch {
    return undefined;
  }
}

/** `apt-cache` is slow, so its answer is kept until the apt or dpkg state changes. */
async function resolvePackagesCached(root: string, fresh: boolean): Promise<ResolvedPackages> {
  const file = join(root, RESOLUTION_FILE);
  const fingerprint = await aptStateFingerprint();
  if (!fresh) {
    const saved = await readFile(file, 'utf8').then(
      (t) => JSON.parse(t) as { fingerprint: string; packages: ResolvedPackages },
      () => undefined,
    );
    if (saved?.fingerprint === fingerprint) return saved.packages;
  }
  const packages = await resolvePackages();
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(tmp, JSON.stringify({ fingerprint, packages }, null, 2));
  await rename(tmp, file);
  return packages;
}

/** Removes build folders of `key` left by processes that died mid-build. */
async function removeAbandonedBuilds(root: string, key: string): Promise<void> {
  const prefix = `.build-${key}-`;
  for (const name of await readdir(root)) {
    if (!name.startsWith(prefix)) continue;
    const pid = Number.parseInt(name.slice(prefix.length), 10);
    if (!Number.isInteger(pid) || !isProcessAlive(pid))
      await rm(join(root, name), { recursive: true, force: true });
  }
}

async function buildGuest(
  root: string,
  key: string,
  recipe: GuestRecipe,
  agentPath: string,
  progress: (msg: string) => void,
): Promise<BuiltinGuest> {
  const started = Date.now();
  const kernelVersion = kernelVersionOf(recipe.kernel);
  const finalDir = join(root, key);
  const tmp = await mkdtemp(join(root, `.build-${key}-${process.pid}-`));
  const out = join(tmp, 'out');
  const work = join(tmp, 'work');
  try {
    await mkdir(join(out, FILES.modules), { recursive: true });
    await mkdir(join(work, 'debs'), { recursive: true });

    const kernelRoot = join(work, 'kernel');
    await step(`download and extract ${recipe.kernel.name}=${recipe.kernel.version}`, progress, async () => {
      const deb = await downloadPackage(recipe.kernel, join(work, 'debs'));
      await extractPackage(deb, kernelRoot);
      await copyFile(join(kernelRoot, 'boot', `vmlinuz-${kernelVersion}`), join(out, FILES.kernel));
    });

    const busybox = await step(
      `busybox (${recipe.busybox.from} ${recipe.busybox.version})`,
      progress,
      async () => {
        let binaryPath = HOST_BUSYBOX;
        if (recipe.busybox.from === 'download') {
          const deb = await downloadPackage(recipe.busybox, join(work, 'debs'));
          await extractPackage(deb, join(work, 'busybox'));
          binaryPath = join(work, 'busybox', 'bin', 'busybox');
        }
        return { binary: await readFile(binaryPath), applets: await busyboxApplets(binaryPath) };
      },
    );

    const modules = await step('collect kernel modules', progress, async () => {
      const found = await collectModules(join(kernelRoot, 'lib', 'modules', kernelVersion), recipe.modules);
      for (const [name, data] of found.files) await writeFile(join(out, FILES.modules, `${name}.ko`), data);
      if (found.builtin.length) progress(`built into the kernel: ${found.builtin.join(' ')}`);
      if (found.missing.length) progress(`not in this kernel, skipped: ${found.missing.join(' ')}`);
      return found;
    });

    const binaries: GuestBinary[] = [{ path: GUEST_AGENT_PATH.slice(1), data: await readFile(agentPath) }];
    await step('write initramfs', progress, async () => {
      const tree = initramfsTree(busybox, recipe.initramfsFiles, modules.files, binaries);
      await writeFile(join(out, FILES.initrd), encodeInitramfs(tree));
    });

    await step('write ext4 root disk', progress, () =>
      writeExt4Image(
        join(out, FILES.rootfs),
        rootfsTree(busybox, recipe.rootfsFiles, binaries),
        recipe.rootfsMiB,
        join(work, 'rootfs'),
      ),
    );

    const manifest: GuestManifest = {
      key,
      kernelVersion,
      recipe: {
        kernel: recipe.kernel,
        busybox: recipe.busybox,
        modules: recipe.modules,
        rootfsMiB: recipe.rootfsMiB,
      },
      modules: { loaded: [...modules.files.keys()], builtin: modules.builtin, missing: modules.missing },
      builtAt: new Date().toISOString(),
      buildSeconds: (Date.now() - started) / 1000,
    };
    await writeFile(join(out, FILES.manifest), `${JSON.stringify(manifest, null, 2)}\n`);

    await step('publish', progress, async () => {
      // A folder without a readable manifest is a broken leftover: replace it.
      if (!(await readGuest(finalDir))) await rm(finalDir, { recursive: true, force: true });
      try {
        await rename(out, finalDir);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
      }
    });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  const guest = await readGuest(finalDir);
  if (!guest) throw new BuiltinGuestBuildError('publish', { cause: new Error(`${finalDir} is incomplete`) });
  progress(`built ${finalDir} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return guest;
}

async function buildUnderLock(
  root: string,
  key: string,
  recipe: GuestRecipe,
  agentPath: string,
  progress: (msg: string) => void,
): Promise<BuiltinGuest> {
  const finalDir = join(root, key);
  const lockPath = join(root, `${key}.lock`);
  const deadline = Date.now() + LOCK_WAIT_MS;
  let told = false;
  for (;;) {
    const release = await tryLock(lockPath);
    if (release) {
      try {
        // Another process may have published while we waited for the lock.
        const ready = await readGuest(finalDir);
        if (ready) return ready;
        await removeAbandonedBuilds(root, key);
        return await buildGuest(root, key, recipe, agentPath, progress);
      } finally {
        await release();
      }
    }
    if (!told) progress(`waiting for another process building ${finalDir}`);
    told = true;
    if (Date.now() > deadline) throw new Error(`timed out waiting for the build lock ${lockPath}`);
    await sleep(LOCK_POLL_MS);
    const ready = await readGuest(finalDir);
    if (ready) return ready;
  }
}

const inFlight = new Map<string, Promise<BuiltinGuest>>();

async function ensureFor(
  root: string,
  progress: (msg: string) => void,
  fresh: boolean,
): Promise<BuiltinGuest> {
  const packages = await resolvePackagesCached(root, fresh);
  const agent = await ensureGuestAgent({ onProgress: progress });
  const recipe = defaultRecipe(packages.kernel, packages.busybox, { sha256: agent.sha256 });
  const key = recipeKey(recipe);
  const cached = await readGuest(join(root, key));
  if (cached) return cached;

  let pending = inFlight.get(join(root, key));
  if (!pending) {
    pending = buildUnderLock(root, key, recipe, agent.path, progress).finally(() =>
      inFlight.delete(join(root, key)),
    );
    inFlight.set(join(root, key), pending);
  }
  return pending;
}

/**
 * Returns the cached built-in guest (what `nqvm up` registers and the tests boot), building it
 * first if its recipe (scripts, module list, package versions) changed. Safe to call from many processes at once: one builds under a lock
 * file, the others wait, and a build is published by an atomic rename.
 *
 * @example
 * const guest = await ensureBuiltinGuest({ onProgress: console.log });
 * // kernel guest.kernel, initrd guest.initrd, root disk: a copy of guest.rootfs
 */
export async function ensureBuiltinGuest(opts: EnsureBuiltinGuestOptions = {}): Promise<BuiltinGuest> {
  const root = resolve(opts.cacheDir ?? defaultCacheRoot());
  const progress = opts.onProgress ?? (() => {});
  await mkdir(root, { recursive: true });
  try {
    return await ensureFor(root, progress, false);
  } catch (err) {
    if (!needsPackageUpdate(err)) throw err;
    progress(`${(err as Error).message}; running apt-get update and retrying`);
    await updatePackageLists();
    return ensureFor(root, progress, true);
  }
}
