/**
 * Whether an ext4 root filesystem has cloud-init, read with e2fsprogs' debugfs (no mount). What
 * kind of file an import is, and whether it is one at all, is validation.ts's.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

/**
 * Whether an ext4 image has /usr/bin/cloud-init, or null when debugfs cannot tell (missing
 * tool, unreadable file system). debugfs exits 0 either way; its output says.
 */
export async function detectCloudInit(file: string): Promise<boolean | null> {
  try {
    const { stdout, stderr } = await run('debugfs', ['-R', 'stat /usr/bin/cloud-init', file], {
      maxBuffer: 1024 * 1024,
    });
    if (/^Inode:\s*\d+/m.test(stdout)) return true;
    if (/File not found by ext2_lookup/.test(stderr)) return false;
    return null;
  } catch {
    return null;
  }
}
