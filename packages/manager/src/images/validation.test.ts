import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { tinyElfKernel } from '@nqvm/testkit/firecracker-sim/index';
import { afterAll, describe, expect, it } from 'vitest';
import { describeContent, validateImage } from './validation';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-validation-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

let n = 0;
function file(bytes: Buffer): string {
  const p = path.join(dir, `f${n++}`);
  fs.writeFileSync(p, bytes);
  return p;
}

const run = (cmd: string, args: string[], input?: Buffer | string, cwd?: string) =>
  execFileSync(cmd, args, { input, cwd, stdio: ['pipe', 'pipe', 'ignore'], maxBuffer: 64 << 20 });

function tree(files: Record<string, string>): string {
  const root = fs.mkdtempSync(path.join(dir, 'tree-'));
  for (const [f, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(root, f)), { recursive: true });
    fs.writeFileSync(path.join(root, f), text);
  }
  return root;
}

/** A cpio archive of an init script, as `cpio -o` writes it in `format`. */
function cpio(format: 'newc' | 'odc'): Buffer {
  const root = tree({ init: '#!/bin/sh\necho hi\n' });
  return run('cpio', ['-o', '-H', format, '--quiet'], 'init\n', root);
}

/** A file system of `size` made by `mkfs` (a sparse file, as the tools leave it). */
function mkfs(tool: string, size: string, args: string[] = []): string {
  const p = path.join(dir, `fs${n++}`);
  run('truncate', ['-s', size, p]);
  run(tool, [...args, p]);
  return p;
}

/** A disk with one Linux partition, partitioned by sfdisk with `label`. */
function partitioned(label: 'dos' | 'gpt'): string {
  const p = path.join(dir, `disk${n++}`);
  run('truncate', ['-s', '8M', p]);
  run('sfdisk', ['-q', p], `label: ${label}\nstart=2048, type=L\n`);
  return p;
}

/**
 * A bzImage as the x86 boot protocol lays it out: one setup sector after the boot sector
 * (0xAA55 at 0x1FE, "HdrS" at 0x202, protocol 2.15), then the gzip payload with its size.
 */
function bzImage(): Buffer {
  const setup = Buffer.alloc(1024);
  setup[0x1f1] = 1;
  setup.writeUInt16LE(0xaa55, 0x1fe);
  setup.write('HdrS', 0x202, 'latin1');
  setup.writeUInt16LE(0x020f, 0x206);
  const elf = tinyElfKernel();
  const payload = Buffer.concat([gzipSync(elf), Buffer.alloc(4)]);
  payload.writeUInt32LE(elf.length, payload.length - 4);
  setup.writeUInt32LE(0x100, 0x248);
  setup.writeUInt32LE(payload.length, 0x24c);
  return Buffer.concat([setup, Buffer.alloc(0x100), payload]);
}

function elfWith(type: number, machine: number): Buffer {
  const elf = tinyElfKernel();
  elf.writeUInt16LE(type, 16);
  elf.writeUInt16LE(machine, 18);
  return elf;
}

const refused = async (kind: 'kernel' | 'initrd' | 'rootfs', p: string, found: string, text: string) => {
  await expect(validateImage(kind, p)).rejects.toMatchObject({
    code: 'IMAGE_INVALID',
    details: { kind, found },
    message: expect.stringContaining(text),
  });
};

describe('validateImage: kernels', () => {
  it('accepts an x86_64 ELF vmlinux and a bzImage', async () => {
    expect(await validateImage('kernel', file(tinyElfKernel()))).toBe('vmlinux');
    expect(await validateImage('kernel', file(bzImage()))).toBe('bzimage');
  });

  it('refuses random bytes, zeros, a web page, other ELF files and a truncated bzImage, saying what they are', async () => {
    await refused(
      'kernel',
      file(randomBytes(40 * 1024)),
      'random',
      'random-looking bytes, no ELF or bzImage header',
    );
    await refused('kernel', file(Buffer.alloc(4096)), 'zeros', 'only zero bytes');
    await refused(
      'kernel',
      file(Buffer.from('<!DOCTYPE html><html><body>login</body></html>')),
      'html',
      'an HTML page',
    );
    await refused(
      'kernel',
      file(elfWith(3, 62)),
      'elf',
      'an ELF shared object or PIE program (64-bit, x86_64)',
    );
    await refused('kernel', file(elfWith(2, 183)), 'elf', 'an ELF executable (64-bit, aarch64)');
    const bz = bzImage();
    await refused('kernel', file(bz.subarray(0, bz.length - 100)), 'bzimage', 'a truncated bzImage');
    await refused('kernel', file(cpio('newc')), 'cpio', 'a newc cpio archive, no ELF or bzImage header');
  });
});

