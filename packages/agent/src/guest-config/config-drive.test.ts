import { execFile } from 'node:child_process';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeConfigDrive } from './config-drive';

const run = promisify(execFile);
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'nqvm-cidata-test-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const mtype = async (img: string, name: string) => (await run('mtype', ['-i', img, `::/${name}`])).stdout;

describe('writeConfigDrive', () => {
  it('makes a vfat labelled CIDATA holding the NoCloud files, read back with mtools', async () => {
    const img = path.join(dir, 'cidata.img');
    const data = {
      metaData: 'instance-id: i-1\nlocal-hostname: cfg-test\n',
      userData: '#cloud-config\nhostname: cfg-test\n',
      networkConfig: 'version: 2\nethernets: {}\n',
    };
    await writeConfigDrive(img, data);
    // It holds a password hash and the guest agent's token: readable by its owner only.
    expect((await stat(img)).mode & 0o777).toBe(0o600);
    expect((await run('mlabel', ['-i', img, '-s', '::'])).stdout).toMatch(/Volume label is CIDATA/);
    expect((await run('file', ['-b', img])).stdout).toMatch(/FAT/);
    const listing = (await run('mdir', ['-i', img, '-b', '::/'])).stdout.split('\n').filter(Boolean);
    expect(listing.sort()).toEqual(['::/meta-data', '::/network-config', '::/user-data']);
    expect(await mtype(img, 'meta-data')).toBe(data.metaData);
    expect(await mtype(img, 'user-data')).toBe(data.userData);
    expect(await mtype(img, 'network-config')).toBe(data.networkConfig);
    expect((await stat(img)).size).toBe(1024 * 1024);
  });

  it('replaces an earlier drive, leaves out network-config when there is none, and fits large user-data', async () => {
    const img = path.join(dir, 'again.img');
    await writeFile(img, 'an older drive');
    const big = `#cloud-config\nwrite_files:\n${'  - {path: /x, content: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}\n'.repeat(3000)}`;
    await writeConfigDrive(img, { metaData: 'instance-id: i-2\n', userData: big, networkConfig: null });
    const listing = (await run('mdir', ['-i', img, '-b', '::/'])).stdout.split('\n').filter(Boolean);
    expect(listing.sort()).toEqual(['::/meta-data', '::/user-data']);
    expect(await mtype(img, 'user-data')).toBe(big);
    expect((await run('fsck.vfat', ['-n', img])).stdout).not.toMatch(/error/i);
  });

  it('keeps a drive made from the same files, and makes it again when they change or it is gone', async () => {
    const img = path.join(dir, 'kept.img');
    const data = { metaData: 'instance-id: i-3\n', userData: '#cloud-config\n', networkConfig: null };
    await writeConfigDrive(img, data);
    const first = await stat(img);
    await writeConfigDrive(img, data);
    const second = await stat(img);
    expect([second.ino, second.mtimeMs]).toEqual([first.ino, first.mtimeMs]);

    await writeConfigDrive(img, { ...data, metaData: 'instance-id: i-4\n' });
    expect((await stat(img)).ino).not.toBe(first.ino);
    expect(await mtype(img, 'meta-data')).toBe('instance-id: i-4\n');

    await rm(img);
    await writeConfigDrive(img, { ...data, metaData: 'instance-id: i-4\n' });
    expect(await mtype(img, 'meta-data')).toBe('instance-id: i-4\n');
  });
});
