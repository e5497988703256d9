import { describe, expect, it } from 'vitest';
import { parseImageConfig, parseManifest, selectLinuxAmd64 } from './manifest';
import { parseChallenge } from './registry-client';

const d = (n: number) => `sha256:${String(n).repeat(64).slice(0, 64)}`;
const json = (o: unknown) => Buffer.from(JSON.stringify(o));

describe('parseManifest', () => {
  it('tells an index from an image manifest by content type, else by shape', () => {
    const index = { schemaVersion: 2, manifests: [{ mediaType: 'x', digest: d(1), size: 1 }] };
    expect(parseManifest(json(index), 'application/vnd.oci.image.index.v1+json').kind).toBe('index');
    expect(parseManifest(json(index), null).kind).toBe('index');
    const image = {
      schemaVersion: 2,
      config: { mediaType: 'c', digest: d(2), size: 2 },
      layers: [{ mediaType: 'l', digest: d(3), size: 3 }],
    };
    expect(
      parseManifest(json(image), 'application/vnd.docker.distribution.manifest.v2+json; charset=utf-8'),
    ).toEqual({ kind: 'manifest', config: image.config, layers: image.layers });
  });

  it('refuses schema 1 manifests and malformed descriptors', () => {
    expect(() => parseManifest(json({ schemaVersion: 1, fsLayers: [] }), null)).toThrow('Docker v1 manifest');
    const bad = { schemaVersion: 2, config: { mediaType: 'c', digest: 'sha256:zz', size: 1 }, layers: [] };
    expect(() => parseManifest(json(bad), null)).toThrow('malformed image manifest');
    expect(() => parseManifest(Buffer.from('<html>'), null)).toThrow('not JSON');
  });
});

describe('selectLinuxAmd64', () => {
  const entry = (os: string, architecture: string, variant?: string, n = 1) => ({
    mediaType: 'm',
    digest: d(n),
    size: 1,
    platform: { os, architecture, ...(variant ? { variant } : {}) },
  });

  it('picks linux/amd64, preferring no variant (or v1) over a higher microarchitecture level', () => {
    const chosen = selectLinuxAmd64([
      entry('linux', 'arm64', 'v8', 1),
      entry('linux', 'amd64', 'v3', 2),
      entry('windows', 'amd64', undefined, 3),
      entry('linux', 'amd64', undefined, 4),
    ]);
    expect(chosen.digest).toBe(d(4));
    expect(selectLinuxAmd64([entry('linux', 'amd64', 'v3', 5)]).digest).toBe(d(5));
  });

  it('names what the index offers when there is no linux/amd64', () => {
    expect(() => selectLinuxAmd64([entry('linux', 'arm64'), entry('linux', 's390x')])).toThrow(
      'the image has no linux/amd64 variant (it offers: linux/arm64, linux/s390x)',
    );
  });
});

describe('parseImageConfig', () => {
  it('keeps entrypoint, cmd, env, working dir, user and exposed ports', () => {
    const doc = parseImageConfig(
      json({
        os: 'linux',
        architecture: 'amd64',
        config: {
          Entrypoint: ['/init'],
          Cmd: null,
          Env: ['A=1'],
          WorkingDir: '',
          User: 'nobody',
          ExposedPorts: { '53/udp': {}, '443/tcp': {} },
        },
      }),
    );
    expect(doc).toEqual({
      os: 'linux',
      architecture: 'amd64',
      config: {
        entrypoint: ['/init'],
        cmd: null,
        env: ['A=1'],
        working_dir: null,
        user: 'nobody',
        exposed_ports: ['443/tcp', '53/udp'],
      },
    });
    expect(parseImageConfig(json({ config: null })).config).toEqual({
      entrypoint: null,
      cmd: null,
      env: [],
      working_dir: null,
      user: null,
      exposed_ports: [],
    });
  });
});

describe('parseChallenge', () => {
  it('reads the scheme and quoted or bare parameters', () => {
    expect(
      parseChallenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"',
      ),
    ).toEqual({
      scheme: 'bearer',
      params: {
        realm: 'https://auth.docker.io/token',
        service: 'registry.docker.io',
        scope: 'repository:library/alpine:pull',
      },
    });
    expect(parseChallenge('Basic realm=registry')).toEqual({
      scheme: 'basic',
      params: { realm: 'registry' },
    });
  });
});
