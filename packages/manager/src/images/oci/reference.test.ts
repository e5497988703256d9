import { describe, expect, it } from 'vitest';
import { formatImageReference, parseImageReference, usesPlainHttp } from './reference';

const DIGEST = `sha256:${'a'.repeat(64)}`;

describe('parseImageReference', () => {
  it.each([
    ['alpine', 'docker.io', 'registry-1.docker.io', 'library/alpine', 'latest', null],
    ['alpine:3.20', 'docker.io', 'registry-1.docker.io', 'library/alpine', '3.20', null],
    ['docker.io/library/alpine:3.20', 'docker.io', 'registry-1.docker.io', 'library/alpine', '3.20', null],
    ['index.docker.io/library/alpine', 'docker.io', 'registry-1.docker.io', 'library/alpine', 'latest', null],
    ['bitnami/redis', 'docker.io', 'registry-1.docker.io', 'bitnami/redis', 'latest', null],
    ['registry.example:5000/a/b:tag', 'registry.example:5000', 'registry.example:5000', 'a/b', 'tag', null],
    ['localhost/app', 'localhost', 'localhost', 'app', 'latest', null],
    ['localhost:5000/app:v1', 'localhost:5000', 'localhost:5000', 'app', 'v1', null],
    ['127.0.0.1:5000/x/y/z', '127.0.0.1:5000', '127.0.0.1:5000', 'x/y/z', 'latest', null],
    [`alpine@${DIGEST}`, 'docker.io', 'registry-1.docker.io', 'library/alpine', null, DIGEST],
    [`ghcr.io/o/r:1.0@${DIGEST}`, 'ghcr.io', 'ghcr.io', 'o/r', '1.0', DIGEST],
    ['quay.io/some_org/app-name.x__y', 'quay.io', 'quay.io', 'some_org/app-name.x__y', 'latest', null],
  ])('%s', (input, registry, apiHost, repository, tag, digest) => {
    expect(parseImageReference(input)).toEqual({ registry, apiHost, repository, tag, digest });
  });

  it.each([
    ['', 'is empty'],
    ['Alpine', 'repository'],
    ['alpine:', 'tag'],
    ['alpine:-bad', 'tag'],
    ['alpine@sha256:abc', 'digest'],
    ['registry.example:5000/', 'repository'],
    ['a//b', 'repository'],
    ['bad_host_/x', 'repository'],
    ['-host.example/x', 'registry'],
  ])('refuses %j (%s)', (input, what) => {
    expect(() => parseImageReference(input)).toThrow(
      expect.objectContaining({ code: 'VALIDATION_FAILED', message: expect.stringMatching(what) }),
    );
  });

  it('formats the canonical name', () => {
    expect(formatImageReference(parseImageReference('alpine'))).toBe('docker.io/library/alpine:latest');
    expect(formatImageReference(parseImageReference(`h:1/a@${DIGEST}`))).toBe(`h:1/a@${DIGEST}`);
  });
});

describe('usesPlainHttp', () => {
  it('defaults to http for loopback registries only, and obeys an explicit choice', () => {
    expect(usesPlainHttp(parseImageReference('127.0.0.1:5000/a'), undefined)).toBe(true);
    expect(usesPlainHttp(parseImageReference('localhost:5000/a'), undefined)).toBe(true);
    expect(usesPlainHttp(parseImageReference('registry.example/a'), undefined)).toBe(false);
    expect(usesPlainHttp(parseImageReference('alpine'), undefined)).toBe(false);
    expect(usesPlainHttp(parseImageReference('registry.example/a'), true)).toBe(true);
    expect(usesPlainHttp(parseImageReference('127.0.0.1:5000/a'), false)).toBe(false);
  });
});
