import { request } from 'node:http';
import { socketAddress } from './process';

/** Firecracker answered 4xx/5xx; `faultMessage` is its own text, for the user. */
export class FirecrackerApiError extends Error {
  readonly code = 'FIRECRACKER_API';
  constructor(
    readonly method: string,
    readonly path: string,
    readonly status: number,
    readonly faultMessage: string,
  ) {
    super(`Firecracker API ${method} ${path} answered ${status}: ${faultMessage}`);
    this.name = 'FirecrackerApiError';
  }
}

/**
 * The request got no answer: the socket refused or broke (the VMM died or closed it) or the
 * deadline passed. Names the request, which the socket's own error ("socket hang up") does not.
 */
export class FirecrackerConnectionError extends Error {
  readonly code = 'FIRECRACKER_API';
  constructor(
    readonly method: string,
    readonly path: string,
    override readonly cause: Error,
    /** No answer before the deadline (the VMM may still run). */
    readonly timedOut = false,
  ) {
    super(`Firecracker API ${method} ${path}: ${cause.message}`);
    this.name = 'FirecrackerConnectionError';
  }
}

/**
 * HTTP/1.1 over the API Unix socket. One connection per request: the API server handles one
 * request at a time and the socket is local, so keep-alive buys nothing.
 *
 * @example
 * const api = new FirecrackerApiClient('/run/vm/api.sock');
 * await api.put('/actions', { action_type: 'InstanceStart' });
 */
export class FirecrackerApiClient {
  /** Requests sent, for the boot figures. */
  requests = 0;

  constructor(
    readonly socketPath: string,
    private readonly timeoutMs = 10_000,
  ) {}

  get<T>(path: string, timeoutMs?: number): Promise<T> {
    return this.send('GET', path, undefined, timeoutMs) as Promise<T>;
  }

  async put(path: string, body: unknown, timeoutMs?: number): Promise<void> {
    await this.send('PUT', path, body, timeoutMs);
  }

  async patch(path: string, body: unknown, timeoutMs?: number): Promise<void> {
    await this.send('PATCH', path, body, timeoutMs);
  }

  private send(method: string, path: string, body: unknown, timeoutMs = this.timeoutMs): Promise<unknown> {
    this.requests++;
    const text = body === undefined ? undefined : JSON.stringify(body);
    const broken = (err: Error, timedOut = false) =>
      new FirecrackerConnectionError(method, path, err, timedOut);
    let addr: ReturnType<typeof socketAddress>;
    try {
      addr = socketAddress(this.socketPath);
    } catch (err) {
      return Promise.reject(broken(err as Error));
    }
    return new Promise((resolve, reject) => {
      const req = request(
        {
          socketPath: addr.path,
          method,
          path,
          agent: false,
          timeout: timeoutMs,
          headers: {
            Accept: 'application/json',
            // Firecracker's HTTP server takes Content-Length bodies only (no chunked encoding).
            ...(text !== undefined
              ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) }
              : {}),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', (err) => reject(broken(err)));
          res.on('end', () => {
            const raw = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown = null;
            if (raw !== '') {
              try {
                parsed = JSON.parse(raw);
              } catch {
                parsed = raw;
              }
            }
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) resolve(parsed);
            else {
              const fault =
                parsed && typeof parsed === 'object' && 'fault_message' in parsed
                  ? String((parsed as { fault_message: unknown }).fault_message)
                  : raw;
              reject(new FirecrackerApiError(method, path, status, fault));
            }
          });
        },
      );
      let timedOut = false;
      req.on('timeout', () => {
        timedOut = true;
        req.destroy(new Error(`no answer in ${timeoutMs} ms`));
      });
      req.on('error', (err) => reject(broken(err, timedOut)));
      req.end(text);
    }).finally(addr.release);
  }
}
