import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { AgentGuestConfig } from '@nqvm/api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GuestConfigError } from './guest-values';
import { hostsWithName, injectGuestConfig } from './inject';

const run = promisify(execFile);
const HASH =
  '$6$abcdefgh$l5Rv6.qDmLOjiCGNTWfV3njd1blJysIMTWYBMlKPb8Q/5GULHVOHSoixqE0C/RG3kz23RqbGDouGTQSz0MyXl/';
const HASH2 =
  '$6$zyxwvuts$Q3/1bCY3Zp4bS9x9p0mJ2G1y8cI1u5hkO2wMDU0r0E3e3B2A5m8oXq2n5iR3fZ9h5cVJH3bq5xkz3sY0gD5lS.';
const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH5ewXwHgG1P1R2x5gLx8p6V3pYgS7d1mJ1yq1m4k3Qx alice@laptop';
const KEY2 = 'ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 second@key';

let dir: string;
let n = 0;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'nqvm-inject-test-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A small ext4 image built with mkfs.ext4 -d from a tree like a distribution's /etc. */
async function image(opts: { homeOfBob?: string } = {}): Promise<string> {
  const tree = path.join(dir, `tree${++n}`);
  await mkdir(path.join(tree, 'etc'), { recursive: true });
  await mkdir(path.join(tree, 'bin'), { recursive: true });
  await mkdir(path.join(tree, 'root'), { recursive: true, mode: 0o700 });
  await writeFile(
    path.join(tree, 'etc/passwd'),
    'root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n' +
      `bob:x:1000:1000:Bob:${opts.homeOfBob ?? '/home/bob'}:/bin/sh\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n`,
  );
  await writeFile(path.join(tree, 'etc/group'), 'root:x:0:\nshadow:x:42:\nsudo:x:27:bob\nbob:x:1000:\n');
  await writeFile(path.join(tree, 'etc/shadow'), 'root:*:19000:0:99999:7:::\nbob:!:19000:0:99999:7:::\n');
  await chmod(path.join(tree, 'etc/shadow'), 0o640);
  await writeFile(
    path.join(tree, 'etc/hosts'),
    '127.0.0.1\tlocalhost\n127.0.1.1\told-name\n::1\tlocalhost ip6-localhost\n',
  );
  await writeFile(path.join(tree, 'bin/bash'), '#!/bin/true\n', { mode: 0o755 });
  const img = path.join(dir, `disk${n}.ext4`);
  await run('truncate', ['-s', '16M', img]);
  await run('mkfs.ext4', ['-q', '-F', '-E', 'root_owner=0:0', '-d', tree, img]);
  // Files of the tree belong to whoever ran the test: make the shadow file root:shadow as on Debian.
  await run('debugfs', ['-w', '-R', 'set_inode_field /etc/shadow gid 42', img]);
  return img;
}

async function cat(img: string, p: string): Promise<string> {
  return (await run('debugfs', ['-R', `cat ${p}`, img])).stdout;
}

/** Type bits + permissions, owner and group of a path, from debugfs. */
async function meta(img: string, p: string): Promise<{ mode: string; uid: number; gid: number }> {
  const out = (await run('debugfs', ['-R', `stat ${p}`, img])).stdout;
  const m = /Mode:\s+([0-7]+)/.exec(out);
  const o = /User:\s+(\d+)\s+Group:\s+(\d+)/.exec(out);
  if (!m || !o) throw new Error(`${p} is not in ${img}`);
  const type = /Type: directory/.test(out) ? 'd' : 'f';
  return { mode: `${type}${m[1]!.padStart(4, '0')}`, uid: Number(o[1]), gid: Number(o[2]) };
}

async function sha(img: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(img))
    .digest('hex');
}

function config(over: Partial<AgentGuestConfig> = {}): AgentGuestConfig {
  return {
    mode: 'inject',
    instance_id: 'i-1',
    hostname: 'cfg-test',
    username: 'alice',
    password_hash: HASH,
    ssh_authorized_keys: [KEY],
    user_data: null,
    network_config: null,
    ...over,
  };
}

