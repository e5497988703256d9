/**
 * The agent's calls to the manager (register, heartbeat, rotate-credential, image blobs): JSON
 * (or a streamed blob) over HTTP(S) with a Bearer token. When the join token carried the manager's certificate fingerprint, the
 * TLS connection is checked against that pin before a single byte of the request is sent.
 */
import http from 'node:http';
import https from 'node:https';
import { type AgentHeartbeat, AgentHeartbeatResponse, type AgentRegister, AgentRegistered } from '@nqvm/api';
import { connectPinned, normalizeFingerprint, TlsPinMismatchError } from '@nqvm/api/tls-pin';
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
  const hex = /^sha256:/.test(pin) ? normalizeFingerprint(pin) : null;
  if (!hex) throw new Error('the join token carries a malformed certificate pin');
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
    const json = safeJson(res.text);
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

  /**
   * Streams an image blob (`GET /api/v1/agent/images/{sha256}`): resolves with the response
   * once its headers arrived; the caller reads (and verifies) the body.
   *
   * @example
   * const blob = await client.openImageBlob(credential, sha256);
   * for await (const chunk of blob.body) hash.update(chunk);
   */
  async openImageBlob(credential: string, sha256: string): Promise<ImageBlob> {
    if (!/^[a-f0-9]{64}$/.test(sha256)) throw new Error(`not a sha256 digest: ${JSON.stringify(sha256)}`);
    const pathname = `/api/v1/agent/images/${sha256}`;
    const url = new URL(pathname, `${this.endpoint.base}/`);
    let res: http.IncomingMessage;
    try {
      res = await this.open(url, 'GET', { authorization: `Bearer ${credential}` }, undefined);
    } catch (err) {
      throw new ManagerRequestError(
        null,
        null,
        `cannot reach the manager at ${this.endpoint.base}: ${(err as Error).message}`,
        !(err instanceof TlsPinMismatchError),
      );
    }
    const status = res.statusCode ?? 0;
    if (status >= 400) {
      const text = await readText(res).catch(() => '');
      const e = ErrorBody.safeParse(safeJson(text));
      throw new ManagerRequestError(
        status,
        e.success ? e.data.error.code : null,
        `manager answered ${status} to ${pathname}: ${e.success ? e.data.error.message : text.slice(0, 200)}`,
      );
    }
    const length = Number(res.headers['content-length']);
    return { size: Number.isSafeInteger(length) && length >= 0 ? length : null, body: res };
  }

  private async send(
    url: URL,
    method: string,
    headers: Record<string, string>,
    payload: Buffer | undefined,
  ): Promise<{ status: number; text: string }> {
    const res = await this.open(url, method, headers, payload);
    return { status: res.statusCode ?? 0, text: await readText(res) };
  }

  private open(
    url: URL,
    method: string,
    headers: Record<string, string>,
    payload: Buffer | undefined,
  ): Promise<http.IncomingMessage> {
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
      req.on('response', resolve);
      req.end(payload);
    });
  }
}

/** An image blob being received: `size` from Content-Length (null when the manager sent none). */
export interface ImageBlob {
  size: number | null;
  body: http.IncomingMessage;
}

async function readText(res: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

function safeJson(text: string): unknown {
  try {
    return text ? JSON.parse(text) : undefined;
  } catch {
    return undefined;
  }
}

const RotateResponse = z.object({ credential: z.string().min(1) });