describe('validateImage: initrds', () => {
  it('accepts a newc cpio archive, zero-padded or compressed with each format the kernel reads', async () => {
    const archive = cpio('newc');
    expect(await validateImage('initrd', file(archive))).toBe('cpio');
    expect(await validateImage('initrd', file(Buffer.concat([Buffer.alloc(512), archive])))).toBe('cpio');
    expect(await validateImage('initrd', file(gzipSync(archive)))).toBe('cpio.gz');
    expect(await validateImage('initrd', file(run('zstd', ['-c', '-q'], archive)))).toBe('cpio.zst');
    expect(await validateImage('initrd', file(run('xz', ['-c', '--check=crc32'], archive)))).toBe('cpio.xz');
    expect(await validateImage('initrd', file(run('xz', ['-c', '--format=lzma'], archive)))).toBe(
      'cpio.lzma',
    );
    expect(await validateImage('initrd', file(run('lz4', ['-l', '-c', '-q'], archive)))).toBe('cpio.lz4');
    expect(await validateImage('initrd', file(run('bzip2', ['-c'], archive)))).toBe('cpio.bz2');
  });

  it('decompresses as far as the first header needs: past an lz4 block of 8 MiB, no further', async () => {
    const big = tree({ init: '#!/bin/sh\n' });
    fs.writeFileSync(path.join(big, 'blob'), randomBytes(9 << 20));
    const archive = run('cpio', ['-o', '-H', 'newc', '--quiet'], 'blob\ninit\n', big);
    expect(await validateImage('initrd', file(run('lz4', ['-l', '-c', '-q', '-1'], archive)))).toBe(
      'cpio.lz4',
    );
    expect(await validateImage('initrd', file(run('bzip2', ['-c', '-1'], archive)))).toBe('cpio.bz2');
  });

  it('refuses an odc archive, a compressed tar, compressed garbage, text and random bytes', async () => {
    await refused('initrd', file(cpio('odc')), 'cpio-odc', 'the kernel unpacks newc only');
    const tar = run('tar', ['-cz', '-C', tree({ 'etc/motd': 'hi\n' }), '.']);
    await refused(
      'initrd',
      file(tar),
      'gzip',
      'gzip-compressed data holding a tar archive, not a newc cpio archive',
    );
    const garbage = Buffer.concat([Buffer.from([0x1f, 0x8b, 0x08]), randomBytes(8192)]);
    await refused('initrd', file(garbage), 'gzip', 'holding nothing: it does not decompress');
    await refused('initrd', file(Buffer.from('hello world\n')), 'text', 'text, no cpio header');
    await refused('initrd', file(randomBytes(8192)), 'random', 'random-looking bytes, no cpio header');
  });
});

describe('validateImage: root file systems', () => {
  it('accepts ext2/3/4, XFS, Btrfs, a standalone qcow2 and MBR or GPT partitioned disks', async () => {
    expect(await validateImage('rootfs', mkfs('mkfs.ext4', '4M', ['-q', '-F']))).toBe('ext4');
    expect(await validateImage('rootfs', mkfs('mkfs.ext2', '4M', ['-q', '-F']))).toBe('ext4');
    expect(await validateImage('rootfs', mkfs('mkfs.xfs', '320M', ['-q', '-f']))).toBe('raw');
    expect(await validateImage('rootfs', mkfs('mkfs.btrfs', '128M', ['-q', '-f']))).toBe('raw');
    const qcow = path.join(dir, 'd.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', qcow, '16M']);
    expect(await validateImage('rootfs', qcow)).toBe('qcow2');
    expect(await validateImage('rootfs', partitioned('dos'))).toBe('raw');
    expect(await validateImage('rootfs', partitioned('gpt'))).toBe('raw');
  });

  it('refuses random bytes, zeros, the JSON a health check answers, a kernel, a truncated ext4, a compressed one and a qcow2 with a backing file', async () => {
    await refused(
      'rootfs',
      file(randomBytes(4 << 20)),
      'random',
      'random-looking bytes, no file system, partition table or qcow2 header',
    );
    await refused('rootfs', file(Buffer.alloc(8192)), 'zeros', 'only zero bytes');
    await refused('rootfs', file(Buffer.from('{"status":"ok","version":"0.1.0"}')), 'json', 'JSON text');
    await refused('rootfs', file(tinyElfKernel()), 'elf', 'an ELF executable');
    const ext4 = fs.readFileSync(mkfs('mkfs.ext4', '4M', ['-q', '-F']));
    await refused('rootfs', file(ext4.subarray(0, 1 << 20)), 'ext', 'a truncated ext2/3/4 file system');
    await refused('rootfs', file(gzipSync(ext4)), 'gzip', 'decompress it before importing');
    const base = mkfs('mkfs.ext4', '4M', ['-q', '-F']);
    const overlay = path.join(dir, 'overlay.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', base, overlay]);
    await refused('rootfs', overlay, 'qcow2', `a qcow2 disk with a backing file (${base})`);
  });
});

describe('describeContent', () => {
  it.each([
    [Buffer.from('<?xml version="1.0"?><a/>'), 'xml'],
    [Buffer.from('\n  <html><head>'), 'html'],
    [Buffer.from('[1,2]'), 'json'],
    [Buffer.concat([Buffer.from('PK\x03\x04', 'latin1'), Buffer.alloc(60, 1)]), 'zip'],
    [Buffer.from([0x04, 0x22, 0x4d, 0x18, 0x64]), 'lz4-frame'],
    [Buffer.from([0x01, 0x02, 0x03, 0x00, 0x10]), 'unknown'],
  ])('tells what %j is', (bytes, id) => {
    expect(describeContent(bytes).id).toBe(id);
  });
});
