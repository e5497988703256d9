/**
 * A tiny Docker token server for the bearer-token challenge flow. It signs ES256 JWTs with a key
 * whose self-signed certificate (made with `openssl` at start) is the registry's
 * `rootcertbundle`; the certificate travels in the JWT's `x5c` header, which distribution 2.8
 * verifies against that bundle.
 */
import { execFile } from 'node:child_process';
import { createPrivateKey, type KeyObject, randomUUID, sign, X509Certificate } from 'node:crypto';
import fs from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { RegistryTokenAuth } from './registry';

const execFileP = promisify(execFile);

export interface TokenRequestRecord {
  service: string | null;
  scopes: string[];
  /** The user of the basic credentials sent, or null for an anonymous request. */
  user: string | null;
  granted: boolean;
}

export interface TokenServer {
  /** What the registry's `auth.token` config needs. */
  registryAuth: RegistryTokenAuth;
  /** Every token request so far, oldest first. */
  requests: TokenRequestRecord[];
  /** A signed token granting `actions` on `repository` (for pushing fixtures). */
  issue(repository: string, actions: string[], subject?: string): string;
  stop(): Promise<void>;
}

export interface TokenServerOptions {
  /** Users allowed to get tokens with basic credentials. */
  users?: Record<string, string>;
  /** Whether a request without credentials gets a pull token (default false). */
  anonymous?: boolean;
  service?: string;
  issuer?: string;
}

export async function startTokenServer(opts: TokenServerOptions = {}): Promise<TokenServer> {
  const service = opts.service ?? 'nqvm-test-registry';
  const issuer = opts.issuer ?? 'nqvm-test-token-server';
  const dir = await fs.mkdtemp(join(tmpdir(), 'nqvm-token-'));
  const keyFile = join(dir, 'key.pem');
  const certFile = join(dir, 'cert.pem');
  await execFileP('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    keyFile,
    '-out',
    certFile,
    '-days',
    '2',
    '-subj',
    '/CN=nqvm-test-token-server',
  ]);
  const key = createPrivateKey(await fs.readFile(keyFile));
  const certDer = new X509Certificate(await fs.readFile(certFile)).raw.toString('base64');

  const issue = (repository: string, actions: string[], subject = 'anonymous') =>
    signToken(key, certDer, {
      iss: issuer,
      sub: subject,
      aud: service,
      access: [{ type: 'repository', name: repository, actions }],
    });

  const requests: TokenRequestRecord[] = [];
  const server = createServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  async function handle(req: IncomingMessage, res: ServerResponse) {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname !== '/token') return send(res, 404, { error: 'not found' });
    const scopes = url.searchParams.getAll('scope');
    const user = basicUser(req.headers.authorization, opts.users ?? {});
    const record: TokenRequestRecord = {
      service: url.searchParams.get('service'),
      scopes,
      user: user === false ? null : user,
      granted: false,
    };
    requests.push(record);
    if (user === false || (user === null && !opts.anonymous)) {
      res.setHeader('WWW-Authenticate', 'Basic realm="nqvm-test-token-server"');
      return send(res, 401, { details: 'incorrect username or password' });
    }
    const access = scopes.flatMap((s) => {
      const [type, name, actions] = s.split(':');
      if (type !== 'repository' || !name || !actions) return [];
      const wanted = actions.split(',');
      return [{ type, name, actions: user === null ? wanted.filter((a) => a === 'pull') : wanted }];
    });
    record.granted = true;
    const token = signToken(key, certDer, { iss: issuer, sub: user ?? 'anonymous', aud: service, access });
    // Half the clients read `token`, the other half `access_token`: answer with both, as Docker Hub does.
    send(res, 200, { token, access_token: token, expires_in: 300, issued_at: new Date().toISOString() });
  }

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    registryAuth: { realm: `http://127.0.0.1:${port}/token`, service, issuer, rootCertBundle: certFile },
    requests,
    issue,
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}

/** The user named by valid basic credentials, null when none were sent, false when they are wrong. */
function basicUser(header: string | undefined, users: Record<string, string>): string | null | false {
  if (!header) return null;
  const [scheme, value] = header.split(' ');
  if (scheme?.toLowerCase() !== 'basic' || !value) return false;
  const decoded = Buffer.from(value, 'base64').toString();
  const colon = decoded.indexOf(':');
  const user = decoded.slice(0, colon);
  return colon > 0 && users[user] !== undefined && users[user] === decoded.slice(colon + 1) ? user : false;
}

function signToken(key: KeyObject, certDer: string, claims: Record<string, unknown>): string {
  const now = Math.floor(Date.now() / 1000);
  const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = b64({ typ: 'JWT', alg: 'ES256', x5c: [certDer] });
  const body = b64({ ...claims, iat: now, nbf: now - 10, exp: now + 300, jti: randomUUID() });
  const sig = sign('sha256', Buffer.from(`${head}.${body}`), { key, dsaEncoding: 'ieee-p1363' });
  return `${head}.${body}.${sig.toString('base64url')}`;
}

function send(res: ServerResponse, status: number, body: object) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}
