/**
 * A pull-only client for the registry HTTP API v2 on Node's fetch: anonymous, basic auth and the
 * bearer-token challenge flow; blobs streamed to a file with their digest checked on the way.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { NqvmError } from '@nqvm/api';
import { type Descriptor, MANIFEST_ACCEPT } from './manifest';

export interface RegistryClientOptions {
  /** `https://registry-1.docker.io` or `http://127.0.0.1:5000` */
  baseUrl: string;
  repository: string;
  username?: string;
  password?: string;
  signal?: AbortSignal;
}

export interface FetchedManifest {
  body: Buffer;
  contentType: string | null;
  digest: string;
}

interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
const MAX_CONFIG_BYTES = 16 * 1024 * 1024;
const MAX_REDIRECTS = 5;
const DIGEST = /^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;

/**
 * Why an import step failed, in `details.reason`: resolveOciImage turns the registry's into
 * codes of their own (an import keeps IMPORT_FAILED).
 */
export type RegistryFailureReason =
  | 'unsafe_path'
  | 'not_found'
  | 'unauthorized'
  | 'forbidden'
  | 'unreachable'
  | 'rate_limited'
  | 'platform'
  | 'unsupported';

export function importFailed(
  message: string,
  details?: { reason?: RegistryFailureReason } & Record<string, unknown>,
): NqvmError {
  return new NqvmError('IMPORT_FAILED', message, details);
}

/** `WWW-Authenticate: Bearer realm="...",service="...",scope="..."` as scheme and parameters. */
export function parseChallenge(header: string): Challenge {
  const space = header.indexOf(' ');
  const scheme = (space < 0 ? header : header.slice(0, space)).toLowerCase();
  const params: Record<string, string> = {};
  for (const m of header.slice(space + 1).matchAll(/([A-Za-z_]+)=(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))/g)) {
    params[m[1]!.toLowerCase()] = (m[2] ?? m[3] ?? '').replace(/\\(.)/g, '$1');
  }
  return { scheme, params };
}

export class RegistryClient {
  private authorization: string | null = null;
  private readonly origin: string;

  constructor(private readonly opts: RegistryClientOptions) {
    this.origin = new URL(opts.baseUrl).origin;
  }

  /**
   * Fetches a manifest or index by tag or digest. The body is checked against the digest asked
   * for, or for a tag against the registry's Docker-Content-Digest header when it sends one.
   */
  async getManifest(reference: string): Promise<FetchedManifest> {
    const what = `manifest ${reference}`;
    const res = await this.get(`manifests/${reference}`, { accept: MANIFEST_ACCEPT }, what);
    const body = await readLimited(res, MAX_MANIFEST_BYTES, what);
    const header = res.headers.get('docker-content-digest');
    const expected = reference.includes(':') ? reference : header && DIGEST.test(header) ? header : null;
    if (expected) verifyDigest(expected, body);
    const digest = expected ?? `sha256:${createHash('sha256').update(body).digest('hex')}`;
    return { body, contentType: res.headers.get('content-type'), digest };
  }

  /** A small blob (the image config) read into memory and verified. */
  async getBlob(desc: Descriptor): Promise<Buffer> {
    if (desc.size > MAX_CONFIG_BYTES)
      throw importFailed(`blob ${desc.digest} is larger than ${MAX_CONFIG_BYTES} bytes`);
    const res = await this.get(`blobs/${desc.digest}`, {}, `blob ${desc.digest}`);
    const body = await readLimited(res, desc.size, `blob ${desc.digest}`);
    verifyDigest(desc.digest, body);
    return body;
  }

  /** Streams a blob into `file`, hashing it as it goes; a wrong digest or size fails. */
  async downloadBlob(desc: Descriptor, file: string, onBytes: (n: number) => void): Promise<void> {
    const res = await this.get(`blobs/${desc.digest}`, {}, `blob ${desc.digest}`);
    if (!res.body) throw importFailed(`the registry sent no body for blob ${desc.digest}`);
    const [algo] = desc.digest.split(':') as [string];
    const hash = createHash(algo);
    let received = 0;
    const meter = new Transform({
      transform(chunk: Buffer, _enc, done) {
        received += chunk.length;
        if (received > desc.size) {
          done(
            new NqvmError('CHECKSUM_MISMATCH', `blob ${desc.digest} is larger than its ${desc.size} bytes`),
          );
          return;
        }
        hash.update(chunk);
        onBytes(chunk.length);
        done(null, chunk);
      },
    });
    await pipeline(Readable.fromWeb(res.body as WebReadableStream), meter, createWriteStream(file), {
      signal: this.opts.signal,
    });
    const actual = `${algo}:${hash.digest('hex')}`;
    if (received !== desc.size || actual !== desc.digest) {
      throw new NqvmError('CHECKSUM_MISMATCH', `blob ${desc.digest} arrived with digest ${actual}`, {
        expected: desc.digest,
        actual,
        size: received,
      });
    }
  }

