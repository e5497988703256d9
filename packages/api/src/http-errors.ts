/**
 * The HTTP edge of the error model, shared by the manager's and the agent's servers: any thrown
 * value becomes a status from the catalogue and the uniform body. Domain errors carry their
 * code; the framework's own refusals (Fastify's FST_ERR_* codes, and errors with a 4xx
 * `statusCode` that plugins such as @fastify/static raise) get the code that says what they are.
 */
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import {
  ErrorCatalogue,
  type ErrorCode,
  type ErrorDetails,
  type ErrorStatus,
  NqvmError,
  renderErrorMessage,
} from './errors';

export interface ErrorBody {
  error: { code: ErrorCode; message: string; details?: ErrorDetails };
}

export interface ErrorReply {
  status: ErrorStatus;
  body: ErrorBody;
  /** Not the client's doing (a bug or a fault of the server's): the caller logs the error. */
  unexpected: boolean;
}

/**
 * The HTTP status of a code.
 *
 * @example httpStatusOf('VM_INVALID_STATE') // 409
 */
export function httpStatusOf(code: ErrorCode): ErrorStatus {
  return ErrorCatalogue[code].status;
}

/** The uniform body of a domain error. */
export function errorBody(err: NqvmError): ErrorBody {
  return {
    error: { code: err.code, message: err.message, ...(err.details ? { details: err.details } : {}) },
  };
}

/** A domain error as the status and body the API answers with. */
export function domainErrorReply(err: NqvmError): ErrorReply {
  return { status: httpStatusOf(err.code), body: errorBody(err), unexpected: false };
}

/**
 * Fastify's own client errors, by their code. The message is the catalogue's template unless one
 * is given here; the framework's own text is kept where it names the fault precisely.
 */
const FRAMEWORK_ERRORS: Record<string, { code: ErrorCode; message?: string }> = {
  FST_ERR_CTP_BODY_TOO_LARGE: { code: 'BODY_TOO_LARGE' },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: { code: 'UNSUPPORTED_MEDIA_TYPE' },
  FST_ERR_CTP_EMPTY_JSON_BODY: {
    code: 'INVALID_JSON',
    message: 'the body is empty but Content-Type says JSON',
  },
  FST_ERR_CTP_INVALID_JSON_BODY: { code: 'INVALID_JSON' },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: {
    code: 'VALIDATION_FAILED',
    message: 'Content-Length does not match the body',
  },
  FST_ERR_NOT_FOUND: { code: 'ROUTE_NOT_FOUND', message: 'no such route' },
};

/** Any other client error a framework or plugin raises, by its status. */
const BY_STATUS: Partial<Record<number, ErrorCode>> = {
  400: 'VALIDATION_FAILED',
  401: 'UNAUTHENTICATED',
  403: 'FORBIDDEN',
  404: 'NOT_FOUND',
  405: 'METHOD_NOT_ALLOWED',
  406: 'NOT_ACCEPTABLE',
  408: 'REQUEST_TIMEOUT',
  409: 'CONFLICT',
  411: 'LENGTH_REQUIRED',
  412: 'PRECONDITION_FAILED',
  413: 'BODY_TOO_LARGE',
  414: 'URI_TOO_LONG',
  415: 'UNSUPPORTED_MEDIA_TYPE',
  416: 'RANGE_NOT_SATISFIABLE',
  426: 'UPGRADE_REQUIRED',
  431: 'HEADERS_TOO_LARGE',
};

/**
 * The catalogue code for a client-error status nothing more precise is known of: VALIDATION_FAILED
 * (400) for a status with no code of its own (no framework or plugin nqvm uses raises one).
 */
export function codeForStatus(status: number): ErrorCode {
  return BY_STATUS[status] ?? 'VALIDATION_FAILED';
}

interface FrameworkError {
  code?: unknown;
  statusCode?: unknown;
  message?: unknown;
  validation?: unknown;
  validationContext?: unknown;
}

function reply(code: ErrorCode, message: string | undefined, details?: ErrorDetails): ErrorReply {
  return domainErrorReply(new NqvmError(code, message ?? renderErrorMessage(code, details), details));
}

/** The URL of a request without its query (which may carry what the log and body should not). */
function pathOf(url: string): string {
  return url.split('?')[0] ?? url;
}

/**
 * Every error a request handler or hook throws, as the reply. `service` names the log a 500 points
 * to ("the manager log has details").
 *
 * @example
 * app.setErrorHandler((err, req, res) => {
 *   const r = toErrorReply(err, 'agent');
 *   if (r.unexpected) req.log.error({ err }, 'unhandled error');
 *   return res.status(r.status).type('application/json; charset=utf-8').send(r.body);
 * });
 */
export function toErrorReply(err: unknown, service: string): ErrorReply {
  if (err instanceof NqvmError) return domainErrorReply(err);
  const fe = (typeof err === 'object' && err !== null ? err : {}) as FrameworkError;
  // Schema validation (zod through fastify-type-provider-zod, or Fastify's own): each failing field.
  if (Array.isArray(fe.validation) && fe.validation.length > 0 && fe.statusCode === 400) {
    const fields = (fe.validation as Array<{ instancePath?: unknown; message?: unknown }>).map((v) => ({
      path: [fe.validationContext, ...String(v.instancePath ?? '').split('/')].filter(Boolean).join('.'),
      message: typeof v.message === 'string' ? v.message : 'invalid',
    }));
    const names = [...new Set(fields.map((f) => f.path))].join(', ');
    return reply('VALIDATION_FAILED', `invalid ${names}`, { fields });
  }
  const known = typeof fe.code === 'string' ? FRAMEWORK_ERRORS[fe.code] : undefined;
  if (known) return reply(known.code, known.message);
  // Only `statusCode`: an error of the server's own that happens to carry a `status` is still a 500.
  const status = typeof fe.statusCode === 'number' ? fe.statusCode : 500;
  if (status >= 400 && status < 500) {
    const code = codeForStatus(status);
    return reply(code, typeof fe.message === 'string' && fe.message ? fe.message : undefined);
  }
  return { ...reply('INTERNAL', `internal error; the ${service} log has details`), unexpected: true };
}

/** The answer for a method and path no route has. */
export function routeNotFoundReply(method: string, url: string): ErrorReply {
  return reply('ROUTE_NOT_FOUND', undefined, { method, path: pathOf(url) });
}

/**
 * Errors the router raises before any route runs (Fastify's `frameworkErrors`: bad %-escapes,
 * over-long path segments).
 */
export function frameworkErrorReply(err: Error): ErrorReply {
  return reply('VALIDATION_FAILED', `the request URL is not valid: ${err.message}`);
}

/**
 * Node's `clientError` handler: requests the HTTP parser refuses before any framework sees them
 * (headers over 16 KiB, malformed HTTP, timeouts) still get the uniform body.
 */
export function clientErrorHandler(err: Error & { code?: string }, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const { status, body } =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? reply('HEADERS_TOO_LARGE', undefined)
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? reply('REQUEST_TIMEOUT', undefined)
        : reply('VALIDATION_FAILED', 'the request is not valid HTTP');
  const text = JSON.stringify(body);
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\n` +
        `Content-Length: ${Buffer.byteLength(text)}\r\nConnection: close\r\n\r\n${text}`,
    );
  }
  socket.destroy(err);
}
