/**
 * Whether an imported file is what its kind says, told from its headers: a kernel is an x86_64
 * ELF vmlinux or an x86 bzImage; an initrd a newc cpio archive, plain or compressed (a
 * compressed one is decompressed far enough to see the archive); a root filesystem an ext2/3/4,
 * XFS, Btrfs, squashfs or EROFS file system, a disk with a partition table, or a standalone
 * qcow2. Anything else is refused with IMAGE_INVALID, naming what the bytes are instead.
 */
import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { type ImageKind, NqvmError } from '@nqvm/api';
import {
  DECOMPRESSORS,
  detectCompression,
  inspectKernel,
  type KernelCompression,
  parseBzImageHeader,
} from '@nqvm/api/kernel';

/** Enough to reach every header read here (the Btrfs superblock is at 64 KiB). */
const HEAD_BYTES = 128 * 1024;
const SUFFIX: Record<KernelCompression, string> = {
  gzip: 'gz',
  zstd: 'zst',
  xz: 'xz',
  lz4: 'lz4',
  bzip2: 'bz2',
  lzma: 'lzma',
  lzo: 'lzo',
};
const EXPECTED: Record<ImageKind, string> = {
  kernel: 'a kernel is an x86_64 ELF vmlinux or an x86 bzImage ("HdrS" boot header at 0x202)',
  initrd:
    'an initrd is a newc cpio archive ("070701"), plain or gzip, zstd, xz, lzma, lz4 (legacy), ' +
    'bzip2 or lzo compressed',
  rootfs:
    'a root file system is ext2/3/4, XFS, Btrfs, squashfs or EROFS, a disk with an MBR or GPT ' +
    'partition table, or a qcow2 disk without a backing file',
};
const LACKS: Record<ImageKind, string> = {
  kernel: 'no ELF or bzImage header',
  initrd: 'no cpio header, plain or compressed',
  rootfs: 'no file system, partition table or qcow2 header',
};

/** What a file's first bytes are; `id` is stable (error details), `text` is for people. */
export interface Found {
  id: string;
  text: string;
}

const at = (head: Buffer, offset: number, magic: string | Buffer) => {
  const m = typeof magic === 'string' ? Buffer.from(magic, 'latin1') : magic;
  return head.length >= offset + m.length && head.subarray(offset, offset + m.length).equals(m);
};

/** Bits of information per byte over the head; random or compressed data is close to 8. */
function entropy(bytes: Buffer): number {
  const counts = new Array<number>(256).fill(0);
  for (const b of bytes) counts[b] = counts[b]! + 1;
  let h = 0;
  for (const c of counts) if (c) h -= (c / bytes.length) * Math.log2(c / bytes.length);
  return h;
}

function isText(bytes: Buffer): boolean {
  let printable = 0;
  for (const b of bytes) {
    if (b === 0) return false;
    if (b === 9 || b === 10 || b === 13 || b >= 0x20) printable++;
  }
  return printable === bytes.length;
}

const ELF_TYPES: Record<number, string> = {
  1: 'an ELF object file',
  2: 'an ELF executable',
  3: 'an ELF shared object or PIE program',
  4: 'an ELF core dump',
};
const ELF_MACHINES: Record<number, string> = {
  3: 'x86',
  62: 'x86_64',
  40: 'arm',
  183: 'aarch64',
  243: 'riscv',
};

function elfHeader(head: Buffer): { elfClass: number; type: number; machine: number } | null {
  if (!at(head, 0, '\x7fELF') || head.length < 20) return null;
  const le = head[5] !== 2;
  return {
    elfClass: head[4] === 2 ? 64 : 32,
    type: le ? head.readUInt16LE(16) : head.readUInt16BE(16),
    machine: le ? head.readUInt16LE(18) : head.readUInt16BE(18),
  };
}

function describeElf(elf: { elfClass: number; type: number; machine: number }): string {
  const machine = ELF_MACHINES[elf.machine] ?? `machine 0x${elf.machine.toString(16)}`;
  return `${ELF_TYPES[elf.type] ?? 'an ELF file'} (${elf.elfClass}-bit, ${machine})`;
}

