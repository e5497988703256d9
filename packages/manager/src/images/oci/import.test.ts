/**
 * OCI import against a real registry (Debian's docker-registry) on 127.0.0.1: anonymous, basic
 * auth, and the bearer-token flow through a token server; the ext4 result is read with debugfs.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import {
  type BuiltImage,
  basicAuthorization,
  buildImageFromEntries,
  buildIndex,
  freePort,
  type OciRegistry,
  pushImage,
  pushIndex,
  type RedirectProxy,
  sampleImage,
  startOciRegistry,
  startRedirectProxy,
  startTokenServer,
  type TokenServer,
} from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { importOciImage, type OciImportRequest, resolveOciImage } from './index';

const execFileP = promisify(execFile);

let base: string;
let anon: OciRegistry;
let basic: OciRegistry;
let tokens: TokenServer;
let tokenRegistry: OciRegistry;
let proxy: RedirectProxy;
let image: BuiltImage;

const ALICE = { username: 'alice', password: 'wonderland' };

beforeAll(async () => {
  base = await fs.mkdtemp(join(tmpdir(), 'nqvm-oci-import-'));
  image = await sampleImage();
  tokens = await startTokenServer({ users: { bob: 'builder' }, anonymous: true });
  [anon, basic, tokenRegistry] = await Promise.all([
    startOciRegistry(),
    startOciRegistry({ basicAuth: { [ALICE.username]: ALICE.password } }),
    startOciRegistry({ tokenAuth: tokens.registryAuth }),
  ]);
  await pushImage({ url: anon.url, repository: 'test/app' }, 'v1', image);
  await pushImage(
    {
      url: basic.url,
      repository: 'test/app',
      authorization: basicAuthorization(ALICE.username, ALICE.password),
    },
    'v1',
    image,
  );
  await pushImage(
    {
      url: tokenRegistry.url,
      repository: 'test/app',
      authorization: `Bearer ${tokens.issue('test/app', ['pull', 'push'])}`,
    },
    'v1',
    image,
  );
  proxy = await startRedirectProxy({
    upstream: basic.url,
    upstreamAuthorization: basicAuthorization(ALICE.username, ALICE.password),
  });
});

afterAll(async () => {
  await Promise.all([anon?.stop(), basic?.stop(), tokenRegistry?.stop(), tokens?.stop(), proxy?.stop()]);
  await fs.rm(base, { recursive: true, force: true });
});

let seq = 0;
/** A request with its own workDir and outFile under the test's folder. */
function request(reference: string, extra: Partial<OciImportRequest> = {}) {
  const n = ++seq;
  const progress: Array<[number, string]> = [];
  const req: OciImportRequest = {
    reference,
    workDir: join(base, `work-${n}`),
    outFile: join(base, `rootfs-${n}.ext4`),
    onProgress: (percent, message) => progress.push([percent, message]),
    ...extra,
  };
  return { req, progress };
}

async function debugfs(imageFile: string, command: string): Promise<string> {
  const { stdout } = await execFileP('debugfs', ['-R', command, imageFile]);
  return stdout;
}

/** Names and inode numbers of a directory's entries, from `debugfs ls -l`. */
async function ls(imageFile: string, dir: string): Promise<Map<string, number>> {
  const out = await debugfs(imageFile, `ls -l ${dir}`);
  const entries = new Map<string, number>();
  for (const line of out.split('\n')) {
    const cols = line.trim().split(/\s+/);
    if (cols.length >= 8 && cols.at(-1) !== '.' && cols.at(-1) !== '..')
      entries.set(cols.at(-1)!, Number(cols[0]));
  }
  return entries;
}

async function inodeStat(imageFile: string, path: string) {
  const out = await debugfs(imageFile, `stat ${path}`);
  return {
    type: /Type: (\S+)/.exec(out)?.[1],
    mode: /Mode:\s+(\d+)/.exec(out)?.[1],
    uid: Number(/User:\s+(\d+)/.exec(out)?.[1]),
    gid: Number(/Group:\s+(\d+)/.exec(out)?.[1]),
    links: Number(/Links: (\d+)/.exec(out)?.[1]),
    fastLink: /Fast link dest: "([^"]*)"/.exec(out)?.[1],
  };
}

/** Nothing is left behind: no outFile, an empty workDir. */
async function expectNothingLeft(req: OciImportRequest) {
  await expect(fs.stat(req.outFile)).rejects.toMatchObject({ code: 'ENOENT' });
  expect(await fs.readdir(req.workDir)).toEqual([]);
}

