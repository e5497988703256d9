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
  METHOD_NOT_ALLOWED: 405,
  REQUEST_TIMEOUT: 408,
  CONFLICT: 409,
  NAME_TAKEN: 409,
  VM_INVALID_STATE: 409,
  OPERATION_NOT_CANCELLABLE: 409,
  HOST_NOT_EMPTY: 409,
  LAST_ADMIN: 409,
  BODY_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  LOGIN_THROTTLED: 429,
  HEADERS_TOO_LARGE: 431,
  INTERNAL: 500,
  HOST_UNAVAILABLE: 503,
  NO_CAPACITY: 503,
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
