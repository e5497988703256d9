/**
 * A VM's own writable root disk, made from a shared read-only image without a full byte copy:
 * a qcow2 overlay for QEMU, a reflink or sparse copy grown to size for Firecracker (raw only).
 * Commands run with argument arrays, never through a shell, never with sudo.
 */
import { execFile } from 'node:child_process';
import { open, stat } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { DiskSpec, VmmKind } from '../drivers/types';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const COMMAND_TIMEOUT_MS = 10 * 60_000;

export function rootDiskFile(kind: VmmKind): string {
  return kind === 'qemu' ? 'root.qcow2' : 'root.raw';
}

export function rootDiskSpec(vmDir: string, kind: VmmKind): DiskSpec {
  return {
    id: 'root',
    path: path.join(vmDir, rootDiskFile(kind)),
    format: kind === 'qemu' ? 'qcow2' : 'raw',
    readOnly: false,
    isRoot: true,
  };
}

async function runTool(cmd: string, args: string[]): Promise<void> {
  try {
    await run(cmd, args, { timeout: COMMAND_TIMEOUT_MS });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(
      `${cmd} ${args.join(' ')} failed: ${(e.stderr || e.message).trim().split('\n').slice(-3).join(' | ')}`,
    );
  }
}

/** Whether the file holds an ext2/3/4 file system (superblock magic 0xEF53 at byte 1080). */
async function isExtFilesystem(file: string): Promise<boolean> {
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
 * Creates `target` from the raw `image`. A larger `sizeMib` grows the disk: the qcow2 overlay
 * gets that virtual size (the guest grows its file system), the raw copy is extended and, when it
 * holds ext4, its file system too. A smaller size than the image keeps the image's size.
 *
 * @example
 * await createRootDisk('qemu', '/var/lib/nqvm/images/ab12.ext4', `${vmDir}/root.qcow2`, 2048);
 */
export async function createRootDisk(
  kind: VmmKind,
  image: string,
  target: string,
  sizeMib: number | null,
): Promise<void> {
  const imageBytes = (await stat(image)).size;
  const grow = sizeMib !== null && sizeMib * MiB > imageBytes;
  if (kind === 'qemu') {
    const args = ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', image, target];
    if (grow) args.push(`${sizeMib}M`);
    await runTool('qemu-img', args);
    return;
  }
  // Node's fs.copyFile writes every byte; cp keeps holes and reflinks where the file system can.
  await runTool('cp', ['--reflink=auto', '--sparse=always', '--', image, target]);
  if (!grow) return;
  await runTool('truncate', ['-s', `${sizeMib}M`, '--', target]);
  if (await isExtFilesystem(target)) {
    await runE2fsck(target);
    await runTool('resize2fs', ['-f', target]);
  }
}

/** e2fsck exits 1 when it fixed something, which is fine before a resize. */
async function runE2fsck(target: string): Promise<void> {
  try {
    await run('e2fsck', ['-f', '-y', target], { timeout: COMMAND_TIMEOUT_MS });
  } catch (err) {
    if ((err as { code?: number }).code === 1) return;
    const e = err as { stderr?: string; message: string };
    throw new Error(`e2fsck -f -y ${target} failed: ${(e.stderr || e.message).trim()}`);
  }
}
