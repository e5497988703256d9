import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { copyFile, open, readFile, rename, rm, stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import {
  COMPRESSION_MAGIC,
  detectCompression,
  elfInfo,
  type KernelCompression,
  KernelFormatError,
  parseBzImageHeader,
} from './bzimage';

export interface ExtractResult {
  format: 'elf';
  /** How the payload was compressed; 'none' when the input already was an ELF vmlinux. */
  compression: KernelCompression | 'none';
  /** Size of the written vmlinux. */
  bytes: number;
  machine: string;
}

/**
 * Node's zlib reads gzip only; the other formats go through Debian's tools, spawned with
 * argument arrays (package in the message when one is missing).
 */
export const DECOMPRESSORS: Record<
  Exclude<KernelCompression, 'gzip'>,
  { bin: string; args: string[]; pkg: string }
> = {
  xz: { bin: 'xz', args: ['-dc', '--single-stream'], pkg: 'xz-utils' },
  lzma: { bin: 'xz', args: ['-dc', '--format=lzma'], pkg: 'xz-utils' },
  lz4: { bin: 'lz4', args: ['-dc'], pkg: 'lz4' },
  zstd: { bin: 'zstd', args: ['-dcq'], pkg: 'zstd' },
  bzip2: { bin: 'bzip2', args: ['-dc'], pkg: 'bzip2' },
  lzo: { bin: 'lzop', args: ['-dc'], pkg: 'lzop' },
};

/** Returns null on success, else what the decompressor said (its output may still be usable). */
async function decompressTo(
  data: Buffer,
  compression: KernelCompression,
  outPath: string,
): Promise<string | null> {
  if (compression === 'gzip') {
    try {
      await pipeline(Readable.from([data]), createGunzip(), createWriteStream(outPath, { mode: 0o644 }));
      return null;
    } catch (err) {
      return (err as Error).message;
    }
  }
  const out = await open(outPath, 'w', 0o644);
  try {
    const tool = DECOMPRESSORS[compression];
    return await new Promise<string | null>((resolve, reject) => {
      const child = spawn(tool.bin, tool.args, { stdio: ['pipe', out.fd, 'pipe'] });
      let stderr = '';
      child.stderr!.on('data', (d: Buffer) => {
        stderr += d.toString();
      });
      child.on('error', (err) => {
        const e = err as NodeJS.ErrnoException;
        reject(
          e.code === 'ENOENT'
            ? new KernelFormatError(
                `${compression} kernel payload needs \`${tool.bin}\` (Debian package ${tool.pkg})`,
              )
            : err,
        );
      });
      // The tool may stop reading early on bad input; its exit status tells.
      child.stdin!.on('error', () => {});
      child.stdin!.end(data);
      child.on('close', (code) =>
        resolve(code === 0 ? null : stderr.trim() || `${tool.bin} exited with ${code}`),
      );
    });
  } finally {
    await out.close();
  }
}

async function verifyElf(path: string): Promise<{ machine: string; bytes: number } | null> {
  const fh = await open(path, 'r');
  try {
    const head = Buffer.alloc(64);
    await fh.read(head, 0, 64, 0);
    const info = elfInfo(head);
    return info ? { machine: info.machine, bytes: (await fh.stat()).size } : null;
  } finally {
    await fh.close();
  }
}

/** Candidate payloads: where the header says, else (boot protocol < 2.08) every magic found. */
function payloadCandidates(
  file: Buffer,
): { data: Buffer; compression: KernelCompression; expected: number | null }[] {
  const hdr = parseBzImageHeader(file);
  if (!hdr) throw new KernelFormatError('not a bzImage: no "HdrS" boot header at 0x202');
  if (hdr.payloadOffset !== null && hdr.payloadLength !== null) {
    const start = hdr.protectedModeOffset + hdr.payloadOffset;
    const payload = file.subarray(start, start + hdr.payloadLength);
    if (payload.length !== hdr.payloadLength)
      throw new KernelFormatError('bzImage payload runs past the end of the file');
    const compression = detectCompression(payload);
    if (!compression) {
      throw new KernelFormatError(
        `unknown payload compression (magic ${payload.subarray(0, 6).toString('hex')}) at offset ${start}`,
      );
    }
    // The kernel build appends the decompressed size (32-bit LE) after the compressed stream.
    return [
      {
        data: payload.subarray(0, payload.length - 4),
        compression,
        expected: payload.readUInt32LE(payload.length - 4),
      },
    ];
  }
  const pm = file.subarray(hdr.protectedModeOffset);
  const found: { data: Buffer; compression: KernelCompression; expected: number | null }[] = [];
  for (const [compression, magic] of COMPRESSION_MAGIC) {
    const at = pm.indexOf(magic);
    if (at >= 0) found.push({ data: pm.subarray(at), compression, expected: null });
  }
  if (found.length === 0) throw new KernelFormatError('no compressed payload found in the bzImage');
  return found;
}

/**
 * Writes the ELF vmlinux contained in a bzImage (what Firecracker needs on x86_64) and checks it.
 * Written to a temp file and renamed, so `outPath` is either absent or complete.
 *
 * @example
 * const r = await extractVmlinux('/boot/vmlinuz-6.1.0-28-cloud-amd64', '/var/lib/nqvm/vmlinux');
 * // { format: 'elf', compression: 'lz4', bytes: 34512345, machine: 'x86_64' }
 */
export async function extractVmlinux(bzImagePath: string, outPath: string): Promise<ExtractResult> {
  const file = await readFile(bzImagePath);
  const tmp = `${outPath}.tmp-${process.pid}`;
  const asIs = elfInfo(file.subarray(0, 64));
  if (asIs) {
    await copyFile(bzImagePath, tmp);
    await rename(tmp, outPath);
    return { format: 'elf', compression: 'none', bytes: file.length, machine: asIs.machine };
  }
  const failures: string[] = [];
  try {
    for (const c of payloadCandidates(file)) {
      const toolError = await decompressTo(c.data, c.compression, tmp);
      const elf = await verifyElf(tmp);
      if (!elf) {
        failures.push(`${c.compression}: ${toolError ?? 'the decompressed payload is not an ELF image'}`);
        continue;
      }
      if (c.expected !== null && elf.bytes !== c.expected) {
        failures.push(`${c.compression}: decompressed ${elf.bytes} bytes, the image says ${c.expected}`);
        continue;
      }
      await rename(tmp, outPath);
      return {
        format: 'elf',
        compression: c.compression,
        bytes: (await stat(outPath)).size,
        machine: elf.machine,
      };
    }
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  await rm(tmp, { force: true });
  throw new KernelFormatError(`cannot extract vmlinux from ${bzImagePath}: ${failures.join('; ')}`);
}