describe('injectGuestConfig', () => {
  it('writes hostname, hosts, the account, its home and keys with the right owners and modes', async () => {
    const img = await image();
    const t0 = performance.now();
    const { changed } = await injectGuestConfig(img, config(), new Date('2025-01-01T00:00:00Z'));
    console.log(`injection into a 16 MiB ext4: ${(performance.now() - t0).toFixed(0)} ms`);
    expect(changed).toEqual([
      '/etc/hostname',
      '/etc/hosts',
      '/etc/passwd',
      '/etc/group',
      '/etc/shadow',
      '/home',
      '/home/alice',
      '/home/alice/.ssh',
      '/home/alice/.ssh/authorized_keys',
    ]);
    expect(await cat(img, '/etc/hostname')).toBe('cfg-test\n');
    expect(await cat(img, '/etc/hosts')).toBe(
      '127.0.0.1\tlocalhost\n127.0.1.1\tcfg-test\n::1\tlocalhost ip6-localhost\n',
    );
    // uid above every existing one from 1000 up; bash found in the image; own group; sudo member.
    expect((await cat(img, '/etc/passwd')).split('\n')).toContain('alice:x:1001:1001::/home/alice:/bin/bash');
    expect((await cat(img, '/etc/group')).split('\n')).toEqual(
      expect.arrayContaining(['sudo:x:27:bob,alice', 'alice:x:1001:']),
    );
    expect((await cat(img, '/etc/shadow')).split('\n')).toContain(`alice:${HASH}:20089:0:99999:7:::`);
    expect(await cat(img, '/home/alice/.ssh/authorized_keys')).toBe(`${KEY}\n`);

    expect(await meta(img, '/etc/passwd')).toEqual({ mode: 'f0644', uid: 0, gid: 0 });
    expect(await meta(img, '/etc/hostname')).toEqual({ mode: 'f0644', uid: 0, gid: 0 });
    // An existing file keeps its mode and owner.
    expect(await meta(img, '/etc/shadow')).toEqual({ mode: 'f0640', uid: 0, gid: 42 });
    expect(await meta(img, '/home')).toEqual({ mode: 'd0755', uid: 0, gid: 0 });
    expect(await meta(img, '/home/alice')).toEqual({ mode: 'd0700', uid: 1001, gid: 1001 });
    expect(await meta(img, '/home/alice/.ssh')).toEqual({ mode: 'd0700', uid: 1001, gid: 1001 });
    expect(await meta(img, '/home/alice/.ssh/authorized_keys')).toEqual({
      mode: 'f0600',
      uid: 1001,
      gid: 1001,
    });
    await run('e2fsck', ['-fn', img]);
  });

  it('changes nothing on a second run with the same settings', async () => {
    const img = await image();
    await injectGuestConfig(img, config());
    const before = await sha(img);
    expect((await injectGuestConfig(img, config())).changed).toEqual([]);
    expect(await sha(img)).toBe(before);
  });

  it('updates an existing account: new hash, keys added, same uid, no second entry', async () => {
    const img = await image();
    await injectGuestConfig(img, config());
    const { changed } = await injectGuestConfig(
      img,
      config({ password_hash: HASH2, ssh_authorized_keys: [KEY, KEY2], hostname: 'renamed' }),
      new Date('2025-06-01T00:00:00Z'),
    );
    expect(changed).toEqual([
      '/etc/hostname',
      '/etc/hosts',
      '/etc/shadow',
      '/home/alice/.ssh/authorized_keys',
    ]);
    const shadow = (await cat(img, '/etc/shadow')).split('\n');
    expect(shadow.filter((l) => l.startsWith('alice:'))).toEqual([`alice:${HASH2}:20240:0:99999:7:::`]);
    expect((await cat(img, '/etc/passwd')).match(/^alice:/gm)).toHaveLength(1);
    expect(await cat(img, '/home/alice/.ssh/authorized_keys')).toBe(`${KEY}\n${KEY2}\n`);
    expect(await cat(img, '/etc/hosts')).toContain('127.0.1.1\trenamed\n');
    expect(await meta(img, '/home/alice/.ssh/authorized_keys')).toEqual({
      mode: 'f0600',
      uid: 1001,
      gid: 1001,
    });
    await run('e2fsck', ['-fn', img]);
  });

  it("sets an existing user's password and root's keys when no user is named", async () => {
    const img = await image();
    await injectGuestConfig(img, config({ username: 'bob' }));
    expect((await cat(img, '/etc/shadow')).split('\n')).toContain(
      `bob:${HASH}:${
        (await cat(img, '/etc/shadow'))
          .split('\n')
          .find((l) => l.startsWith('bob:'))!
          .split(':')[2]
      }:0:99999:7:::`,
    );
    expect(await meta(img, '/home/bob')).toEqual({ mode: 'd0700', uid: 1000, gid: 1000 });
    expect((await cat(img, '/etc/group')).split('\n')).toContain('sudo:x:27:bob');

    await injectGuestConfig(img, config({ username: null, password_hash: null }));
    expect(await cat(img, '/root/.ssh/authorized_keys')).toBe(`${KEY}\n`);
    expect(await meta(img, '/root/.ssh/authorized_keys')).toEqual({ mode: 'f0600', uid: 0, gid: 0 });
    expect((await cat(img, '/etc/shadow')).split('\n')).toContain('root:*:19000:0:99999:7:::');
  });

  it('refuses hostile values before touching the disk', async () => {
    const img = await image();
    const before = await sha(img);
    const hostile: Array<Partial<AgentGuestConfig>> = [
      { hostname: 'a b' },
      { hostname: 'x\nrm /etc/passwd' },
      { hostname: '-lead' },
      { username: 'Alice' },
      { username: 'a;b' },
      { username: 'a:b' },
      { username: '../etc' },
      { password_hash: 'S3cret-pw' },
      { password_hash: `${HASH}:0:0` },
      { password_hash: `${HASH}\nroot::0:0` },
      { ssh_authorized_keys: [`${KEY}\nssh-rsa AAAA injected`] },
      { ssh_authorized_keys: ['ssh-ed25519 AAAA\0x'] },
    ];
    for (const over of hostile) {
      await expect(injectGuestConfig(img, config(over)), JSON.stringify(over)).rejects.toBeInstanceOf(
        GuestConfigError,
      );
    }
    expect(await sha(img)).toBe(before);
  });

  it('refuses a home folder from the image that debugfs would misread', async () => {
    const img = await image({ homeOfBob: '/home/bob smith' });
    await expect(injectGuestConfig(img, config({ username: 'bob' }))).rejects.toThrow(
      /cannot be used in a debugfs command/,
    );
  });
});

describe('hostsWithName', () => {
  it('adds one 127.0.1.1 line after localhost, with the short name for an FQDN', () => {
    expect(hostsWithName(null, 'web.example.org')).toBe(
      '127.0.0.1\tlocalhost\n127.0.1.1\tweb.example.org web\n',
    );
    expect(hostsWithName('10.0.0.1 db\n', 'a')).toBe('127.0.1.1\ta\n10.0.0.1 db\n');
  });
});
