import fs from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { type LayerEntry, tarLayer } from '@nqvm/testkit';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RootfsTree } from './rootfs-tree';

let base: string;
let tree: RootfsTree;

beforeEach(async () => {
  base = await fs.mkdtemp(join(tmpdir(), 'nqvm-rootfs-tree-'));
  await fs.mkdir(join(base, 'rootfs'));
  tree = new RootfsTree(join(base, 'rootfs'));
});
afterEach(async () => {
  await fs.rm(base, { recursive: true, force: true });
});

async function apply(...layers: LayerEntry[][]): Promise<void> {
  for (const entries of layers) await tree.applyLayer(Readable.from(await tarLayer(entries)));
  tree.finish();
}

const file = (name: string, content = name, extra: Partial<LayerEntry> = {}): LayerEntry =>
  ({ name, type: 'file', content, ...extra }) as LayerEntry;
const dir = (name: string, extra: Partial<LayerEntry> = {}): LayerEntry =>
  ({ name, type: 'directory', ...extra }) as LayerEntry;
const at = (p: string) => join(tree.root, p);

async function listTree(root: string): Promise<string[]> {
  const out = (await fs.readdir(root, { recursive: true })) as string[];
  return out.sort();
}

describe('RootfsTree', () => {
  it('honours whiteouts and opaque directories, hiding lower content only', async () => {
    await apply(
      [dir('d/'), file('d/a'), file('d/sub/b'), file('w/file1'), file('w/dir/inner'), file('keep')],
      [
        file('d/new'),
        file('d/.wh..wh..opq', ''),
        file('d/sub/c'),
        file('w/.wh.dir', ''),
        file('missing/.wh.nothing', ''),
        file('.wh.keep-not-there', ''),
      ],
    );
    expect(await listTree(tree.root)).toEqual(['d', 'd/new', 'd/sub', 'd/sub/c', 'keep', 'w', 'w/file1']);
  });

  it('a whiteout in the same layer as the file it names does not remove it', async () => {
    await apply([file('x')], [file('y'), file('.wh.y', '')]);
    expect(await listTree(tree.root)).toEqual(['x', 'y']);
  });

  it('resolves symlinked parents inside the tree, absolute ones from the tree root', async () => {
    const outside = join(base, 'host-dir');
    await fs.mkdir(outside);
    await apply(
      [
        dir('usr/lib/'),
        { name: 'lib', type: 'symlink', linkname: '/usr/lib' },
        { name: 'opt/deep/lib', type: 'symlink', linkname: '/usr/lib' },
        { name: 'rel', type: 'symlink', linkname: 'usr' },
        { name: 'hostdir', type: 'symlink', linkname: outside },
      ],
      [file('lib/x.so'), file('rel/lib/y'), file('opt/deep/lib/z'), file('hostdir/pwned')],
    );
    expect(await fs.readdir(at('usr/lib'))).toEqual(['x.so', 'y', 'z']);
    expect(await fs.readFile(at('usr/lib/x.so'), 'utf8')).toBe('lib/x.so');
    expect(await fs.readFile(at('usr/lib/y'), 'utf8')).toBe('rel/lib/y');
    expect((await fs.lstat(at('lib'))).isSymbolicLink()).toBe(true);
    expect(await fs.readFile(at(`${outside}/pwned`), 'utf8')).toBe('hostdir/pwned');
    expect(await fs.readdir(outside)).toEqual([]);
  });

  it('replaces a symlink with a file instead of writing through it', async () => {
    const victim = join(base, 'victim');
    await fs.writeFile(victim, 'original');
    await apply([{ name: 'link', type: 'symlink', linkname: victim }], [file('link', 'new')]);
    expect(await fs.readFile(victim, 'utf8')).toBe('original');
    expect((await fs.lstat(at('link'))).isFile()).toBe(true);
    expect(await fs.readFile(at('link'), 'utf8')).toBe('new');
  });

  it.each<[string, LayerEntry[]]>([
    ['a ".." entry', [file('../escape')]],
    ['a nested ".." entry', [file('a/../../escape')]],
    ['an absolute entry', [file('/escape')]],
    [
      'a relative symlinked parent climbing out',
      [{ name: 'up', type: 'symlink', linkname: '../..' }, file('up/escape')],
    ],
    [
      'an absolute symlinked parent climbing out',
      [{ name: 'up', type: 'symlink', linkname: '/../..' }, file('up/escape')],
    ],
    ['a hard link to a path outside', [{ name: 'h', type: 'link', linkname: '../escape-target' }]],
  ])('refuses %s and writes nothing outside the tree', async (_what, entries) => {
    await fs.writeFile(join(base, 'escape-target'), 'host file');
    await expect(apply(entries)).rejects.toMatchObject({
      code: 'IMPORT_FAILED',
      details: { reason: 'unsafe_path' },
    });
    expect((await fs.readdir(base)).sort()).toEqual(['escape-target', 'rootfs']);
    await expect(fs.stat(join(base, '..', 'escape'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('keeps modes, owners, setuid, mtimes, hard links, devices and fifos', async () => {
    const mtime = new Date('2021-05-06T07:08:09Z');
    await apply(
      [
        dir('srv/', { mode: 0o750, uid: 33, gid: 34, mtime }),
        file('srv/app', 'app', { mode: 0o4755, uid: 1000, gid: 1001, mtime }),
        { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
        { name: 'run/fifo', type: 'fifo', mode: 0o600 },
      ],
      [{ name: 'srv/app.hard', type: 'link', linkname: 'srv/app' }],
    );
    const srv = await fs.stat(at('srv'));
    expect([srv.mode & 0o7777, srv.uid, srv.gid, srv.mtime.toISOString()]).toEqual([
      0o750,
      33,
      34,
      mtime.toISOString(),
    ]);
    const app = await fs.stat(at('srv/app'));
    expect([app.mode & 0o7777, app.uid, app.gid, app.mtime.toISOString()]).toEqual([
      0o4755,
      1000,
      1001,
      mtime.toISOString(),
    ]);
    expect((await fs.stat(at('srv/app.hard'))).ino).toBe(app.ino);
    const dev = await fs.stat(at('dev/null'));
    expect([dev.isCharacterDevice(), dev.rdev]).toEqual([true, (1 << 8) | 3]);
    expect((await fs.stat(at('run/fifo'))).isFIFO()).toBe(true);
    expect(tree.warnings).toEqual([]);
  });

  it('turns a directory into a file and a file into a directory across layers', async () => {
    await apply([file('a/x'), file('b')], [file('a'), dir('b/'), file('b/y')]);
    expect((await fs.lstat(at('a'))).isFile()).toBe(true);
    expect(await fs.readFile(at('b/y'), 'utf8')).toBe('b/y');
  });
});