async function expectSampleRootfs(file: string) {
  expect([...(await ls(file, '/')).keys()].sort()).toEqual(['a', 'bin', 'etc', 'lost+found', 'opq']);
  expect(await debugfs(file, 'cat /etc/hello')).toBe('hello from layer 1\n');
  expect([...(await ls(file, '/opq')).keys()]).toEqual(['y']);
  expect(await debugfs(file, 'cat /opq/y')).toBe('y\n');
  expect(await inodeStat(file, '/opq')).toMatchObject({ type: 'directory', mode: '0700' });

  const link = await inodeStat(file, '/etc/hello.link');
  expect(link).toMatchObject({ type: 'symlink', fastLink: 'hello' });
  const ab = await ls(file, '/a/b');
  expect(ab.get('c.hard')).toBe(ab.get('c'));
  expect(await inodeStat(file, '/a/b/c')).toMatchObject({
    type: 'regular',
    mode: '0640',
    uid: 1000,
    gid: 1001,
    links: 2,
  });
  expect(await inodeStat(file, '/a/b')).toMatchObject({ mode: '0750' });
  expect(await inodeStat(file, '/bin/tool')).toMatchObject({ mode: '04755', uid: 0 });
  expect(await debugfs(file, 'cat /a/b/c.hard')).toBe('c\n');
}

const SAMPLE_CONFIG = {
  entrypoint: ['/bin/tool'],
  cmd: ['--serve', 'x'],
  env: ['PATH=/usr/bin:/bin', 'GREETING=hi'],
  working_dir: '/opq',
  user: '1000:1001',
  exposed_ports: ['8080/tcp'],
};

