import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { tinyElfKernel } from '@nqvm/testkit/firecracker-sim/index';
import { afterAll, describe, expect, it } from 'vitest';
import { detectCloudInit, detectFormat } from './formats';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-formats-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function file(name: string, bytes: Buffer): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, bytes);
  return p;
}

function ext4(name: string, files: Record<string, string>): string {
  const tree = path.join(dir, `${name}-tree`);
  for (const [f, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(tree, f)), { recursive: true });
    fs.writeFileSync(path.join(tree, f), text);
  }
  fs.mkdirSync(tree, { recursive: true });
  const out = path.join(dir, `${name}.ext4`);
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', tree, out, '2M']);
  return out;
}

const cpio = Buffer.concat([Buffer.from('070701'), Buffer.alloc(200, 0x30)]);

describe('detectFormat', () => {
  it('tells initrd compressions apart and refuses what is not an archive', async () => {
    expect(await detectFormat('initrd', file('plain.cpio', cpio))).toBe('cpio');
    expect(await detectFormat('initrd', file('i.gz', gzipSync(cpio)))).toBe('cpio.gz');
    const zst = execFileSync('zstd', ['-c', '-q'], { input: cpio });
    expect(await detectFormat('initrd', file('i.zst', zst))).toBe('cpio.zst');
    await expect(detectFormat('initrd', file('i.txt', Buffer.from('hello world')))).rejects.toMatchObject({
      code: 'VALIDATION_FAILED',
    });
  });

  it('tells a vmlinux ELF from garbage for kernels', async () => {
    expect(await detectFormat('kernel', file('vmlinux', tinyElfKernel()))).toBe('vmlinux');
    await expect(detectFormat('kernel', file('k.txt', Buffer.alloc(4096, 1)))).rejects.toMatchObject({
      code: 'VALIDATION_FAILED',
    });
  });

  it('reads ext4 and qcow2 magic; other disks are raw; a compressed root filesystem is refused', async () => {
    expect(await detectFormat('rootfs', ext4('fs', { 'etc/hostname': 'x\n' }))).toBe('ext4');
    const qcow = path.join(dir, 'd.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', qcow, '16M']);
    expect(await detectFormat('rootfs', qcow)).toBe('qcow2');
    expect(await detectFormat('rootfs', file('raw.img', Buffer.alloc(8192)))).toBe('raw');
    await expect(detectFormat('rootfs', file('fs.gz', gzipSync(Buffer.alloc(8192))))).rejects.toThrow(
      /gzip-compressed/,
    );
  });
});

describe('detectCloudInit', () => {
  it('finds /usr/bin/cloud-init without mounting; unknown for what is not ext4', async () => {
    expect(await detectCloudInit(ext4('ci', { 'usr/bin/cloud-init': '#!/bin/sh\n' }))).toBe(true);
    expect(await detectCloudInit(ext4('noci', { 'usr/bin/env': '#!/bin/sh\n' }))).toBe(false);
    expect(await detectCloudInit(file('junk.img', Buffer.alloc(8192)))).toBeNull();
  });
});
