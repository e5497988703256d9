import { open } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { GuestFile } from './guest-files';
import { type TreeEntry, writeTreeToDir } from './guest-tree';
import { runHost } from './host-command';

export interface Busybox {
  binary: Uint8Array;
  /** Applet paths from `busybox --list-full`, e.g. `bin/ls`, `sbin/init`. */
  applets: readonly string[];
}

const COMMON_DIRS: ReadonlyArray<[string, number]> = [
  ['bin', 0o755],
  ['sbin', 0o755],
  ['usr/bin', 0o755],
  ['usr/sbin', 0o755],
  ['etc', 0o755],
  ['proc', 0o555],
  ['sys', 0o555],
  ['dev', 0o755],
  ['run', 0o755],
  ['tmp', 0o1777],
  ['root', 0o700],
  ['mnt', 0o755],
  ['home', 0o755],
  ['var/log', 0o755],
];

/** Adds a 0755 directory entry for every parent that the list does not already hold. */
function withParentDirs(entries: TreeEntry[]): TreeEntry[] {
  const have = new Set(entries.map((e) => e.path));
  const out = [...entries];
  for (const e of entries) {
    for (let dir = dirname(e.path); dir !== '.' && !have.has(dir); dir = dirname(dir)) {
      have.add(dir);
      out.push({ kind: 'dir', path: dir, mode: 0o755 });
    }
  }
  return out;
}

function busyboxTree(busybox: Busybox): TreeEntry[] {
  const links = busybox.applets
    .filter((p) => p !== 'bin/busybox')
    .map((path): TreeEntry => ({ kind: 'symlink', path, target: '/bin/busybox' }));
  return [{ kind: 'file', path: 'bin/busybox', mode: 0o755, data: busybox.binary }, ...links];
}

/** A program the images carry besides busybox (the guest agent), at `path` (no leading slash). */
export interface GuestBinary {
  path: string;
  data: Uint8Array;
}

function commonTree(
  busybox: Busybox,
  files: readonly GuestFile[],
  binaries: readonly GuestBinary[],
): TreeEntry[] {
  return [
    ...COMMON_DIRS.map(([path, mode]): TreeEntry => ({ kind: 'dir', path, mode })),
    { kind: 'symlink', path: 'var/run', target: '/run' },
    ...busyboxTree(busybox),
    ...binaries.map((b): TreeEntry => ({ kind: 'file', path: b.path, mode: 0o755, data: b.data })),
    ...files.map((f): TreeEntry => ({ kind: 'file', path: f.path, mode: f.mode, data: f.text })),
  ];
}

/** The initramfs: busybox, the kernel modules under /lib/modules/NAME.ko, /init and /etc. */
export function initramfsTree(
  busybox: Busybox,
  files: readonly GuestFile[],
  modules: ReadonlyMap<string, Uint8Array>,
  binaries: readonly GuestBinary[] = [],
): TreeEntry[] {
  return withParentDirs([
    ...commonTree(busybox, files, binaries),
    { kind: 'dir', path: 'newroot', mode: 0o755 },
    { kind: 'dir', path: 'lib/modules', mode: 0o755 },
    // The kernel opens /dev/console for PID 1 before /init can mount devtmpfs.
    { kind: 'char-device', path: 'dev/console', mode: 0o600, major: 5, minor: 1 },
    { kind: 'char-device', path: 'dev/null', mode: 0o666, major: 1, minor: 3 },
    ...[...modules].map(
      ([name, data]): TreeEntry => ({ kind: 'file', path: `lib/modules/${name}.ko`, mode: 0o644, data }),
    ),
  ]);
}

/** The root disk: busybox (with busybox init as /sbin/init) and its /etc. */
export function rootfsTree(
  busybox: Busybox,
  files: readonly GuestFile[],
  binaries: readonly GuestBinary[] = [],
): TreeEntry[] {
  return withParentDirs(commonTree(busybox, files, binaries));
}

/** Applet paths of a busybox binary, asked from the binary itself. */
export async function busyboxApplets(binaryPath: string): Promise<string[]> {
  const out = await runHost(binaryPath, ['--list-full']);
  return out
    .split('\n')
    .map((l) => l.trim().replace(/^\/+/, ''))
    .filter(Boolean);
}

/**
 * Writes `entries` to a sparse ext4 image of `sizeMiB` with `mkfs.ext4 -d`: no mount, no root.
 * `stagingDir` must be an empty scratch folder.
 */
export async function writeExt4Image(
  image: string,
  entries: readonly TreeEntry[],
  sizeMiB: number,
  stagingDir: string,
): Promise<void> {
  await writeTreeToDir(stagingDir, entries);
  const file = await open(image, 'w');
  try {
    await file.truncate(sizeMiB * 1024 * 1024);
  } finally {
    await file.close();
  }
  await runHost('mkfs.ext4', [
    '-q',
    '-F',
    '-L',
    'nqvm-root',
    '-E',
    'root_owner=0:0',
    '-d',
    stagingDir,
    image,
  ]);
}
