/**
 * The checks every guest setting passes before it reaches a file in the guest or a debugfs
 * command: what the manager validated is checked again here, because the agent writes into a
 * disk image with a tool that parses its own command language.
 */
import type { AgentGuestConfig } from '@nqvm/api';

const HOST_LABEL = /^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/;
const USER_NAME = /^[a-z_][a-z0-9_-]{0,31}$/;
/** SHA-512 crypt as crypt(3) and busybox write it: `$6$[rounds=N$]salt$hash`. */
const SHA512_CRYPT = /^\$6\$(rounds=\d{1,9}\$)?[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}$/;
/** One authorized_keys line: printable ASCII, no line breaks. */
const KEY_LINE = /^[\x21-\x7e][\x20-\x7e]*$/;
const MAX_KEY_BYTES = 16_384;

export class GuestConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GuestConfigError';
  }
}

/** The account the settings apply to: the named user, else root when there is a password or a key. */
export function guestAccount(cfg: AgentGuestConfig): string | null {
  if (cfg.username) return cfg.username;
  return cfg.password_hash || authorizedKeys(cfg).length > 0 ? 'root' : null;
}

/** The SSH keys as they go into authorized_keys: trimmed, blank ones dropped. */
export function authorizedKeys(cfg: AgentGuestConfig): string[] {
  return cfg.ssh_authorized_keys.map((k) => k.trim()).filter((k) => k !== '');
}

/** Throws a GuestConfigError naming the first field that cannot go into a guest safely. */
export function checkGuestConfig(cfg: AgentGuestConfig): void {
  const host = cfg.hostname;
  if (host.length > 253 || !host.split('.').every((label) => HOST_LABEL.test(label))) {
    throw new GuestConfigError(`hostname ${JSON.stringify(host)} is not a host name`);
  }
  if (cfg.username !== null && !USER_NAME.test(cfg.username)) {
    throw new GuestConfigError(`username ${JSON.stringify(cfg.username)} is not a POSIX user name`);
  }
  if (cfg.password_hash !== null && !SHA512_CRYPT.test(cfg.password_hash)) {
    throw new GuestConfigError('password_hash is not a SHA-512 crypt hash ($6$...)');
  }
  cfg.ssh_authorized_keys.forEach((key, i) => {
    const line = key.trim();
    if (key.length > MAX_KEY_BYTES || (line !== '' && !KEY_LINE.test(line))) {
      throw new GuestConfigError(
        `ssh_authorized_keys[${i}] must be one line of printable ASCII of at most ${MAX_KEY_BYTES} bytes`,
      );
    }
  });
  if (!/^[\x20-\x7e]{1,128}$/.test(cfg.instance_id)) {
    throw new GuestConfigError('instance_id must be printable ASCII');
  }
}
