/**
 * Disk tools the agent runs on raw disk files (cp, truncate, qemu-img, e2fsck, resize2fs), with
 * argument arrays and a clear error naming the command: shared by root disks and volumes.
 */
import { execFile } from 'node:child_process';
import { mkdir, open } from 'node:fs/promises';
import { dirname } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const COMMAND_TIMEOUT_MS = 10 * 60_000;

/** Runs `cmd args...`; a failure throws with the command and the last lines of its stderr. */
export async function runTool(cmd: string, args: string[]): Promise<void> {
  try {
    await run(cmd, args, { timeout: COMMAND_TIMEOUT_MS });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(
      `${cmd} ${args.join(' ')} failed: ${(e.stderr || e.message).trim().split('\n').slice(-3).join(' | ')}`,
    );
  }
}

/**
 * A copy of `src` at `dst` that keeps holes and shares extents where the file system can
 * (reflink on XFS and btrfs): Node's fs.copyFile writes every byte.
 */
export async function cloneFile(src: string, dst: string): Promise<void> {
  await mkdir(dirname(dst), { recursive: true });
  await runTool('cp', ['--reflink=auto', '--sparse=always', '--', src, dst]);
}

/** Whether the file holds an ext2/3/4 file system (superblock magic 0xEF53 at byte 1080). */
export async function isExtFilesystem(file: string): Promise<boolean> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(2);
    const { bytesRead } = await fh.read(buf, 0, 2, 1080);
    return bytesRead === 2 && buf.readUInt16LE(0) === 0xef53;
  } finally {
    await fh.close();
  }
}

/**
 * Grows the ext4 file system in `file` to the file's size, offline: e2fsck first (it exits 1
 * when it fixed something, which is fine before a resize), then resize2fs.
 */
export async function growExtFilesystem(file: string): Promise<void> {
  try {
    await run('e2fsck', ['-f', '-y', file], { timeout: COMMAND_TIMEOUT_MS });
  } catch (err) {
    if ((err as { code?: number }).code !== 1) {
      const e = err as { stderr?: string; message: string };
      throw new Error(`e2fsck -f -y ${file} failed: ${(e.stderr || e.message).trim()}`);
    }
  }
  await runTool('resize2fs', ['-f', file]);
}