/** An MBR whose four entries are all well-formed and at least one is used. */
function hasMbr(head: Buffer): boolean {
  if (head.length < 512 || head.readUInt16LE(510) !== 0xaa55) return false;
  let used = 0;
  for (let i = 0; i < 4; i++) {
    const e = 446 + i * 16;
    const status = head[e]!;
    const type = head[e + 4]!;
    if (status !== 0 && status !== 0x80) return false;
    if (type === 0) continue;
    if (head.readUInt32LE(e + 8) === 0 || head.readUInt32LE(e + 12) === 0) return false;
    used++;
  }
  return used > 0;
}

const isCpioNewc = (head: Buffer) =>
  (at(head, 0, '070701') || at(head, 0, '070702')) &&
  head.length >= 110 &&
  /^[0-9a-fA-F]{104}$/.test(head.subarray(6, 110).toString('latin1'));

/**
 * What the first bytes of a file are, for messages: a known format, text of some kind, zeros,
 * random-looking bytes or unrecognised ones.
 *
 * @example
 * describeContent(Buffer.from('<!doctype html><html>')); // { id: 'html', text: 'an HTML page' }
 */
export function describeContent(head: Buffer): Found {
  if (head.length === 0) return { id: 'empty', text: 'an empty file' };
  if (head.every((b) => b === 0)) return { id: 'zeros', text: 'only zero bytes' };
  const elf = elfHeader(head);
  if (elf) return { id: 'elf', text: describeElf(elf) };
  if (parseBzImageHeader(head)) return { id: 'bzimage', text: 'an x86 bzImage kernel' };
  if (at(head, 0, '070701') || at(head, 0, '070702')) return { id: 'cpio', text: 'a newc cpio archive' };
  if (at(head, 0, '070707')) return { id: 'cpio-odc', text: 'an old-format (odc) cpio archive' };
  const compression = detectCompression(head);
  if (compression) return { id: compression, text: `${compression}-compressed data` };
  if (at(head, 0, Buffer.from([0x04, 0x22, 0x4d, 0x18])))
    return { id: 'lz4-frame', text: 'lz4-compressed data in the frame format' };
  if (at(head, 0, Buffer.from([0x51, 0x46, 0x49, 0xfb]))) return { id: 'qcow2', text: 'a qcow2 disk' };
  if (head.length >= 1082 && head.readUInt16LE(1080) === 0xef53)
    return { id: 'ext', text: 'an ext2/3/4 file system' };
  if (at(head, 0, 'XFSB')) return { id: 'xfs', text: 'an XFS file system' };
  if (at(head, 0x10040, '_BHRfS_M')) return { id: 'btrfs', text: 'a Btrfs file system' };
  if (at(head, 0, 'hsqs')) return { id: 'squashfs', text: 'a squashfs image' };
  if (head.length >= 1028 && head.readUInt32LE(1024) === 0xe0f5e1e2)
    return { id: 'erofs', text: 'an EROFS image' };
  if (at(head, 512, 'EFI PART') || at(head, 4096, 'EFI PART'))
    return { id: 'gpt', text: 'a disk with a GPT partition table' };
  if (at(head, 0x8001, 'CD001')) return { id: 'iso9660', text: 'an ISO 9660 (CD) image' };
  if (at(head, 0x36, 'FAT') || at(head, 0x52, 'FAT32')) return { id: 'fat', text: 'a FAT file system' };
  if (hasMbr(head)) return { id: 'mbr', text: 'a disk with an MBR partition table' };
  if (at(head, 257, 'ustar')) return { id: 'tar', text: 'a tar archive' };
  if (at(head, 0, 'PK\x03\x04')) return { id: 'zip', text: 'a zip archive' };
  if (at(head, 0, 'KDMV')) return { id: 'vmdk', text: 'a VMDK disk' };
  if (at(head, 0, 'vhdxfile')) return { id: 'vhdx', text: 'a VHDX disk' };
  const start = head.subarray(0, 4096);
  if (isText(start)) {
    const text = start
      .toString('utf8')
      .replace(/^\uFEFF/, '')
      .trimStart()
      .toLowerCase();
    if (text.startsWith('<!doctype html') || text.startsWith('<html'))
      return { id: 'html', text: 'an HTML page' };
    if (text.startsWith('<?xml')) return { id: 'xml', text: 'an XML document' };
    if (text.startsWith('{') || text.startsWith('[')) return { id: 'json', text: 'JSON text' };
    return { id: 'text', text: 'text' };
  }
  if (head.length >= 4096 && entropy(head) > 7.5) return { id: 'random', text: 'random-looking bytes' };
  return { id: 'unknown', text: `unrecognised bytes (starting ${head.subarray(0, 8).toString('hex')})` };
}

