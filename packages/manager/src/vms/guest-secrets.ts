/**
 * Guest passwords leave the manager only as SHA-512 crypt hashes ($6$), the form /etc/shadow
 * and cloud-init's `passwd` take; the plaintext is never stored, logged or returned.
 */
import { encrypt } from 'unixcrypt';

export function hashGuestPassword(plain: string): string {
  return encrypt(plain);
}