describe('importOciImage', () => {
  it('imports anonymously: layers applied with whiteouts, opaque dirs, links; config kept; progress to 100', async () => {
    const { req, progress } = request(`${anon.host}/test/app:v1`);
    const result = await importOciImage(req);
    expect(result).toMatchObject({
      manifestDigest: image.manifest.digest,
      config: SAMPLE_CONFIG,
      layers: 2,
      downloadedBytes: image.layers[0]!.size + image.layers[1]!.size,
      warnings: [],
    });
    await expectSampleRootfs(req.outFile);
    expect((await debugfs(req.outFile, 'stats')).match(/Filesystem volume name:\s+(\S+)/)?.[1]).toBe(
      'rootfs',
    );
    expect(progress.at(-1)?.[0]).toBe(100);
    const percents = progress.map(([p]) => p);
    expect(percents).toEqual([...percents].sort((a, b) => a - b));
    expect(progress.some(([, m]) => m.startsWith('downloading layer 2/2'))).toBe(true);
    expect(progress.some(([, m]) => m.startsWith('applying layer 2/2'))).toBe(true);
    expect(await fs.readdir(req.workDir)).toEqual([]);
  });

  it('imports by digest', async () => {
    const { req } = request(`${anon.host}/test/app@${image.manifest.digest}`);
    expect((await importOciImage(req)).manifestDigest).toBe(image.manifest.digest);
    expect(await debugfs(req.outFile, 'cat /etc/hello')).toBe('hello from layer 1\n');
  });

  it('imports with basic auth, and refuses missing or wrong credentials clearly', async () => {
    const { req } = request(`${basic.host}/test/app:v1`, ALICE);
    await importOciImage(req);
    await expectSampleRootfs(req.outFile);

    const none = request(`${basic.host}/test/app:v1`).req;
    await expect(importOciImage(none)).rejects.toMatchObject({
      code: 'IMPORT_FAILED',
      message: 'the registry requires credentials for test/app',
    });
    await expectNothingLeft(none);

    const wrong = request(`${basic.host}/test/app:v1`, { username: 'alice', password: 'nope' }).req;
    await expect(importOciImage(wrong)).rejects.toMatchObject({
      code: 'IMPORT_FAILED',
      message: 'the registry rejected the credentials of "alice" for test/app',
      details: { reason: 'unauthorized' },
    });
    await expectNothingLeft(wrong);
  });

  it('follows the bearer-token challenge, with credentials and anonymously', async () => {
    const before = tokens.requests.length;
    const { req } = request(`${tokenRegistry.host}/test/app:v1`, { username: 'bob', password: 'builder' });
    await importOciImage(req);
    await expectSampleRootfs(req.outFile);
    expect(tokens.requests.slice(before)).toEqual([
      { service: 'nqvm-test-registry', scopes: ['repository:test/app:pull'], user: 'bob', granted: true },
    ]);

    const anonymous = request(`${tokenRegistry.host}/test/app:v1`).req;
    expect((await importOciImage(anonymous)).manifestDigest).toBe(image.manifest.digest);
    expect(tokens.requests.at(-1)).toMatchObject({ user: null, granted: true });

    const wrong = request(`${tokenRegistry.host}/test/app:v1`, { username: 'bob', password: 'guess' }).req;
    await expect(importOciImage(wrong)).rejects.toMatchObject({
      code: 'IMPORT_FAILED',
      message: expect.stringMatching(
        /^the token service 127\.0\.0\.1:\d+ rejected the credentials of "bob"$/,
      ),
    });
    await expectNothingLeft(wrong);
  });

  it('follows blob redirects without sending the registry credentials to the other host', async () => {
    const { req } = request(`${proxy.host}/test/app:v1`, ALICE);
    await importOciImage(req);
    await expectSampleRootfs(req.outFile);
    expect(proxy.storageRequests).toHaveLength(3);
    expect(proxy.storageRequests.map((r) => r.authorization)).toEqual([null, null, null]);
  });

  it('picks linux/amd64 from an index, and says so when there is none', async () => {
    const arm = await sampleImage({
      hello: 'arm64\n',
      platform: { os: 'linux', architecture: 'arm64', variant: 'v8' },
    });
    const amd = await sampleImage({ hello: 'amd64\n' });
    const target = { url: anon.url, repository: 'test/multi' };
    await pushIndex(target, 'both', [arm, amd], buildIndex([arm, amd]));
    await pushIndex(target, 'arm-only', [arm], buildIndex([arm]));

    const { req } = request(`${anon.host}/test/multi:both`);
    expect((await importOciImage(req)).manifestDigest).toBe(amd.manifest.digest);
    expect(await debugfs(req.outFile, 'cat /etc/hello')).toBe('amd64\n');

    const armOnly = request(`${anon.host}/test/multi:arm-only`).req;
    await expect(importOciImage(armOnly)).rejects.toMatchObject({
      code: 'IMPORT_FAILED',
      message: 'the image has no linux/amd64 variant (it offers: linux/arm64)',
    });
    const armManifest = request(`${anon.host}/test/multi@${arm.manifest.digest}`).req;
    await expect(importOciImage(armManifest)).rejects.toMatchObject({
      message: expect.stringContaining('is a linux/arm64 image, not linux/amd64'),
    });
    await expectNothingLeft(armManifest);
  });

  it('reads Docker manifest lists and v2 manifests, with an uncompressed layer', async () => {
    const docker = await buildImageFromEntries({
      format: 'docker',
      layers: [
        { compression: 'gzip', entries: [{ name: 'bin/sh', type: 'file', content: 'old', mode: 0o755 }] },
        {
          compression: 'none',
          entries: [
            { name: 'bin/sh', type: 'file', content: 'new', mode: 0o755 },
            { name: 'etc/os-release', type: 'file', content: 'ID=test\n' },
          ],
        },
      ],
      config: { Cmd: ['/bin/sh'] },
    });
    expect(docker.manifest.mediaType).toBe('application/vnd.docker.distribution.manifest.v2+json');
    await pushIndex(
      { url: anon.url, repository: 'test/docker' },
      'list',
      [docker],
      buildIndex([docker], 'docker'),
    );

    const { req } = request(`${anon.host}/test/docker:list`);
    const result = await importOciImage(req);
    expect(result).toMatchObject({
      manifestDigest: docker.manifest.digest,
      config: { cmd: ['/bin/sh'], entrypoint: null },
    });
    expect(await debugfs(req.outFile, 'cat /bin/sh')).toBe('new');
    expect(await debugfs(req.outFile, 'cat /etc/os-release')).toBe('ID=test\n');
  });

  it('fails on a blob whose digest does not match and leaves nothing behind', async () => {
    const victim = await sampleImage({ hello: 'this layer gets corrupted\n' });
    await pushImage({ url: anon.url, repository: 'test/corrupt' }, 'v1', victim);
    const blob = anon.blobPath(victim.layers[0]!.digest);
    const bytes = await fs.readFile(blob);
    bytes[bytes.length - 5]! ^= 0xff;
    await fs.writeFile(blob, bytes);

    const { req } = request(`${anon.host}/test/corrupt:v1`);
    await expect(importOciImage(req)).rejects.toMatchObject({
      code: 'CHECKSUM_MISMATCH',
      details: { expected: victim.layers[0]!.digest },
    });
    await expectNothingLeft(req);
  });

  it('refuses a layer entry climbing out of the tree and writes nothing outside workDir', async () => {
    const evil = await buildImageFromEntries({
      layers: [
        {
          compression: 'gzip',
          entries: [
            { name: 'etc/ok', type: 'file', content: 'ok' },
            { name: '../../../escaped-by-oci-test', type: 'file', content: 'pwned' },
          ],
        },
      ],
    });
    await pushImage({ url: anon.url, repository: 'test/evil' }, 'v1', evil);
    const { req } = request(`${anon.host}/test/evil:v1`);
    await expect(importOciImage(req)).rejects.toMatchObject({
      code: 'IMPORT_FAILED',
      details: { reason: 'unsafe_path' },
    });
    await expectNothingLeft(req);
    for (const dir of [base, tmpdir(), '/']) {
      expect(await fs.readdir(dir)).not.toContain('escaped-by-oci-test');
    }
  });

  it('on abort stops and removes everything', async () => {
    const controller = new AbortController();
    const { req } = request(`${anon.host}/test/app:v1`, {
      signal: controller.signal,
      onProgress: (_p, message) => {
        if (message.startsWith('applying layer 2')) controller.abort(new Error('cancelled by the test'));
      },
    });
    await expect(importOciImage(req)).rejects.toThrow('cancelled by the test');
    await expectNothingLeft(req);
  });

  it('says when the image or registry does not exist', async () => {
    const { req } = request(`${anon.host}/test/nothing:v1`);
    await expect(importOciImage(req)).rejects.toMatchObject({
      code: 'IMPORT_FAILED',
      message: 'manifest v1 of test/nothing not found in the registry',
    });
    const port = await freePort();
    const closed = request(`127.0.0.1:${port}/test/app:v1`).req;
    await expect(importOciImage(closed)).rejects.toMatchObject({
      code: 'IMPORT_FAILED',
      message: `cannot reach 127.0.0.1:${port}: ECONNREFUSED`,
    });
  });
});

