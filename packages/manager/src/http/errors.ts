/** One place that turns any error into the uniform error body and a status. */
import { type ErrorBody, NqvmError } from '@nqvm/api';
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors, isResponseSerializationError } from 'fastify-type-provider-zod';

const fastifyCodes: Record<string, { status: number; code: string; message?: string }> = {
  FST_ERR_CTP_BODY_TOO_LARGE: { status: 413, code: 'BODY_TOO_LARGE', message: 'request body is too large' },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: {
    status: 415,
    code: 'UNSUPPORTED_MEDIA_TYPE',
    message: 'send JSON (Content-Type: application/json)',
  },
  FST_ERR_CTP_EMPTY_JSON_BODY: {
    status: 400,
    code: 'INVALID_JSON',
    message: 'the body is empty but Content-Type says JSON',
  },
  FST_ERR_CTP_INVALID_JSON_BODY: { status: 400, code: 'INVALID_JSON', message: 'the body is not valid JSON' },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: {
    status: 400,
    code: 'VALIDATION_FAILED',
    message: 'Content-Length does not match the body',
  },
};

export function toErrorReply(
  err: FastifyError | Error,
  req: FastifyRequest,
): { status: number; body: ErrorBody } {
  if (err instanceof NqvmError) return { status: err.status, body: err.toBody() };
  if (hasZodFastifySchemaValidationErrors(err)) {
    const fields = err.validation.map((v) => ({
      path: [err.validationContext, ...String(v.instancePath).split('/').filter(Boolean)].join('.'),
      message: v.message ?? 'invalid',
    }));
    const names = [...new Set(fields.map((f) => f.path))].join(', ');
    return {
      status: 400,
      body: { error: { code: 'VALIDATION_FAILED', message: `invalid ${names}`, details: { fields } } },
    };
  }
  const fe = err as FastifyError;
  const known = fe.code ? fastifyCodes[fe.code] : undefined;
  if (known)
    return {
      status: known.status,
      body: { error: { code: known.code, message: known.message ?? fe.message } },
    };
  if (isResponseSerializationError(err)) {
    req.log.error({ err, issues: err.cause?.issues }, 'response did not match its schema');
  } else if (fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500) {
    return {
      status: fe.statusCode,
      body: {
        error: { code: fe.statusCode === 400 ? 'VALIDATION_FAILED' : 'CONFLICT', message: fe.message },
      },
    };
  } else {
    req.log.error({ err }, 'unhandled error');
  }
  return {
    status: 500,
    body: { error: { code: 'INTERNAL', message: 'internal error; the manager log has details' } },
  };
}

export function sendError(reply: FastifyReply, status: number, body: ErrorBody): FastifyReply {
  return reply.status(status).type('application/json; charset=utf-8').send(body);
}
