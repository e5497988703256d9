/**
 * Stable codes a caller can branch on. The guest's own ERROR codes (AUTH_FAILED, AUTH_REQUIRED,
 * EXEC_FAILED, BAD_REQUEST, NO_SUCH_CHANNEL, BUSY) pass through unchanged; the rest are the
 * host side's.
 */
export type GuestAgentErrorCode =
  | 'AUTH_FAILED'
  | 'AUTH_REQUIRED'
  | 'EXEC_FAILED'
  | 'BAD_REQUEST'
  | 'NO_SUCH_CHANNEL'
  | 'BUSY'
  /** No answer in time. */
  | 'TIMEOUT'
  /** The socket could not be opened, or the vsock handshake failed. */
  | 'UNREACHABLE'
  /** The transport ended (or the guest restarted its session) while waiting. */
  | 'CLOSED'
  /** The caller's AbortSignal fired. */
  | 'ABORTED'
  /** The guest sent something that is not a valid frame. */
  | 'PROTOCOL'
  /** gcc or the static libc is not installed. */
  | 'COMPILER_MISSING'
  | 'BUILD_FAILED';

export class GuestAgentError extends Error {
  constructor(
    readonly code: GuestAgentErrorCode | (string & {}),
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'GuestAgentError';
  }
}