function invalid(kind: ImageKind, found: Found, problem: string): NqvmError {
  return new NqvmError('IMAGE_INVALID', `the file is not a ${kind} image: ${problem} (${EXPECTED[kind]})`, {
    field: 'kind',
    kind,
    found: found.id,
  });
}

const refuse = (kind: ImageKind, found: Found) => invalid(kind, found, `${found.text}, ${LACKS[kind]}`);

async function readHead(file: string): Promise<{ head: Buffer; size: number }> {
  const fh = await fs.open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    const head = Buffer.alloc(Math.min(HEAD_BYTES, size));
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    return { head: head.subarray(0, bytesRead), size };
  } finally {
    await fh.close();
  }
}

/** Reads `stream` until it has `want` bytes, ends or fails; answers what arrived. */
function firstBytes(stream: Readable, want: number, stop: () => void): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let got = 0;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      stop();
      resolve(Buffer.concat(chunks).subarray(0, want));
    };
    stream.on('data', (c: Buffer) => {
      chunks.push(c);
      got += c.length;
      if (got >= want) finish();
    });
    stream.on('end', finish);
    stream.on('error', finish);
    stream.on('close', finish);
  });
}

/**
 * The first `want` decompressed bytes of a compressed file, read as far as needed; null when
 * the decompressor for `compression` cannot run (lzop is not installed everywhere): the magic
 * number then has to do.
 */
async function peekDecompressed(
  file: string,
  compression: KernelCompression,
  want: number,
): Promise<Buffer | null> {
  const input = createReadStream(file);
  input.on('error', () => {});
  if (compression === 'gzip') {
    const gunzip = createGunzip();
    input.pipe(gunzip);
    return firstBytes(gunzip, want, () => {
      input.destroy();
      gunzip.destroy();
    });
  }
  const tool = DECOMPRESSORS[compression];
  const child = spawn(tool.bin, tool.args, { stdio: ['pipe', 'pipe', 'ignore'] });
  const started = await new Promise<boolean>((resolve) => {
    child.once('spawn', () => resolve(true));
    child.on('error', () => resolve(false));
  });
  if (!started) {
    input.destroy();
    return null;
  }
  child.stdin.on('error', () => {});
  input.pipe(child.stdin);
  return firstBytes(child.stdout, want, () => {
    input.destroy();
    child.kill();
  });
}

async function checkKernel(file: string, head: Buffer, size: number, found: Found): Promise<string> {
  const elf = elfHeader(head);
  if (elf) {
    if (elf.elfClass !== 64 || elf.machine !== 62 || elf.type !== 2)
      throw invalid('kernel', found, `${found.text}; a vmlinux is a 64-bit x86_64 ELF executable`);
    return 'vmlinux';
  }
  if (found.id !== 'bzimage') throw refuse('kernel', found);
  const info = await inspectKernel(file);
  if (info.format === 'bzimage' && info.payloadOffset + info.payloadLength > size)
    throw invalid(
      'kernel',
      found,
      `a truncated bzImage: its header places the payload up to byte ${info.payloadOffset + info.payloadLength}, the file has ${size}`,
    );
  return 'bzimage';
}

