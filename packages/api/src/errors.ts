/**
 * Domain errors thrown by business code. One HTTP error handler maps them to a status and the
 * uniform body `{"error": {"code", "message", "details"}}`. Codes are stable; messages are for
 * humans and may change.
 */

export const ErrorCodes = {
  VALIDATION_FAILED: 400,
  INVALID_JSON: 400,
  INVALID_CURSOR: 400,
  SNAPSHOT_TYPE_UNSUPPORTED: 400,
  SNAPSHOT_MISMATCH: 400,
  EXEC_FAILED: 400,
  /** Networks: the prefix overlaps loopback, 0/8, link-local, multicast or class E. */
  NETWORK_CIDR_RESERVED: 400,
  UNAUTHENTICATED: 401,
  INVALID_CREDENTIALS: 401,
  FORBIDDEN: 403,
  CSRF_FAILED: 403,
  ROUTE_NOT_FOUND: 404,
  NOT_FOUND: 404,
  VM_NOT_FOUND: 404,
  HOST_NOT_FOUND: 404,
  OPERATION_NOT_FOUND: 404,
  USER_NOT_FOUND: 404,
  TOKEN_NOT_FOUND: 404,
  IMAGE_NOT_FOUND: 404,
  VOLUME_NOT_FOUND: 404,
  NETWORK_NOT_FOUND: 404,
  PORT_FORWARD_NOT_FOUND: 404,
  TEMPLATE_NOT_FOUND: 404,
  SNAPSHOT_NOT_FOUND: 404,
  CONTAINER_NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  REQUEST_TIMEOUT: 408,
  CONFLICT: 409,
  NAME_TAKEN: 409,
  VM_INVALID_STATE: 409,
  OPERATION_NOT_CANCELLABLE: 409,
  HOST_NOT_EMPTY: 409,
  LAST_ADMIN: 409,
  IMAGE_NOT_READY: 409,
  IMAGE_IN_USE: 409,
  VOLUME_IN_USE: 409,
  NETWORK_IN_USE: 409,
  NETWORK_OVERLAP: 409,
  ADDRESS_IN_USE: 409,
  ADDRESS_POOL_EXHAUSTED: 409,
  PORT_IN_USE: 409,
  SNAPSHOT_IN_USE: 409,
  GUEST_AGENT_UNAVAILABLE: 409,
  SNAPSHOT_NOT_READY: 409,
  SNAPSHOT_UNSUPPORTED: 409,
  /** No host the VM may run on can take it now: too little vCPU, memory or disk free (details.short), no VMM, no network. */
  NO_CAPACITY: 409,
  /** The one host a VM may run on (where its snapshot's files or its volumes are) is cordoned, down or revoked. */
  PINNED_HOST_UNAVAILABLE: 409,
  IMAGE_PATHS_DISABLED: 403,
  IMAGE_PATH_OUTSIDE_ROOT: 400,
  /** URL imports: the URL's host is (or resolves to) an address imports may not fetch from. */
  URL_NOT_ALLOWED: 400,
  CHECKSUM_MISMATCH: 422,
  /** Images: the bytes are not a kernel, initrd or root file system of the kind the import names. */
  IMAGE_INVALID: 422,
  /** Containers: the reference names no tag or repository the registry has. */
  REGISTRY_IMAGE_NOT_FOUND: 422,
  /** Containers: the registry refused the credentials (or wants some). */
  REGISTRY_AUTH_FAILED: 422,
  /** Containers: no linux/amd64 image, or a manifest format nqvm does not read (Docker v1). */
  IMAGE_UNSUPPORTED: 422,
  /** Containers: the image has no entrypoint or cmd and the request gave no command. */
  CONTAINER_COMMAND_MISSING: 422,
  /** Networks: no host reports the bridge or uplink the network names (or not of a usable kind). */
  NETWORK_INTERFACE_NOT_FOUND: 422,
  /** Containers: nqvm's container init (or the default kernel it boots with) is not registered. */
  CONTAINER_INIT_MISSING: 409,
  REGISTRY_UNREACHABLE: 502,
  /** The registry answered, but not usefully (5xx, rate limiting, a malformed document). */
  REGISTRY_ERROR: 502,
  IMPORT_FAILED: 502,
  SNAPSHOT_FAILED: 502,
  INSUFFICIENT_STORAGE: 507,
  BODY_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  RANGE_NOT_SATISFIABLE: 416,
  UPGRADE_REQUIRED: 426,
  LOGIN_THROTTLED: 429,
  HEADERS_TOO_LARGE: 431,
  INTERNAL: 500,
  HOST_UNAVAILABLE: 503,
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

export interface ErrorBody {
  error: { code: ErrorCode | string; message: string; details?: Record<string, unknown> };
}

export class NqvmError extends Error {
  readonly status: number;
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
    this.name = 'NqvmError';
    this.status = ErrorCodes[code];
  }

  toBody(): ErrorBody {
    return {
      error: { code: this.code, message: this.message, ...(this.details ? { details: this.details } : {}) },
    };
  }
}

export class InputError extends NqvmError {
  constructor(message: string, details?: Record<string, unknown>, code: ErrorCode = 'VALIDATION_FAILED') {
    super(code, message, details);
  }
}

export class NotFoundError extends NqvmError {
  constructor(code: ErrorCode, what: string, id: string) {
    super(code, `${what} ${id} not found`, { id });
  }
}

export class ConflictError extends NqvmError {
  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>) {
    super(code, message, details);
  }
}

export class NotAllowedError extends NqvmError {
  constructor(message = 'your role does not allow this action', code: ErrorCode = 'FORBIDDEN') {
    super(code, message);
  }
}

export class AuthenticationError extends NqvmError {
  constructor(message = 'authentication required', code: ErrorCode = 'UNAUTHENTICATED') {
    super(code, message);
  }
}

export class ServiceUnavailableError extends NqvmError {
  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>) {
    super(code, message, details);
  }
}
