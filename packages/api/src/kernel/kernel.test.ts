import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { tinyElfKernel } from '@nqvm/testkit/firecracker-sim/index';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inspectKernel, type KernelCompression, KernelFormatError } from './bzimage';
import { extractVmlinux } from './extract';

/** A "vmlinux": the tiny ELF plus padding, so every compressor has something to chew. */
const vmlinux = Buffer.concat([tinyElfKernel(), Buffer.from('nqvm-kernel-test '.repeat(4096))]);

const COMPRESSORS: Record<Exclude<KernelCompression, 'lzo'>, (b: Buffer) => Buffer> = {
  gzip: (b) => gzipSync(b, { level: 9 }),
  xz: (b) => execFileSync('xz', ['-c', '--check=crc32'], { input: b }),
  lzma: (b) => execFileSync('xz', ['-c', '--format=lzma'], { input: b }),
  lz4: (b) => execFileSync('lz4', ['-l', '-c'], { input: b }),
  zstd: (b) => execFileSync('zstd', ['-c', '-q'], { input: b }),
  bzip2: (b) => execFileSync('bzip2', ['-c'], { input: b }),
};

/**
 * A minimal bzImage: boot sector signature, "HdrS" header with setup_sects, the kernel version
 * pointer and (protocol >= 2.08) payload_offset/payload_length, then the protected-mode part
 * with the compressed payload followed by its decompressed size, as the kernel build lays it.
 */
function buildBzImage(compressed: Buffer, size: number, protocol = 0x020f): Buffer {
  const setupSects = 1;
  const pm = (setupSects + 1) * 512;
  const stub = Buffer.alloc(0x40, 0x90);
  const payload = Buffer.concat([compressed, Buffer.alloc(4)]);
  payload.writeUInt32LE(size, compressed.length);
  const file = Buffer.alloc(pm + stub.length + payload.length);
  file[0x1f1] = setupSects;
  file.writeUInt16LE(0xaa55, 0x1fe);
  file.write('HdrS', 0x202, 'latin1');
  file.writeUInt16LE(protocol, 0x206);
  file.writeUInt16LE(0x300 - 0x200, 0x20e);
  file.write('6.1.0-test (nqvm) #1 SMP\0', 0x300, 'latin1');
  if (protocol >= 0x0208) {
    file.writeUInt32LE(stub.length, 0x248);
    file.writeUInt32LE(payload.length, 0x24c);
  }
  stub.copy(file, pm);
  payload.copy(file, pm + stub.length);
  return file;
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'nqvm-kernel-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('synthetic bzImages', () => {
  for (const [compression, compress] of Object.entries(COMPRESSORS)) {
    it(`extracts a ${compression} payload to the original ELF`, async () => {
      const image = join(dir, `bzImage-${compression}`);
      await writeFile(image, buildBzImage(compress(vmlinux), vmlinux.length));
      const info = await inspectKernel(image);
      expect(info).toMatchObject({ format: 'bzimage', compression, bootProtocol: '2.15', setupSects: 1 });
      expect(info.format === 'bzimage' && info.kernelVersion).toBe('6.1.0-test (nqvm) #1 SMP');
      const out = join(dir, `vmlinux-${compression}`);
      const r = await extractVmlinux(image, out);
      expect(r).toEqual({ format: 'elf', compression, bytes: vmlinux.length, machine: 'x86_64' });
      expect((await readFile(out)).equals(vmlinux)).toBe(true);
    });
  }

  it('finds the payload by its magic before boot protocol 2.08', async () => {
    const image = join(dir, 'bzImage-old');
    await writeFile(image, buildBzImage(gzipSync(vmlinux), vmlinux.length, 0x0206));
    expect(await inspectKernel(image)).toMatchObject({
      format: 'bzimage',
      bootProtocol: '2.06',
      compression: null,
    });
    const r = await extractVmlinux(image, join(dir, 'vmlinux-old'));
    expect(r.compression).toBe('gzip');
  });

  it('refuses a corrupt payload and leaves no output behind', async () => {
    const bad = COMPRESSORS.zstd(vmlinux);
    bad.fill(0x42, 16, 64);
    const image = join(dir, 'bzImage-bad');
    await writeFile(image, buildBzImage(bad, vmlinux.length));
    const out = join(dir, 'vmlinux-bad');
    await expect(extractVmlinux(image, out)).rejects.toBeInstanceOf(KernelFormatError);
    expect((await readdir(dir)).filter((f) => f.startsWith('vmlinux-bad'))).toEqual([]);
  });

  it('recognises an ELF vmlinux and rejects what is neither', async () => {
    const elf = join(dir, 'vmlinux-plain');
    await writeFile(elf, vmlinux);
    expect(await inspectKernel(elf)).toEqual({
      format: 'elf',
      elfClass: 64,
      machine: 'x86_64',
      bytes: vmlinux.length,
    });
    expect((await extractVmlinux(elf, join(dir, 'vmlinux-copy'))).compression).toBe('none');
    const junk = join(dir, 'junk');
    await writeFile(junk, Buffer.alloc(8192, 1));
    expect(await inspectKernel(junk)).toEqual({ format: 'unknown', bytes: 8192 });
    await expect(extractVmlinux(junk, join(dir, 'vmlinux-junk'))).rejects.toThrow(/not a bzImage/);
  });
});

/**
 * The Debian cloud kernel: the package `linux-image-cloud-amd64` depends on, fetched with
 * apt-get download and unpacked with dpkg -x, cached under ~/.cache/nqvm/.
 */
async function debianCloudKernel(): Promise<string> {
  const depends = execFileSync('apt-cache', ['depends', 'linux-image-cloud-amd64'], { encoding: 'utf8' });
  const pkg = /Depends: (linux-image-[^\s]+)/.exec(depends)?.[1];
  if (!pkg) throw new Error(`cannot tell which kernel linux-image-cloud-amd64 depends on:\n${depends}`);
  const cache = join(homedir(), '.cache', 'nqvm', 'debian-kernel', pkg);
  if (!existsSync(cache)) {
    const work = await mkdtemp(join(tmpdir(), 'nqvm-kernel-dl-'));
    try {
      execFileSync('apt-get', ['download', '-q', pkg], { cwd: work, stdio: 'pipe' });
      const deb = (await readdir(work)).find((f) => f.endsWith('.deb'));
      if (!deb) throw new Error(`apt-get download ${pkg} produced no .deb`);
      execFileSync('dpkg', ['-x', join(work, deb), join(work, 'x')]);
      await mkdir(join(cache, '..'), { recursive: true });
      await rename(join(work, 'x'), cache);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }
  const boot = join(cache, 'boot');
  const vmlinuz = (await readdir(boot)).find((f) => f.startsWith('vmlinuz-'));
  if (!vmlinuz) throw new Error(`no vmlinuz in ${boot}`);
  return join(boot, vmlinuz);
}

describe('the Debian cloud kernel', () => {
  it('is an lz4 bzImage that extracts to an x86_64 ELF vmlinux', { timeout: 600_000 }, async () => {
    const vmlinuz = await debianCloudKernel();
    const info = await inspectKernel(vmlinuz);
    expect(info).toMatchObject({ format: 'bzimage', compression: 'lz4' });
    const out = join(dir, 'vmlinux-debian');
    const r = await extractVmlinux(vmlinuz, out);
    expect(r).toMatchObject({ format: 'elf', compression: 'lz4', machine: 'x86_64' });
    expect(r.bytes).toBeGreaterThan(info.bytes);
    expect(await inspectKernel(out)).toMatchObject({ format: 'elf', elfClass: 64, machine: 'x86_64' });
  });
});