async function checkInitrd(file: string, head: Buffer, found: Found): Promise<string> {
  // The kernel skips zero padding before (and between) the archives of an initramfs.
  const first = head.findIndex((b) => b !== 0);
  const archive = first > 0 && first % 4 === 0 ? head.subarray(first) : head;
  if (isCpioNewc(archive)) return 'cpio';
  if (found.id === 'cpio' || found.id === 'cpio-odc')
    throw invalid(
      'initrd',
      found,
      found.id === 'cpio'
        ? 'a cpio header whose fields are not hexadecimal'
        : `${found.text}; the kernel unpacks newc only (cpio -H newc)`,
    );
  const compression = detectCompression(head);
  if (!compression) throw refuse('initrd', found);
  const inner = await peekDecompressed(file, compression, 4096);
  if (inner !== null && !isCpioNewc(inner)) {
    const what = inner.length === 0 ? 'nothing: it does not decompress' : describeContent(inner).text;
    throw invalid('initrd', found, `${found.text} holding ${what}, not a newc cpio archive`);
  }
  return `cpio.${SUFFIX[compression]}`;
}

function checkRootfs(head: Buffer, size: number, found: Found): string {
  switch (found.id) {
    case 'qcow2': {
      if (head.length < 72) throw invalid('rootfs', found, 'a truncated qcow2 header');
      const version = head.readUInt32BE(4);
      if (version !== 2 && version !== 3)
        throw invalid('rootfs', found, `a qcow2 header of version ${version}`);
      const backingAt = Number(head.readBigUInt64BE(8));
      if (backingAt !== 0) {
        const name = head.subarray(backingAt, backingAt + head.readUInt32BE(16)).toString('utf8');
        throw invalid(
          'rootfs',
          found,
          `a qcow2 disk with a backing file${name ? ` (${name})` : ''}; make it standalone with qemu-img convert -O qcow2`,
        );
      }
      if (head.readUInt32BE(32) !== 0) throw invalid('rootfs', found, 'an encrypted qcow2 disk');
      // Incompatible feature bit 2: the data lives in an external file the header names.
      if (version === 3 && head.length >= 80 && (head.readBigUInt64BE(72) & 4n) !== 0n)
        throw invalid('rootfs', found, 'a qcow2 disk whose data is in an external file');
      return 'qcow2';
    }
    case 'ext': {
      const sb = head.subarray(1024, 1024 + 1024);
      if (sb.length < 1024) throw invalid('rootfs', found, 'a truncated ext2/3/4 superblock');
      const logBlock = sb.readUInt32LE(24);
      const is64bit = (sb.readUInt32LE(96) & 0x80) !== 0;
      const blocks = sb.readUInt32LE(4) + (is64bit ? sb.readUInt32LE(0x150) * 2 ** 32 : 0);
      if (logBlock > 6 || blocks === 0 || sb.readUInt32LE(0) === 0)
        throw invalid('rootfs', found, 'an ext2/3/4 superblock with impossible sizes');
      const span = blocks * (1024 << logBlock);
      if (span > size)
        throw invalid(
          'rootfs',
          found,
          `a truncated ext2/3/4 file system: it spans ${span} bytes, the file has ${size}`,
        );
      return 'ext4';
    }
    case 'xfs':
    case 'btrfs':
    case 'squashfs':
    case 'erofs':
    case 'gpt':
    case 'mbr':
      return 'raw';
    default:
      if (detectCompression(head) || found.id === 'lz4-frame')
        throw invalid('rootfs', found, `${found.text}; decompress it before importing`);
      throw refuse('rootfs', found);
  }
}

/**
 * The format name stored with the image; throws IMAGE_INVALID (422) for bytes that are not an
 * image of that kind, saying what they are.
 *
 * @example
 * await validateImage('kernel', '/boot/vmlinuz-6.1.0-28-cloud-amd64'); // 'bzimage'
 * await validateImage('rootfs', 'random.bin'); // throws: "... random-looking bytes, no file system ..."
 */
export async function validateImage(kind: ImageKind, file: string): Promise<string> {
  const { head, size } = await readHead(file);
  const found = describeContent(head);
  if (kind === 'kernel') return checkKernel(file, head, size, found);
  if (kind === 'initrd') return checkInitrd(file, head, found);
  return checkRootfs(head, size, found);
}
