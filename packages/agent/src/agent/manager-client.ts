/**
 * The agent's calls to the manager (register, heartbeat, rotate-credential): JSON over HTTP(S)
 * with a Bearer token. When the join token carried the manager's certificate fingerprint, the
 * TLS connection is checked against that pin before a single byte of the request is sent.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { isIP } from 'node:net';
import tls from 'node:tls';
import { type AgentHeartbeat, AgentHeartbeatResponse, type AgentRegister, AgentRegistered } from '@nqvm/api';
import { z } from 'zod';

export type HeartbeatBody = z.infer<typeof AgentHeartbeat>;
export type RegisterBody = z.input<typeof AgentRegister>;
export type Registered = z.infer<typeof AgentRegistered>;

export interface ManagerEndpoint {
  /** e.g. `https://manager.example:8443` (no trailing slash). */
  base: string;
  /** sha256 hex of the manager's certificate (DER); null: the system's CA checks. */
  tlsFingerprint: string | null;
}

/** A join token split into the secret sent to the manager and the certificate pin. */
export interface JoinToken {
  secret: string;
  tlsFingerprint: string | null;
}

/**
 * Splits `secret~sha256:<hex>` (the form the manager hands out under TLS) from a bare secret.
 *
 * @example
 * parseJoinToken('nqvm_join_abc~sha256:9f86d0...'); // { secret: 'nqvm_join_abc', tlsFingerprint: '9f86d0...' }
 */
export function parseJoinToken(token: string): JoinToken {
  const at = token.indexOf('~');
  if (at < 0) return { secret: token, tlsFingerprint: null };
  const pin = token.slice(at + 1);
  const m = /^sha256:([0-9a-fA-F:]+)$/.exec(pin);
  const hex = m?.[1]?.replaceAll(':', '').toLowerCase();
  if (hex?.length !== 64) throw new Error('the join token carries a malformed certificate pin');
  return { secret: token.slice(0, at), tlsFingerprint: hex };
}

/** The manager answered with an error status (or could not be reached: status null). */
export class ManagerRequestError extends Error {
  constructor(
    readonly status: number | null,
    readonly code: string | null,
    message: string,
    /** Worth trying again later: the manager is unreachable or failing, not refusing. */
    readonly retryable = status === null || status >= 500,
  ) {
    super(message);
    this.name = 'ManagerRequestError';
  }

  get unauthorized(): boolean {
    return this.status === 401;
  }
}

const REQUEST_TIMEOUT_MS = 10_000;
const ErrorBody = z.object({ error: z.object({ code: z.string(), message: z.string() }) });

export class ManagerClient {
  constructor(readonly endpoint: ManagerEndpoint) {}

  register(joinSecret: string, body: RegisterBody): Promise<Registered> {
    return this.post('/api/v1/agent/register', joinSecret, body, AgentRegistered);
  }

  heartbeat(credential: string, body: HeartbeatBody): Promise<z.infer<typeof AgentHeartbeatResponse>> {
    return this.post('/api/v1/agent/heartbeat', credential, body, AgentHeartbeatResponse);
  }

  async rotateCredential(credential: string): Promise<string> {
    const out = await this.post('/api/v1/agent/rotate-credential', credential, undefined, RotateResponse);
    return out.credential;
  }

  private async post<T extends z.ZodType>(
    pathname: string,
    bearer: string,
    body: unknown,
    schema: T,
  ): Promise<z.infer<T>> {
    const url = new URL(pathname, `${this.endpoint.base}/`);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string> = { authorization: `Bearer ${bearer}`, accept: 'application/json' };
    if (payload) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(payload.length);
    }
    let res: { status: number; text: string };
    try {
      res = await this.send(url, 'POST', headers, payload);
    } catch (err) {
      throw new ManagerRequestError(
        null,
        null,
        `cannot reach the manager at ${this.endpoint.base}: ${(err as Error).message}`,
        !(err instanceof TlsPinMismatchError),
      );
    }
    let json: unknown;
    try {
      json = res.text ? JSON.parse(res.text) : undefined;
    } catch {
      json = undefined;
    }
    if (res.status >= 400) {
      const e = ErrorBody.safeParse(json);
      throw new ManagerRequestError(
        res.status,
        e.success ? e.data.error.code : null,
        `manager answered ${res.status} to ${pathname}: ${e.success ? e.data.error.message : res.text.slice(0, 200)}`,
      );
    }
    const parsed = schema.safeParse(json);
    if (!parsed.success) {
      throw new ManagerRequestError(
        res.status,
        null,
        `unexpected answer from ${pathname}: ${res.text.slice(0, 200)}`,
      );
    }
    return parsed.data;
  }

  private send(
    url: URL,
    method: string,
    headers: Record<string, string>,
    payload: Buffer | undefined,
  ): Promise<{ status: number; text: string }> {
    const pin = this.endpoint.tlsFingerprint;
    const isHttps = url.protocol === 'https:';
    return new Promise((resolve, reject) => {
      const options: http.RequestOptions = {
        method,
        host: url.hostname.replace(/^\[|\]$/g, ''),
        port: url.port || (isHttps ? 443 : 80),
        path: `${url.pathname}${url.search}`,
        headers: { ...headers, host: url.host },
        timeout: REQUEST_TIMEOUT_MS,
      };
      let req: http.ClientRequest;
      if (isHttps && pin) {
        // The request goes over a TLS socket we verified ourselves, so it is a plain http.request.
        // No `agent`: Node uses createConnection only when no agent is given.
        req = http.request({
          ...options,
          createConnection: (_opts, oncreate) => {
            connectPinned(url, pin).then(
              (socket) => oncreate(null, socket),
              (err: Error) => oncreate(err, undefined as never),
            );
            return undefined;
          },
        });
      } else {
        req = (isHttps ? https : http).request(options);
      }
      req.on('timeout', () => req.destroy(new Error(`no answer within ${REQUEST_TIMEOUT_MS} ms`)));
      req.on('error', reject);
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }),
        );
      });
      req.end(payload);
    });
  }
}

const RotateResponse = z.object({ credential: z.string().min(1) });

/** The manager presented another certificate than the pinned one: retrying will not help. */
class TlsPinMismatchError extends Error {}

/** A TLS connection to the manager whose certificate is exactly the pinned one. */
function connectPinned(url: URL, fingerprint: string): Promise<tls.TLSSocket> {
  const host = url.hostname.replace(/^\[|\]$/g, '');
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host,
      port: Number(url.port || 443),
      servername: isIP(host) ? undefined : host,
      // The pin replaces CA and host name checks: a self-signed certificate is the usual case.
      rejectUnauthorized: false,
      ALPNProtocols: ['http/1.1'],
    });
    socket.once('error', reject);
    socket.once('secureConnect', () => {
      const raw = socket.getPeerCertificate().raw;
      const actual = raw ? createHash('sha256').update(raw).digest('hex') : '(none)';
      if (actual !== fingerprint) {
        socket.destroy();
        reject(
          new TlsPinMismatchError(
            `the manager's TLS certificate (sha256:${actual}) is not the one pinned by the join token (sha256:${fingerprint})`,
          ),
        );
        return;
      }
      socket.off('error', reject);
      resolve(socket);
    });
  });
}
