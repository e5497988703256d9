/**
 * Turns a directory tree into an ext4 image file with `mkfs.ext4 -d`, no mount and no root
 * privileges beyond owning the files: e2fsprogs copies contents, modes, owners, times, links
 * and device nodes itself.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { NqvmError } from '@nqvm/api';

const execFileP = promisify(execFile);
const MiB = 1024 * 1024;
const INODE_SIZE = 256;

export interface TreeUsage {
  /** Allocated bytes (st_blocks), each hard-linked inode counted once. */
  bytes: number;
  inodes: number;
}

/** What a tree occupies, to size the file system made from it. */
export async function measureTree(root: string): Promise<TreeUsage> {
  const seen = new Set<number>();
  let bytes = 0;
  const visit = async (dir: string): Promise<void> => {
    const children = await fs.readdir(dir, { withFileTypes: true });
    for (let i = 0; i < children.length; i += 64) {
      await Promise.all(
        children.slice(i, i + 64).map(async (child) => {
          const path = join(dir, child.name);
          const st = await fs.lstat(path, { bigint: false });
          if (!seen.has(st.ino)) {
            seen.add(st.ino);
            bytes += st.blocks * 512;
          }
          if (child.isDirectory()) await visit(path);
        }),
      );
    }
  };
  await visit(root);
  return { bytes, inodes: seen.size + 1 };
}

/**
 * The file system's size and inode count: the data with 30% headroom plus 64 MiB (journal,
 * metadata, room for the guest to write), and half again as many inodes as files (at least 16k).
 */
export function ext4Geometry(usage: TreeUsage): { sizeMiB: number; inodes: number } {
  const inodes = Math.max(16_384, Math.ceil(usage.inodes * 1.5) + 4096);
  const bytes = usage.bytes * 1.3 + 64 * MiB + inodes * INODE_SIZE;
  return { sizeMiB: Math.ceil(bytes / MiB / 4) * 4, inodes };
}

/**
 * Runs `mkfs.ext4 -d <tree> -F -E root_owner=0:0 -L rootfs -N <inodes> <outFile> <size>M`.
 *
 * @example
 * const usage = await measureTree(tree);
 * await makeExt4(tree, '/var/lib/nqvm/images/x.ext4', ext4Geometry(usage));
 */
export async function makeExt4(
  tree: string,
  outFile: string,
  geometry: { sizeMiB: number; inodes: number },
  signal?: AbortSignal,
): Promise<void> {
  const args = [
    '-q',
    '-F',
    '-T',
    'default',
    '-d',
    tree,
    '-E',
    'root_owner=0:0',
    '-L',
    'rootfs',
    '-N',
    String(geometry.inodes),
  ];
  try {
    await execFileP('mkfs.ext4', [...args, outFile, `${geometry.sizeMiB}M`], { signal, maxBuffer: 4 * MiB });
  } catch (err) {
    if (signal?.aborted) throw err;
    const stderr = String((err as { stderr?: string }).stderr ?? (err as Error).message).trim();
    if (/No space left on device/i.test(stderr)) {
      throw new NqvmError(
        'INSUFFICIENT_STORAGE',
        `no space left to write the ${geometry.sizeMiB} MiB file system`,
      );
    }
    throw new NqvmError('IMPORT_FAILED', `mkfs.ext4 failed: ${stderr.slice(-500)}`);
  }
}
