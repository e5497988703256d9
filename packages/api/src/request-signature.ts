/**
 * Manager -> agent request signatures: Ed25519 over `signingInput(method, pathWithQuery,
 * timestamp, sha256hex(body))`, sent in the x-nqvm-timestamp / x-nqvm-signature headers.
 */
import { createHash, type KeyObject, sign, verify } from 'node:crypto';
import { SIGNATURE_HEADER, SIGNATURE_MAX_SKEW_MS, signingInput, TIMESTAMP_HEADER } from './agent-protocol';
import { AuthenticationError } from './errors';

export function sha256Hex(body: Uint8Array): string {
  return createHash('sha256').update(body).digest('hex');
}

export interface SignedRequest {
  method: string;
  /** Path with query string, exactly as sent (e.g. `/v1/vms/ID/console?tail=100`). */
  url: string;
  timestamp: string | undefined;
  signature: string | undefined;
  body: Uint8Array;
}

/** Cheap checks that need no body: both headers present and the timestamp fresh. */
export function checkSignatureHeaders(
  req: Pick<SignedRequest, 'timestamp' | 'signature'>,
  now = Date.now(),
): { timestamp: string; signature: string } {
  const { timestamp, signature } = req;
  if (!timestamp || !signature) {
    throw new AuthenticationError(
      `unsigned request: ${TIMESTAMP_HEADER} and ${SIGNATURE_HEADER} are required`,
    );
  }
  if (!/^\d{1,16}$/.test(timestamp))
    throw new AuthenticationError(`${TIMESTAMP_HEADER} must be ms since the epoch`);
  if (Math.abs(now - Number(timestamp)) > SIGNATURE_MAX_SKEW_MS) {
    throw new AuthenticationError(
      `request timestamp is more than ${SIGNATURE_MAX_SKEW_MS / 1000} s away from the agent's clock`,
    );
  }
  return { timestamp, signature };
}

/** Throws an AuthenticationError unless `req` carries a fresh signature by `publicKey`. */
export function verifyManagerSignature(req: SignedRequest, publicKey: KeyObject, now = Date.now()): void {
  const { timestamp, signature } = checkSignatureHeaders(req, now);
  const sig = Buffer.from(signature, 'base64');
  let ok = false;
  try {
    ok = verify(null, signingInput(req.method, req.url, timestamp, sha256Hex(req.body)), publicKey, sig);
  } catch {
    ok = false;
  }
  if (!ok) throw new AuthenticationError('bad request signature');
}

/**
 * The headers the manager adds to every request it sends an agent (tests and tools use it too).
 *
 * @example
 * const headers = signManagerRequest(privateKey, 'PUT', `/v1/vms/${id}`, JSON.stringify(cmd));
 * await fetch(`${agentUrl}/v1/vms/${id}`, { method: 'PUT', headers: { ...headers, 'content-type': 'application/json' }, body });
 */
export function signManagerRequest(
  privateKey: KeyObject,
  method: string,
  pathAndQuery: string,
  body: string | Uint8Array = '',
  now = Date.now(),
): Record<string, string> {
  const timestamp = String(now);
  const bytes = typeof body === 'string' ? Buffer.from(body) : body;
  const signature = sign(null, signingInput(method, pathAndQuery, timestamp, sha256Hex(bytes)), privateKey);
  return { [TIMESTAMP_HEADER]: timestamp, [SIGNATURE_HEADER]: signature.toString('base64') };
}
