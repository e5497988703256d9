import { chmod, mkdir, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';

/** One node of a guest file system, independent of how it is materialised (cpio or ext4). */
export type TreeEntry =
  | { kind: 'dir'; path: string; mode: number }
  | { kind: 'file'; path: string; mode: number; data: Uint8Array | string }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'char-device'; path: string; mode: number; major: number; minor: number };

/** Paths are relative to the guest root, without a leading slash: `bin/busybox`. */
export function sortParentsFirst(entries: readonly TreeEntry[]): TreeEntry[] {
  const depth = (p: string) => p.split('/').length;
  return [...entries].sort((a, b) => depth(a.path) - depth(b.path) || a.path.localeCompare(b.path));
}

/**
 * Writes the tree under `root` (for `mkfs.ext4 -d`). Device nodes are skipped: they need
 * privileges, and the guest mounts devtmpfs on /dev anyway.
 */
export async function writeTreeToDir(root: string, entries: readonly TreeEntry[]): Promise<void> {
  for (const e of sortParentsFirst(entries)) {
    const target = join(root, e.path);
    switch (e.kind) {
      case 'dir':
        await mkdir(target, { recursive: true });
        await chmod(target, e.mode);
        break;
      case 'file':
        await mkdir(dirname(target), { recursive: true });
        await writeFile(target, e.data);
        await chmod(target, e.mode);
        break;
      case 'symlink':
        await mkdir(dirname(target), { recursive: true });
        await symlink(e.target, target);
        break;
      case 'char-device':
        break;
    }
  }
}
