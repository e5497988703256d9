/**
 * What an imported file is, told from its first bytes per kind: a kernel is an ELF vmlinux or a
 * bzImage, an initrd a (compressed) cpio archive, a root filesystem ext4, qcow2 or raw. Also
 * whether an ext4 root filesystem has cloud-init, read with e2fsprogs' debugfs (no mount).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import { promisify } from 'node:util';
import { type ImageKind, InputError } from '@nqvm/api';
import { detectCompression, inspectKernel, type KernelCompression } from '@nqvm/api/kernel';

const run = promisify(execFile);

const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb]);
/** ext2/3/4 keep s_magic 0xEF53 at byte 56 of the superblock, which starts at byte 1024. */
const EXT_MAGIC_OFFSET = 1024 + 56;
const EXT_MAGIC = 0xef53;
const CPIO_MAGICS = ['070701', '070702', '070707'].map((m) => Buffer.from(m, 'latin1'));
const SUFFIX: Record<KernelCompression, string> = {
  gzip: 'gz',
  zstd: 'zst',
  xz: 'xz',
  lz4: 'lz4',
  bzip2: 'bz2',
  lzma: 'lzma',
  lzo: 'lzo',
};

async function readHead(file: string, length: number): Promise<Buffer> {
  const fh = await fs.open(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

function notA(kind: ImageKind, what: string): InputError {
  return new InputError(`the file is not a ${kind} image: ${what}`, { field: 'kind', kind });
}

/**
 * The format name stored with the image; refuses bytes that cannot be an image of that kind.
 *
 * @example
 * await detectFormat('kernel', '/boot/vmlinuz-6.1.0-28-cloud-amd64'); // 'bzimage'
 * await detectFormat('rootfs', 'disk.img'); // 'ext4', 'qcow2' or 'raw'
 */
export async function detectFormat(kind: ImageKind, file: string): Promise<string> {
  if (kind === 'kernel') {
    const info = await inspectKernel(file);
    if (info.format === 'elf') return 'vmlinux';
    if (info.format === 'bzimage') return 'bzimage';
    throw notA(kind, 'neither an ELF vmlinux nor a bzImage');
  }
  const head = await readHead(file, 4096);
  if (kind === 'initrd') {
    if (CPIO_MAGICS.some((m) => head.subarray(0, m.length).equals(m))) return 'cpio';
    const compression = detectCompression(head);
    if (compression) return `cpio.${SUFFIX[compression]}`;
    throw notA(kind, 'neither a cpio archive nor a compressed one');
  }
  if (head.subarray(0, 4).equals(QCOW2_MAGIC)) return 'qcow2';
  if (head.length >= EXT_MAGIC_OFFSET + 2 && head.readUInt16LE(EXT_MAGIC_OFFSET) === EXT_MAGIC) return 'ext4';
  const compression = detectCompression(head);
  if (compression && compression !== 'lzma')
    throw notA(kind, `it is ${compression}-compressed; decompress it before importing`);
  return 'raw';
}

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
