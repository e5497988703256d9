/**
 * The CLI's API client over TLS: a pinned certificate is trusted without any CA, another
 * certificate is refused before a request byte is sent, and a CA file works like the system's.
 */
import { execFileSync } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiClient, ApiError } from './api';

function selfSigned(dir: string, name: string): { key: string; cert: string; fingerprint: string } {
  const key = path.join(dir, `${name}.key`);
  const cert = path.join(dir, `${name}.pem`);
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-days',
      '1',
      '-subj',
      '/CN=127.0.0.1',
      '-addext',
      'subjectAltName=IP:127.0.0.1',
      '-keyout',
      key,
      '-out',
      cert,
    ],
    { stdio: 'ignore' },
  );
  const pem = fs.readFileSync(cert, 'utf8');
  const fingerprint = createHash('sha256').update(new X509Certificate(pem).raw).digest('hex');
  return { key: fs.readFileSync(key, 'utf8'), cert: pem, fingerprint };
}

describe('ApiClient over TLS', () => {
  let dir: string;
  let server: https.Server;
  let url: string;
  let cert: ReturnType<typeof selfSigned>;
  let other: ReturnType<typeof selfSigned>;
  const seen: string[] = [];

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-cli-tls-'));
    cert = selfSigned(dir, 'server');
    other = selfSigned(dir, 'other');
    server = https.createServer({ key: cert.key, cert: cert.cert }, (req, res) => {
      seen.push(`${req.method} ${req.url} ${req.headers.authorization ?? ''}`);
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ ok: true }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await new Promise((r) => server.close(r));
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('trusts exactly the pinned certificate', async () => {
    const api = new ApiClient({ server: url, token: 'tok', tls: { fingerprint: cert.fingerprint } });
    expect(await api.get('/api/v1/auth/me')).toEqual({ ok: true });
    expect(seen.at(-1)).toBe('GET /api/v1/auth/me Bearer tok');
  });

  it('refuses another certificate before sending anything', async () => {
    const before = seen.length;
    const api = new ApiClient({
      server: url,
      token: 'secret-token',
      tls: { fingerprint: other.fingerprint },
    });
    const err = await api.get('/api/v1/vms').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).message).toMatch(/is not the pinned one/);
    expect(seen.length).toBe(before);
  });

  it('refuses a self-signed certificate without a pin, and trusts it through a CA file', async () => {
    const plain = new ApiClient({ server: url, token: null, tls: {} });
    await expect(plain.get('/x')).rejects.toThrow(/self.signed|certificate/i);
    const caFile = path.join(dir, 'ca.pem');
    fs.writeFileSync(caFile, cert.cert);
    const withCa = new ApiClient({ server: url, token: null, tls: { ca_file: caFile } });
    expect(await withCa.get('/x')).toEqual({ ok: true });
  });
});
