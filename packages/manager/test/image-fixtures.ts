/**
 * Image bytes for tests that need an image of a kind, not a particular one: imports refuse
 * bytes that are not one (422 IMAGE_INVALID).
 */
import { randomBytes } from 'node:crypto';

/**
 * A raw disk of `size` bytes: an MBR with one Linux partition from sector 1, as partitioning
 * tools write it, then `fill` (random bytes by default: no block of it is a hole) as the
 * partition's contents.
 *
 * @example
 * await upload(url, token, 'name=disk&kind=rootfs', [rawDisk(2 << 20)]); // 201, format raw
 */
export function rawDisk(size: number, fill?: number): Buffer {
  const disk = fill === undefined ? randomBytes(size) : Buffer.alloc(size, fill);
  disk.fill(0, 0, 512);
  disk[446 + 4] = 0x83;
  disk.writeUInt32LE(1, 446 + 8);
  disk.writeUInt32LE(Math.floor(size / 512) - 1, 446 + 12);
  disk.writeUInt16LE(0xaa55, 510);
  return disk;
}
