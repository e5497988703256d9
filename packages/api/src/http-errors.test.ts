import { STATUS_CODES } from 'node:http';
import { describe, expect, it } from 'vitest';
import { ErrorCatalogue, type ErrorCode, isErrorCode, NqvmError, renderErrorMessage } from './errors';
import { codeForStatus, errorBody, httpStatusOf, routeNotFoundReply, toErrorReply } from './http-errors';

const CODES = Object.keys(ErrorCatalogue) as ErrorCode[];

describe('the error catalogue', () => {
  it('gives every code an error status and a message template', () => {
    expect(CODES.length).toBeGreaterThan(60);
    for (const code of CODES) {
      const { status, message } = ErrorCatalogue[code];
      expect(code, code).toMatch(/^[A-Z][A-Z0-9_]*$/);
      expect(status >= 400 && status < 600 && STATUS_CODES[status] !== undefined, `${code}: ${status}`).toBe(
        true,
      );
      expect(message.trim().length, code).toBeGreaterThan(0);
      // Placeholders are plain names; a brace is never left unmatched.
      expect(message.replace(/\{\w+\}/g, ''), code).not.toMatch(/[{}]/);
      expect(httpStatusOf(code)).toBe(status);
    }
  });

  it('keeps the statuses clients already branch on', () => {
    expect(httpStatusOf('VALIDATION_FAILED')).toBe(400);
    expect(httpStatusOf('UNAUTHENTICATED')).toBe(401);
    expect(httpStatusOf('FORBIDDEN')).toBe(403);
    expect(httpStatusOf('ROUTE_NOT_FOUND')).toBe(404);
    expect(httpStatusOf('VM_INVALID_STATE')).toBe(409);
    expect(httpStatusOf('BODY_TOO_LARGE')).toBe(413);
    expect(httpStatusOf('UNSUPPORTED_MEDIA_TYPE')).toBe(415);
    expect(httpStatusOf('IMAGE_INVALID')).toBe(422);
    expect(httpStatusOf('HOST_UNAVAILABLE')).toBe(503);
    expect(httpStatusOf('INSUFFICIENT_STORAGE')).toBe(507);
  });

  it('knows its codes and nothing else (for codes read off the wire)', () => {
    for (const code of CODES) expect(isErrorCode(code)).toBe(true);
    for (const other of ['NOPE', 'vm_not_found', '', 'toString', '__proto__', 42, null])
      expect(isErrorCode(other), String(other)).toBe(false);
  });

  it('accepts no code outside the catalogue and no template without its data (checked by tsc)', () => {
    // Never called: the @ts-expect-error lines fail `npm run typecheck` when a line compiles.
    const unchecked = () => [
      // @ts-expect-error a code that is not in the catalogue
      new NqvmError('NO_SUCH_CODE', 'message'),
      // @ts-expect-error the template 'VM {id} not found' needs an id
      new NqvmError('VM_NOT_FOUND'),
      // @ts-expect-error ... also when data is given
      new NqvmError('VM_NOT_FOUND', { name: 'web' }),
      // @ts-expect-error an ErrorCode is not any string
      ((c: string): ErrorCode => c)('VM_NOT_FOUND'),
      new NqvmError('VM_NOT_FOUND', { id: 'a1' }),
      new NqvmError('FORBIDDEN'),
    ];
    expect(typeof unchecked).toBe('function');
  });
});

describe('NqvmError', () => {
  it('carries a code and data, and no HTTP status', () => {
    const e = new NqvmError('VM_NOT_FOUND', { id: 'a1' });
    expect(e).toBeInstanceOf(Error);
    expect(e.code).toBe('VM_NOT_FOUND');
    expect(e.message).toBe('VM a1 not found');
    expect(e.details).toEqual({ id: 'a1' });
    expect('status' in e).toBe(false);
    expect('statusCode' in e).toBe(false);
  });

  it('takes a message of its own, and fills templates from its data', () => {
    const e = new NqvmError('VM_INVALID_STATE', 'VM web is running; stop it first', { state: 'running' });
    expect([e.message, e.details]).toEqual(['VM web is running; stop it first', { state: 'running' }]);
    expect(new NqvmError('FORBIDDEN').message).toBe('your role does not allow this action');
    expect(new NqvmError('FORBIDDEN').details).toBeUndefined();
    expect(renderErrorMessage('ROUTE_NOT_FOUND', { method: 'GET', path: '/x' })).toBe('no route GET /x');
    expect(renderErrorMessage('VM_NOT_FOUND')).toBe('VM {id} not found');
  });
});

