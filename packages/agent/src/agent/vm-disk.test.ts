import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  statfsSync,
  statSync,
  writeSync,
} from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { tempDir } from './testing';
import { createRootDisk } from './vm-disk';

const MiB = 1024 * 1024;

/** A raw image of `sizeMib` with random data in every 5th MiB (20%), holes elsewhere. */
function makeImage(file: string, sizeMib: number): number {
  const fd = openSync(file, 'w');
  let data = 0;
  try {
    for (let at = 0; at < sizeMib; at += 5) {
      writeSync(fd, randomBytes(MiB), 0, MiB, at * MiB);
      data += MiB;
    }
  } finally {
    closeSync(fd);
  }
  execFileSync('truncate', ['-s', `${sizeMib}M`, file]);
  return data;
}

function hash(file: string): string {
  return execFileSync('sha256sum', [file], { encoding: 'utf8' }).split(' ')[0]!;
}

const allocated = (file: string) => statSync(file).blocks * 512;

function writeAt(file: string, offset: number, bytes: Buffer): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}

/** Physical extents (`filefrag -v`, in file system blocks) with their flags. */
function extents(file: string): { physical: string; flags: string }[] {
  const out = execFileSync('filefrag', ['-v', file], { encoding: 'utf8' });
  return out
    .split('\n')
    .map((l) => /^\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+\.\.\s*\d+):\s+\d+:\s*(?:\d+:)?\s*(.*)$/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ physical: m[1]!.replace(/\s+/g, ''), flags: m[2]!.trim() }));
}

function superblockBytes(file: string): number {
  const out = execFileSync('dumpe2fs', ['-h', file], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const field = (name: string) => Number(new RegExp(`^${name}:\\s*(\\d+)`, 'm').exec(out)?.[1]);
  return field('Block count') * field('Block size');
}

describe('createRootDisk', () => {
  let dir: string;

  beforeEach(() => {
    dir = tempDir('nqvm-vm-disk-');
  });

  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('makes a tiny qcow2 overlay that reads the image and never writes to it', async () => {
    const image = path.join(dir, 'image.raw');
    makeImage(image, 64);
    const before = hash(image);
    const overlay = path.join(dir, 'root.qcow2');
    await createRootDisk('qemu', image, overlay, 128);

    const info = JSON.parse(
      execFileSync('qemu-img', ['info', '--output=json', overlay], { encoding: 'utf8' }),
    );
    expect(info).toMatchObject({ format: 'qcow2', 'backing-filename': image, 'virtual-size': 128 * MiB });
    expect(allocated(overlay)).toBeLessThan(MiB);
    // The overlay's first 64 MiB are the image's bytes (compare's exit code is 0 when equal).
    const grown = path.join(dir, 'image-grown.raw');
    execFileSync('cp', ['--sparse=always', image, grown]);
    execFileSync('truncate', ['-s', '128M', grown]);
    execFileSync('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'qcow2', grown, overlay]);

    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 0 4M', overlay], { stdio: 'ignore' });
    expect(hash(image)).toBe(before);
    expect(allocated(overlay)).toBeGreaterThanOrEqual(4 * MiB);
  });

  it('copies sparsely: the copy allocates about the image data, not its size', async () => {
    const image = path.join(dir, 'image.raw');
    const data = makeImage(image, 64);
    const before = hash(image);
    const copy = path.join(dir, 'root.raw');
    await createRootDisk('firecracker', image, copy, null);

    expect(statSync(copy).size).toBe(64 * MiB);
    expect(hash(copy)).toBe(before);
    expect(allocated(copy)).toBeLessThanOrEqual(data + MiB);
    expect(allocated(copy)).toBeLessThan(0.3 * 64 * MiB);

    writeAt(copy, 2 * MiB, randomBytes(MiB));
    writeAt(copy, 0, randomBytes(4096));
    expect(hash(image)).toBe(before);
  });

  it('grows an ext4 copy and its file system to the requested size', async () => {
    const image = path.join(dir, 'rootfs.ext4');
    execFileSync('truncate', ['-s', '64M', image]);
    execFileSync('mkfs.ext4', ['-q', '-F', '-L', 'rootfs', image]);
    const before = hash(image);
    const copy = path.join(dir, 'root.raw');
    await createRootDisk('firecracker', image, copy, 160);

    expect(statSync(copy).size).toBe(160 * MiB);
    expect(superblockBytes(copy)).toBe(160 * MiB);
    expect(superblockBytes(image)).toBe(64 * MiB);
    expect(hash(image)).toBe(before);
  });
});

describe('createRootDisk on XFS (loop file system made by the test)', () => {
  let dir: string;
  let mnt: string;

  beforeAll(() => {
    dir = tempDir('nqvm-vm-disk-xfs-');
    const fsImage = path.join(dir, 'xfs.img');
    mnt = path.join(dir, 'mnt');
    mkdirSync(mnt);
    execFileSync('truncate', ['-s', '512M', fsImage]);
    execFileSync('mkfs.xfs', ['-q', '-m', 'reflink=1', fsImage]);
    execFileSync('mount', ['-o', 'loop', fsImage, mnt]);
  });

  afterAll(() => {
    execFileSync('umount', [mnt]);
    rmSync(dir, { recursive: true, force: true });
  });

  it('makes a reflink clone: same physical extents, no space used, writes stay in the clone', async () => {
    const image = path.join(mnt, 'image.raw');
    const data = makeImage(image, 64);
    execFileSync('sync');
    const before = hash(image);
    const free = () => {
      const s = statfsSync(mnt);
      return s.bfree * s.bsize;
    };
    const freeBefore = free();
    const clone = path.join(mnt, 'root.raw');
    await createRootDisk('firecracker', image, clone, null);
    execFileSync('sync');

    // The clone used (almost) no space although it holds `data` bytes.
    expect(data).toBe(13 * MiB);
    expect(freeBefore - free()).toBeLessThan(MiB);
    const imageExtents = extents(image);
    const cloneExtents = extents(clone);
    expect(cloneExtents.length).toBeGreaterThan(0);
    expect(cloneExtents.map((e) => e.physical)).toEqual(imageExtents.map((e) => e.physical));
    expect(cloneExtents.every((e) => e.flags.includes('shared'))).toBe(true);

    writeAt(clone, 0, randomBytes(MiB));
    execFileSync('sync');
    expect(hash(image)).toBe(before);
    expect(readFileSync(clone).subarray(0, MiB)).not.toEqual(readFileSync(image).subarray(0, MiB));
    expect(extents(clone)[0]!.physical).not.toBe(imageExtents[0]!.physical);
  });
});
