import { open } from 'node:fs/promises';

/**
 * Reading kernel images: an uncompressed ELF `vmlinux` (what Firecracker loads on x86_64) or a
 * bzImage (`vmlinuz`), whose protected-mode part holds the compressed ELF as its payload.
 * Offsets are those of the Linux x86 boot protocol (Documentation/arch/x86/boot.rst).
 */

export type KernelCompression = 'gzip' | 'xz' | 'lz4' | 'zstd' | 'bzip2' | 'lzma' | 'lzo';

export type KernelInfo =
  | { format: 'elf'; elfClass: 32 | 64; machine: string; bytes: number }
  | {
      format: 'bzimage';
      /** e.g. "2.15" */
      bootProtocol: string;
      setupSects: number;
      /** Absolute file offset of the payload (start of the protected-mode code + payload_offset). */
      payloadOffset: number;
      payloadLength: number;
      compression: KernelCompression | null;
      /** The version string the image carries, e.g. "6.1.0-28-cloud-amd64 (debian-kernel@...) #1 SMP ..." */
      kernelVersion: string | null;
      bytes: number;
    }
  | { format: 'unknown'; bytes: number };

export class KernelFormatError extends Error {
  readonly code = 'KERNEL_FORMAT';
  constructor(message: string) {
    super(message);
    this.name = 'KernelFormatError';
  }
}

const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);
const HDRS = Buffer.from('HdrS', 'latin1');

/** Magic numbers as the kernel's own compressors write them. */
export const COMPRESSION_MAGIC: readonly [KernelCompression, Buffer][] = [
  ['gzip', Buffer.from([0x1f, 0x8b, 0x08])],
  ['xz', Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])],
  ['lz4', Buffer.from([0x02, 0x21, 0x4c, 0x18])],
  ['zstd', Buffer.from([0x28, 0xb5, 0x2f, 0xfd])],
  ['bzip2', Buffer.from('BZh', 'latin1')],
  ['lzo', Buffer.from([0x89, 0x4c, 0x5a, 0x4f, 0x00, 0x0d, 0x0a, 0x1a, 0x0a])],
  ['lzma', Buffer.from([0x5d, 0x00, 0x00])],
];

export function detectCompression(head: Buffer): KernelCompression | null {
  for (const [name, magic] of COMPRESSION_MAGIC) {
    if (head.length >= magic.length && head.subarray(0, magic.length).equals(magic)) return name;
  }
  return null;
}

const ELF_MACHINES: Record<number, string> = { 3: 'x86', 62: 'x86_64', 183: 'aarch64', 243: 'riscv' };

export function elfInfo(head: Buffer): { elfClass: 32 | 64; machine: string } | null {
  if (head.length < 20 || !head.subarray(0, 4).equals(ELF_MAGIC)) return null;
  const elfClass = head[4] === 2 ? 64 : head[4] === 1 ? 32 : null;
  if (elfClass === null) return null;
  const machineId = head[5] === 2 ? head.readUInt16BE(18) : head.readUInt16LE(18);
  return { elfClass, machine: ELF_MACHINES[machineId] ?? `0x${machineId.toString(16)}` };
}

export interface BzImageHeader {
  bootProtocol: string;
  protocolNumber: number;
  setupSects: number;
  /** File offset where the protected-mode kernel begins: (setup_sects + 1) * 512. */
  protectedModeOffset: number;
  /** Relative to the protected-mode start; only from boot protocol 2.08. */
  payloadOffset: number | null;
  payloadLength: number | null;
  kernelVersion: string | null;
}

/** Parses the real-mode header of a bzImage (null when the bytes are not one). */
export function parseBzImageHeader(head: Buffer): BzImageHeader | null {
  if (head.length < 0x250) return null;
  if (head.readUInt16LE(0x1fe) !== 0xaa55 || !head.subarray(0x202, 0x206).equals(HDRS)) return null;
  const protocolNumber = head.readUInt16LE(0x206);
  // setup_sects 0 means 4 (boot protocol, "for backwards compatibility").
  const setupSects = head[0x1f1] || 4;
  const hasPayload = protocolNumber >= 0x0208;
  let kernelVersion: string | null = null;
  const versionPtr = head.readUInt16LE(0x20e);
  if (versionPtr !== 0 && versionPtr + 0x200 < head.length) {
    const start = versionPtr + 0x200;
    const end = head.indexOf(0, start);
    if (end > start) kernelVersion = head.subarray(start, end).toString('latin1');
  }
  return {
    bootProtocol: `${protocolNumber >> 8}.${(protocolNumber & 0xff).toString().padStart(2, '0')}`,
    protocolNumber,
    setupSects,
    protectedModeOffset: (setupSects + 1) * 512,
    payloadOffset: hasPayload ? head.readUInt32LE(0x248) : null,
    payloadLength: hasPayload ? head.readUInt32LE(0x24c) : null,
    kernelVersion,
  };
}

async function readAt(path: string, offset: number, length: number): Promise<{ buf: Buffer; size: number }> {
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const buf = Buffer.alloc(Math.max(0, Math.min(length, size - offset)));
    await fh.read(buf, 0, buf.length, offset);
    return { buf, size };
  } finally {
    await fh.close();
  }
}

/**
 * Tells an ELF vmlinux from a bzImage, reading only headers.
 *
 * @example
 * const info = await inspectKernel('/boot/vmlinuz-6.1.0-28-cloud-amd64');
 * if (info.format === 'bzimage') await extractVmlinux(path, out); // Firecracker needs the ELF
 */
export async function inspectKernel(path: string): Promise<KernelInfo> {
  const { buf: head, size } = await readAt(path, 0, 64 * 1024);
  const elf = elfInfo(head);
  if (elf) return { format: 'elf', ...elf, bytes: size };
  const hdr = parseBzImageHeader(head);
  if (!hdr) return { format: 'unknown', bytes: size };
  let compression: KernelCompression | null = null;
  let payloadOffset = hdr.protectedModeOffset;
  if (hdr.payloadOffset !== null) {
    payloadOffset = hdr.protectedModeOffset + hdr.payloadOffset;
    compression = detectCompression((await readAt(path, payloadOffset, 16)).buf);
  }
  return {
    format: 'bzimage',
    bootProtocol: hdr.bootProtocol,
    setupSects: hdr.setupSects,
    payloadOffset,
    payloadLength: hdr.payloadLength ?? size - payloadOffset,
    compression,
    kernelVersion: hdr.kernelVersion,
    bytes: size,
  };
}
