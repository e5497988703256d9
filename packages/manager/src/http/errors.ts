/** The manager's side of the shared HTTP error edge: logging and sending the uniform body. */
import { type ErrorReply, toErrorReply } from '@nqvm/api';
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { isResponseSerializationError } from 'fastify-type-provider-zod';

export { clientErrorHandler } from '@nqvm/api';

/** Any error a route or hook threw, as the reply; errors that are not the client's are logged. */
export function errorReplyOf(err: FastifyError | Error, req: FastifyRequest): ErrorReply {
  const r = toErrorReply(err, 'manager');
  if (!r.unexpected) return r;
  if (isResponseSerializationError(err)) {
    req.log.error({ err, issues: err.cause?.issues }, 'response did not match its schema');
  } else {
    req.log.error({ err }, 'unhandled error');
  }
  return r;
}

export function sendError(reply: FastifyReply, r: Pick<ErrorReply, 'status' | 'body'>): FastifyReply {
  return reply.status(r.status).type('application/json; charset=utf-8').send(r.body);
}