describe('the HTTP edge', () => {
  it('answers a domain error with its catalogue status and the uniform body', () => {
    const r = toErrorReply(new NqvmError('NAME_TAKEN', { name: 'web' }), 'manager');
    expect(r).toEqual({
      status: 409,
      body: { error: { code: 'NAME_TAKEN', message: 'the name web is taken', details: { name: 'web' } } },
      unexpected: false,
    });
    expect(errorBody(new NqvmError('FORBIDDEN'))).toEqual({
      error: { code: 'FORBIDDEN', message: 'your role does not allow this action' },
    });
  });

  it("gives each of Fastify's own refusals the code that says what it is, at that code's status", () => {
    const fastify = (code: string, statusCode: number) =>
      Object.assign(new Error(code), { code, statusCode });
    const cases: Array<[string, number, ErrorCode]> = [
      ['FST_ERR_CTP_BODY_TOO_LARGE', 413, 'BODY_TOO_LARGE'],
      ['FST_ERR_CTP_INVALID_MEDIA_TYPE', 415, 'UNSUPPORTED_MEDIA_TYPE'],
      ['FST_ERR_CTP_INVALID_JSON_BODY', 400, 'INVALID_JSON'],
      ['FST_ERR_CTP_EMPTY_JSON_BODY', 400, 'INVALID_JSON'],
      ['FST_ERR_CTP_INVALID_CONTENT_LENGTH', 400, 'VALIDATION_FAILED'],
      ['FST_ERR_NOT_FOUND', 404, 'ROUTE_NOT_FOUND'],
      // Not in the table by name: by status (this is where 4xx used to become CONFLICT or VALIDATION_FAILED).
      ['FST_ERR_SOMETHING_NEW', 406, 'NOT_ACCEPTABLE'],
      ['FST_ERR_SOMETHING_NEW', 414, 'URI_TOO_LONG'],
    ];
    for (const [code, statusCode, expected] of cases) {
      const r = toErrorReply(fastify(code, statusCode), 'agent');
      expect([code, r.body.error.code, r.status, r.unexpected]).toEqual([code, expected, statusCode, false]);
    }
  });

  it('maps every client-error status a plugin raises to a code of that status', () => {
    const KEPT = [400, 401, 403, 404, 405, 406, 408, 409, 411, 412, 413, 414, 415, 416, 426, 431];
    for (let status = 400; status < 500; status++) {
      const code = codeForStatus(status);
      const r = toErrorReply(Object.assign(new Error('refused'), { statusCode: status }), 'manager');
      expect(r.body.error.code).toBe(code);
      expect(r.status).toBe(httpStatusOf(code));
      // The statuses Fastify, @fastify/static and the WebSocket plugin raise keep theirs; others answer 400.
      expect([status, r.status]).toEqual([status, KEPT.includes(status) ? status : 400]);
    }
    expect(codeForStatus(416)).toBe('RANGE_NOT_SATISFIABLE');
    expect(codeForStatus(412)).toBe('PRECONDITION_FAILED');
    expect(codeForStatus(409)).toBe('CONFLICT');
  });

  it('lists the failing fields of a schema validation error', () => {
    const err = Object.assign(new Error('bad'), {
      statusCode: 400,
      validationContext: 'body',
      validation: [
        { instancePath: '/name', message: 'too short' },
        { instancePath: '/networks/0/ip', message: 'not an IPv4 address' },
      ],
    });
    expect(toErrorReply(err, 'manager').body).toEqual({
      error: {
        code: 'VALIDATION_FAILED',
        message: 'invalid body.name, body.networks.0.ip',
        details: {
          fields: [
            { path: 'body.name', message: 'too short' },
            { path: 'body.networks.0.ip', message: 'not an IPv4 address' },
          ],
        },
      },
    });
  });

  it('answers anything else as a 500 INTERNAL that the caller logs, without the error text', () => {
    for (const thrown of [
      new Error('secret path /var/lib/x'),
      Object.assign(new Error('x'), { status: 404 }),
      'a string',
      null,
    ]) {
      const r = toErrorReply(thrown, 'agent');
      expect(r).toEqual({
        status: 500,
        body: { error: { code: 'INTERNAL', message: 'internal error; the agent log has details' } },
        unexpected: true,
      });
    }
  });

  it('names the method and path of an unknown route, not its query', () => {
    expect(routeNotFoundReply('GET', '/api/v1/nope?token=x')).toEqual({
      status: 404,
      body: {
        error: {
          code: 'ROUTE_NOT_FOUND',
          message: 'no route GET /api/v1/nope',
          details: { method: 'GET', path: '/api/v1/nope' },
        },
      },
      unexpected: false,
    });
  });
});
