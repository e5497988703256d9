import { request } from 'node:http';

export interface FcResponse {
  status: number;
  body: unknown;
}

/**
 * One request to a Firecracker API socket (test helper).
 * @example await fcRequest(sock, 'PUT', '/actions', { action_type: 'InstanceStart' })
 */
export function fcRequest(
  socketPath: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<FcResponse> {
  const text = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        method,
        path,
        headers: {
          Accept: 'application/json',
          ...(text !== undefined
            ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) }
            : {}),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const raw = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode ?? 0, body: raw === '' ? null : JSON.parse(raw) });
        });
      },
    );
    req.on('error', reject);
    req.end(text);
  });
}