  /** GET with the auth challenge answered once and redirects followed; any non-2xx is an error. */
  private async get(path: string, headers: Record<string, string>, what: string): Promise<Response> {
    const url = `${this.opts.baseUrl}/v2/${this.opts.repository}/${path}`;
    let res = await this.follow(url, headers);
    if (res.status === 401) {
      const header = res.headers.get('www-authenticate');
      await res.body?.cancel();
      if (!header) throw importFailed(`the registry refused ${what} (HTTP 401) without saying how to log in`);
      await this.authenticate(parseChallenge(header));
      res = await this.follow(url, headers);
      if (res.status === 401) {
        await res.body?.cancel();
        throw importFailed(
          this.opts.username
            ? `the registry rejected the credentials of "${this.opts.username}" for ${this.opts.repository}`
            : `the registry requires credentials for ${this.opts.repository}`,
          { reason: 'unauthorized' },
        );
      }
    }
    if (res.ok) return res;
    const text = (await res.text().catch(() => '')).slice(0, 300);
    if (res.status === 404)
      throw importFailed(`${what} of ${this.opts.repository} not found in the registry`, {
        reason: 'not_found',
      });
    if (res.status === 403) {
      throw importFailed(`the registry denied access to ${this.opts.repository}`, { reason: 'forbidden' });
    }
    if (res.status === 429)
      throw importFailed('the registry is rate limiting this client (HTTP 429)', { reason: 'rate_limited' });
    throw importFailed(`the registry answered HTTP ${res.status} for ${what}`, { body: text });
  }

  /** Follows redirects by hand: the registry's Authorization never goes to another origin. */
  private async follow(start: string, headers: Record<string, string>): Promise<Response> {
    let url = new URL(start);
    for (let hop = 0; ; hop++) {
      const sent = { ...headers };
      if (this.authorization && url.origin === this.origin) sent.authorization = this.authorization;
      let res: Response;
      try {
        res = await fetch(url, {
          headers: sent,
          redirect: 'manual',
          signal: this.opts.signal,
        });
      } catch (err) {
        if (this.opts.signal?.aborted) throw err;
        throw importFailed(`cannot reach ${url.host}: ${describe(err)}`, { reason: 'unreachable' });
      }
      const location = res.headers.get('location');
      if (res.status < 300 || res.status >= 400 || !location) return res;
      await res.body?.cancel();
      if (hop >= MAX_REDIRECTS) throw importFailed(`too many redirects fetching ${start}`);
      url = new URL(location, url);
      if (url.protocol !== 'https:' && url.protocol !== 'http:')
        throw importFailed(`bad redirect to ${url.protocol}`);
    }
  }

  private async authenticate(challenge: Challenge): Promise<void> {
    const { username, password } = this.opts;
    const basic =
      username !== undefined
        ? `Basic ${Buffer.from(`${username}:${password ?? ''}`).toString('base64')}`
        : null;
    if (challenge.scheme === 'basic') {
      if (!basic)
        throw importFailed(`the registry requires credentials for ${this.opts.repository}`, {
          reason: 'unauthorized',
        });
      this.authorization = basic;
      return;
    }
    if (challenge.scheme !== 'bearer' || !challenge.params.realm) {
      throw importFailed(`the registry asks for an unsupported authentication scheme "${challenge.scheme}"`);
    }
    const realm = new URL(challenge.params.realm);
    if (challenge.params.service) realm.searchParams.set('service', challenge.params.service);
    realm.searchParams.set('scope', challenge.params.scope ?? `repository:${this.opts.repository}:pull`);
    let res: Response;
    try {
      const headers: Record<string, string> = basic ? { authorization: basic } : {};
      res = await fetch(realm, { headers, signal: this.opts.signal });
    } catch (err) {
      if (this.opts.signal?.aborted) throw err;
      throw importFailed(`cannot reach the token service ${realm.host}: ${describe(err)}`, {
        reason: 'unreachable',
      });
    }
    if (res.status === 401 || res.status === 403) {
      await res.body?.cancel();
      throw importFailed(
        basic
          ? `the token service ${realm.host} rejected the credentials of "${username}"`
          : `the token service ${realm.host} requires credentials for ${this.opts.repository}`,
        { reason: 'unauthorized' },
      );
    }
    if (!res.ok) {
      await res.body?.cancel();
      throw importFailed(`the token service ${realm.host} answered HTTP ${res.status}`);
    }
    const body = (await res.json().catch(() => ({}))) as { token?: unknown; access_token?: unknown };
    const token = typeof body.token === 'string' && body.token ? body.token : body.access_token;
    if (typeof token !== 'string' || !token)
      throw importFailed(`the token service ${realm.host} returned no token`);
    this.authorization = `Bearer ${token}`;
  }
}

function verifyDigest(digest: string, body: Buffer): void {
  const [algo] = digest.split(':') as [string];
  const actual = `${algo}:${createHash(algo).update(body).digest('hex')}`;
  if (actual !== digest) {
    throw new NqvmError('CHECKSUM_MISMATCH', `content of ${digest} arrived with digest ${actual}`, {
      expected: digest,
      actual,
    });
  }
}

async function readLimited(res: Response, limit: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  if (!res.body) return Buffer.alloc(0);
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    size += chunk.length;
    if (size > limit) {
      await res.body.cancel().catch(() => {});
      throw importFailed(`${what} is larger than ${limit} bytes`);
    }
    chunks.push(Buffer.from(chunk));
  }
  return Buffer.concat(chunks);
}

function describe(err: unknown): string {
  const e = err as Error & { cause?: { code?: string; message?: string } };
  return e.cause?.code ?? e.cause?.message ?? e.message;
}
