import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { resolveHostPath } from './host-paths';

const base = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-host-paths-'));
const root = path.join(base, 'root');
const blobs = path.join(root, 'blobs');
fs.mkdirSync(path.join(blobs, 'sha256'), { recursive: true });
fs.writeFileSync(path.join(blobs, 'sha256', 'a'.repeat(64)), 'blob');
fs.writeFileSync(path.join(root, 'disk.img'), 'disk');
fs.mkdirSync(path.join(root, 'dir'));
fs.writeFileSync(path.join(base, 'outside.img'), 'outside');
fs.symlinkSync('../outside.img', path.join(root, 'escape.img'));
fs.symlinkSync(path.join(blobs, 'sha256', 'a'.repeat(64)), path.join(root, 'to-blob.img'));
afterAll(() => fs.rmSync(base, { recursive: true, force: true }));

const policy = { allowImagePaths: true, imageRoot: root, reserved: [blobs] };

describe('resolveHostPath', () => {
  it('answers the real path of a file under the root, relative or absolute', async () => {
    expect(await resolveHostPath(policy, 'disk.img')).toBe(fs.realpathSync(path.join(root, 'disk.img')));
    expect(await resolveHostPath(policy, path.join(root, 'disk.img'))).toBe(
      fs.realpathSync(path.join(root, 'disk.img')),
    );
  });

  it.each([
    ['disabled', { ...policy, allowImagePaths: false }, 'disk.img', 'IMAGE_PATHS_DISABLED'],
    ['a ".." segment', policy, 'x/../disk.img', 'IMAGE_PATH_OUTSIDE_ROOT'],
    ['an absolute path elsewhere', policy, path.join(base, 'outside.img'), 'IMAGE_PATH_OUTSIDE_ROOT'],
    ['a symlink out of the root', policy, 'escape.img', 'IMAGE_PATH_OUTSIDE_ROOT'],
    ['a file of the blob store', policy, `blobs/sha256/${'a'.repeat(64)}`, 'VALIDATION_FAILED'],
    ['a symlink into the blob store', policy, 'to-blob.img', 'VALIDATION_FAILED'],
    ['a folder', policy, 'dir', 'VALIDATION_FAILED'],
    ['a missing file', policy, 'nope.img', 'VALIDATION_FAILED'],
  ])('refuses %s', async (_what, p, requested, code) => {
    await expect(resolveHostPath(p, requested)).rejects.toMatchObject({ code });
  });
});
