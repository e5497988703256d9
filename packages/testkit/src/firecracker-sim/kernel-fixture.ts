import { writeFile } from 'node:fs/promises';

/**
 * A tiny but well-formed x86_64 ELF executable (header, one PT_LOAD segment, `hlt; jmp .`):
 * what the simulator and the kernel tools need from a "vmlinux".
 */
export function tinyElfKernel(): Buffer {
  const code = Buffer.from([0xf4, 0xeb, 0xfd]);
  const ehsize = 64;
  const phsize = 56;
  const entry = 0x1000000n + BigInt(ehsize + phsize);
  const buf = Buffer.alloc(ehsize + phsize + code.length);
  buf.write('\x7fELF', 0, 'latin1');
  buf[4] = 2; // ELFCLASS64
  buf[5] = 1; // little endian
  buf[6] = 1; // EV_CURRENT
  buf.writeUInt16LE(2, 16); // ET_EXEC
  buf.writeUInt16LE(0x3e, 18); // EM_X86_64
  buf.writeUInt32LE(1, 20);
  buf.writeBigUInt64LE(entry, 24);
  buf.writeBigUInt64LE(BigInt(ehsize), 32); // e_phoff
  buf.writeUInt16LE(ehsize, 52);
  buf.writeUInt16LE(phsize, 54);
  buf.writeUInt16LE(1, 56); // e_phnum
  buf.writeUInt16LE(64, 58); // e_shentsize
  const ph = ehsize;
  buf.writeUInt32LE(1, ph); // PT_LOAD
  buf.writeUInt32LE(5, ph + 4); // R+X
  buf.writeBigUInt64LE(0n, ph + 8);
  buf.writeBigUInt64LE(0x1000000n, ph + 16);
  buf.writeBigUInt64LE(0x1000000n, ph + 24);
  buf.writeBigUInt64LE(BigInt(buf.length), ph + 32);
  buf.writeBigUInt64LE(BigInt(buf.length), ph + 40);
  buf.writeBigUInt64LE(0x200000n, ph + 48);
  code.copy(buf, ehsize + phsize);
  return buf;
}

export async function writeTinyElfKernel(path: string): Promise<string> {
  await writeFile(path, tinyElfKernel());
  return path;
}