describe('resolveOciImage', () => {
  it('answers the linux/amd64 manifest digest, the config and the pinned reference, pulling no layer', async () => {
    const amd = await sampleImage({ hello: 'resolved amd64\n' });
    const arm = await sampleImage({ hello: 'arm\n', platform: { os: 'linux', architecture: 'arm64' } });
    await pushIndex({ url: anon.url, repository: 'test/resolve' }, 'v2', [arm, amd], buildIndex([arm, amd]));
    // Its own layer is gone from the registry: resolving must not need it.
    await fs.rm(anon.blobPath(amd.layers[0]!.digest));
    const r = await resolveOciImage(`${anon.host}/test/resolve:v2`);
    expect(r).toEqual({
      manifestDigest: amd.manifest.digest,
      config: { ...SAMPLE_CONFIG },
      pinned: `${anon.host}/test/resolve:v2@${amd.manifest.digest}`,
    });
    expect((await resolveOciImage(r.pinned)).manifestDigest).toBe(amd.manifest.digest);
  });

  it('gives registry failures codes of their own', async () => {
    await expect(resolveOciImage(`${anon.host}/test/absent:v1`)).rejects.toMatchObject({
      code: 'REGISTRY_IMAGE_NOT_FOUND',
    });
    await expect(resolveOciImage(`${basic.host}/test/app:v1`)).rejects.toMatchObject({
      code: 'REGISTRY_AUTH_FAILED',
    });
    await expect(
      resolveOciImage(`${tokenRegistry.host}/test/app:v1`, { username: 'bob', password: 'guess' }),
    ).rejects.toMatchObject({ code: 'REGISTRY_AUTH_FAILED' });
    expect((await resolveOciImage(`${basic.host}/test/app:v1`, ALICE)).manifestDigest).toBe(
      image.manifest.digest,
    );
    await expect(resolveOciImage(`127.0.0.1:${await freePort()}/test/app:v1`)).rejects.toMatchObject({
      code: 'REGISTRY_UNREACHABLE',
    });
    await expect(resolveOciImage('Not A Reference')).rejects.toMatchObject({ code: 'VALIDATION_FAILED' });
    const arm = await sampleImage({ platform: { os: 'linux', architecture: 'arm64' } });
    await pushIndex({ url: anon.url, repository: 'test/resolve-arm' }, 'v1', [arm], buildIndex([arm]));
    await expect(resolveOciImage(`${anon.host}/test/resolve-arm:v1`)).rejects.toMatchObject({
      code: 'IMAGE_UNSUPPORTED',
    });
  });

  it('a registry that does not answer in time is unreachable', async () => {
    const silent = net.createServer(() => {});
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const port = (silent.address() as net.AddressInfo).port;
    try {
      await expect(
        resolveOciImage(`127.0.0.1:${port}/test/app:v1`, { signal: AbortSignal.timeout(300) }),
      ).rejects.toMatchObject({
        code: 'REGISTRY_UNREACHABLE',
        message: 'the registry 127.0.0.1:' + port + ' did not answer in time',
      });
    } finally {
      silent.close();
    }
  });
});
