/**
 * Manager -> agent request signatures: Ed25519 over `signingInput(method, pathWithQuery,
 * timestamp, nonce, sha256hex(body))`, sent in the x-nqvm-timestamp / x-nqvm-nonce /
 * x-nqvm-signature headers. A signature is good once: the agent remembers the nonces it
 * accepted for as long as their timestamps are fresh, so a captured request cannot be replayed.
 */
import { createHash, type KeyObject, randomBytes, sign, verify } from 'node:crypto';
import {
  NONCE_HEADER,
  SIGNATURE_HEADER,
  SIGNATURE_MAX_SKEW_MS,
  signingInput,
  TIMESTAMP_HEADER,
} from './agent-protocol';
import { NqvmError } from './errors';

export function sha256Hex(body: Uint8Array): string {
  return createHash('sha256').update(body).digest('hex');
}

export interface SignedRequest {
  method: string;
  /** Path with query string, exactly as sent (e.g. `/v1/vms/ID/console?tail=100`). */
  url: string;
  timestamp: string | undefined;
  nonce: string | undefined;
  signature: string | undefined;
  body: Uint8Array;
}

/** Cheap checks that need no body: the headers present and the timestamp fresh. */
export function checkSignatureHeaders(
  req: Pick<SignedRequest, 'timestamp' | 'nonce' | 'signature'>,
  now = Date.now(),
): { timestamp: string; nonce: string; signature: string } {
  const { timestamp, nonce, signature } = req;
  if (!timestamp || !nonce || !signature) {
    throw new NqvmError(
      'UNAUTHENTICATED',
      `unsigned request: ${TIMESTAMP_HEADER}, ${NONCE_HEADER} and ${SIGNATURE_HEADER} are required`,
    );
  }
  if (!/^\d{1,16}$/.test(timestamp))
    throw new NqvmError('UNAUTHENTICATED', `${TIMESTAMP_HEADER} must be ms since the epoch`);
  if (!/^[0-9a-f]{32}$/.test(nonce))
    throw new NqvmError('UNAUTHENTICATED', `${NONCE_HEADER} must be 32 hex digits`);
  if (Math.abs(now - Number(timestamp)) > SIGNATURE_MAX_SKEW_MS) {
    throw new NqvmError(
      'UNAUTHENTICATED',
      `request timestamp is more than ${SIGNATURE_MAX_SKEW_MS / 1000} s away from the agent's clock`,
    );
  }
  return { timestamp, nonce, signature };
}

/**
 * The nonces of accepted requests, kept while their timestamps could still pass the skew check
 * (afterwards the timestamp alone refuses them).
 */
export class ReplayGuard {
  private readonly seen = new Map<string, number>();

  /** Records `nonce`; false when it was seen within its window (a replay). */
  accept(nonce: string, timestamp: number, now = Date.now()): boolean {
    if (this.seen.size >= 100_000) this.sweep(now);
    if (this.seen.has(nonce)) return false;
    this.seen.set(nonce, timestamp + SIGNATURE_MAX_SKEW_MS);
    return true;
  }

  get size(): number {
    return this.seen.size;
  }

  private sweep(now: number): void {
    for (const [nonce, until] of this.seen) if (until < now) this.seen.delete(nonce);
  }
}

/**
 * Throws an UNAUTHENTICATED error unless `req` carries a fresh signature by `publicKey` whose
 * nonce `guard` has not seen before.
 */
export function verifyManagerSignature(
  req: SignedRequest,
  publicKey: KeyObject,
  guard: ReplayGuard,
  now = Date.now(),
): void {
  const { timestamp, nonce, signature } = checkSignatureHeaders(req, now);
  const sig = Buffer.from(signature, 'base64');
  let ok = false;
  try {
    ok = verify(
      null,
      signingInput(req.method, req.url, timestamp, nonce, sha256Hex(req.body)),
      publicKey,
      sig,
    );
  } catch {
    ok = false;
  }
  if (!ok) throw new NqvmError('UNAUTHENTICATED', 'bad request signature');
  if (!guard.accept(nonce, Number(timestamp), now))
    throw new NqvmError('UNAUTHENTICATED', 'replayed request: this signature was already used');
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
  const nonce = randomBytes(16).toString('hex');
  const bytes = typeof body === 'string' ? Buffer.from(body) : body;
  const signature = sign(
    null,
    signingInput(method, pathAndQuery, timestamp, nonce, sha256Hex(bytes)),
    privateKey,
  );
  return {
    [TIMESTAMP_HEADER]: timestamp,
    [NONCE_HEADER]: nonce,
    [SIGNATURE_HEADER]: signature.toString('base64'),
  };
}
