import { spawn } from 'node:child_process';
import { gunzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import type { TreeEntry } from './guest-tree';
import { encodeInitramfs, encodeNewc } from './newc';

/** Lists an archive with the host's cpio, the independent judge of the format. */
function cpioList(archive: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('cpio', ['-itv', '--quiet'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => {
      out += d;
    });
    child.stderr.on('data', (d) => {
      err += d;
    });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`cpio exit ${code}: ${err}`))));
    child.stdin.end(archive);
  });
}

const tree: TreeEntry[] = [
  { kind: 'file', path: 'bin/busybox', mode: 0o755, data: Buffer.from('ELF...') },
  { kind: 'symlink', path: 'bin/sh', target: '/bin/busybox' },
  { kind: 'dir', path: 'bin', mode: 0o755 },
  { kind: 'char-device', path: 'dev/console', mode: 0o600, major: 5, minor: 1 },
  { kind: 'dir', path: 'dev', mode: 0o755 },
  { kind: 'file', path: 'init', mode: 0o755, data: '#!/bin/sh\necho hi\n' },
];

describe('encodeNewc', () => {
  it('writes an archive that cpio lists, parents first', async () => {
    const listing = (await cpioList(encodeNewc(tree))).trim().split('\n');
    expect(listing.map((l) => l.replace(/^.* 1970 /, ''))).toEqual([
      'bin',
      'dev',
      'init',
      'bin/busybox',
      'bin/sh -> /bin/busybox',
      'dev/console',
    ]);
    expect(listing[0]).toMatch(/^drwxr-xr-x/);
    expect(listing[5]).toMatch(/^crw------- .* 5,\s+1 /);
  });

  it('pads every record to four bytes', () => {
    const archive = encodeNewc(tree);
    expect(archive.length % 4).toBe(0);
    expect(archive.subarray(0, 6).toString()).toBe('070701');
    expect(archive.includes(Buffer.from('TRAILER!!!\0'))).toBe(true);
  });

  it('gzips for -initrd', () => {
    expect(gunzipSync(encodeInitramfs(tree))).toEqual(encodeNewc(tree));
  });
});
