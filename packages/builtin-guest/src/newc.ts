import { gzipSync } from 'node:zlib';
import { sortParentsFirst, type TreeEntry } from './guest-tree';

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function hex8(n: number): string {
  return n.toString(16).padStart(8, '0');
}

function pad4(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}

function record(
  ino: number,
  name: string,
  mode: number,
  data: Buffer,
  opts: { nlink: number; rdevMajor?: number; rdevMinor?: number; mtime: number },
): Buffer[] {
  const nameBytes = Buffer.from(`${name}\0`);
  const header = Buffer.from(
    '070701' +
      [
        ino,
        mode,
        0, // uid: everything in the guest belongs to root
        0, // gid
        opts.nlink,
        opts.mtime,
        data.length,
        0, // devmajor
        0, // devminor
        opts.rdevMajor ?? 0,
        opts.rdevMinor ?? 0,
        nameBytes.length,
        0, // check
      ]
        .map(hex8)
        .join(''),
  );
  return [header, nameBytes, pad4(header.length + nameBytes.length), data, pad4(data.length)];
}

/**
 * Encodes a tree as a "newc" cpio archive (what the kernel unpacks as an initramfs), parents
 * first, all owned by root.
 */
export function encodeNewc(entries: readonly TreeEntry[], mtime = 0): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const e of sortParentsFirst(entries)) {
    ino += 1;
    switch (e.kind) {
      case 'dir':
        parts.push(...record(ino, e.path, S_IFDIR | e.mode, Buffer.alloc(0), { nlink: 2, mtime }));
        break;
      case 'file':
        parts.push(...record(ino, e.path, S_IFREG | e.mode, Buffer.from(e.data), { nlink: 1, mtime }));
        break;
      case 'symlink':
        parts.push(...record(ino, e.path, S_IFLNK | 0o777, Buffer.from(e.target), { nlink: 1, mtime }));
        break;
      case 'char-device':
        parts.push(
          ...record(ino, e.path, S_IFCHR | e.mode, Buffer.alloc(0), {
            nlink: 1,
            mtime,
            rdevMajor: e.major,
            rdevMinor: e.minor,
          }),
        );
        break;
    }
  }
  parts.push(...record(0, 'TRAILER!!!', 0, Buffer.alloc(0), { nlink: 1, mtime: 0 }));
  return Buffer.concat(parts);
}

/** The gzip-compressed newc archive, ready to pass to `-initrd`. */
export function encodeInitramfs(entries: readonly TreeEntry[]): Buffer {
  return gzipSync(encodeNewc(entries), { level: 6 });
}
