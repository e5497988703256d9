/**
 * TLS connections checked against a pinned certificate fingerprint (sha256 of the DER) before a
 * single byte of a request is sent: how an agent trusts the manager named in its join token, and
 * how the CLI trusts a manager with a self-signed certificate (`nqvm login --tls-fingerprint`).
 */
import { createHash } from 'node:crypto';
import { isIP } from 'node:net';
import tls from 'node:tls';

/** The server presented another certificate than the pinned one: retrying will not help. */
export class TlsPinMismatchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TlsPinMismatchError';
  }
}

/** `sha256:AB:CD...`, `AB:CD...` or plain hex -> 64 lowercase hex digits, or null when malformed. */
export function normalizeFingerprint(text: string): string | null {
  const hex = text
    .trim()
    .replace(/^sha256:/i, '')
    .replaceAll(':', '')
    .toLowerCase();
  return /^[0-9a-f]{64}$/.test(hex) ? hex : null;
}

/**
 * Opens a TLS connection to `url`'s host and resolves once its certificate is exactly `fingerprint`.
 *
 * @example
 * const socket = await connectPinned(new URL('https://10.0.0.2:8443'), '9f86d0...');
 */
export function connectPinned(url: URL, fingerprint: string, who = 'the manager'): Promise<tls.TLSSocket> {
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
            `${who}'s TLS certificate (sha256:${actual}) is not the pinned one (sha256:${fingerprint})`,
          ),
        );
        return;
      }
      socket.off('error', reject);
      resolve(socket);
    });
  });
}
