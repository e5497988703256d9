import { timingSafeEqual } from 'node:crypto';
import type {} from '@fastify/cookie';
/**
 * Authentication and authorisation for every request, before its body is read: a route's
 * `config.access` says who may call it; a route without one never registers.
 */
import { domainErrorReply, NqvmError } from '@nqvm/api';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Principal } from '../auth/principal';
import { type RouteAccess, roleAtLeast } from '../auth/roles';
import { hashSecret } from '../auth/secrets';
import type { Services } from '../services';
import { sendError } from './errors';

export const SESSION_COOKIE = 'nqvm_session';
export const CSRF_COOKIE = 'nqvm_csrf';
export const CSRF_HEADER = 'x-csrf-token';

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

declare module 'fastify' {
  interface FastifyContextConfig {
    access?: RouteAccess;
    /** Audit action name; false for high-rate agent reports that are not user mutations. */
    audit?: string | false;
  }
  interface FastifyRequest {
    principal: Principal;
    auditTarget?: { type: string; id: string };
  }
}

async function identify(
  req: FastifyRequest,
  s: Services,
): Promise<{ principal: Principal; csrfHash?: string }> {
  const header = req.headers.authorization;
  if (header) {
    const m = /^Bearer\s+(\S+)$/i.exec(header);
    if (!m) throw new NqvmError('UNAUTHENTICATED', 'Authorization must be "Bearer <token>"');
    const secret = m[1]!;
    if (secret.startsWith('nqvm_tok_')) {
      const p = await s.users.resolveToken(secret);
      if (p) return { principal: p };
    } else if (secret.startsWith('nqvm_host_')) {
      const h = await s.hosts.resolveCredential(secret);
      if (h) return { principal: { kind: 'host', ...h } };
    } else if (secret.startsWith('nqvm_join_')) {
      const id = await s.hosts.resolveJoinToken(secret);
      if (id) return { principal: { kind: 'join', joinTokenId: id } };
    } else if (s.config.metricsToken && sameSecret(secret, s.config.metricsToken)) {
      return { principal: { kind: 'metrics' } };
    }
    throw new NqvmError('UNAUTHENTICATED', 'the token is unknown, expired or revoked');
  }
  const cookie = req.cookies?.[SESSION_COOKIE];
  if (cookie) {
    const r = await s.users.resolveSession(cookie);
    if (r) return r;
  }
  return { principal: { kind: 'anonymous' } };
}

function checkCsrf(req: FastifyRequest, csrfHash: string): void {
  const token = req.headers[CSRF_HEADER];
  if (typeof token !== 'string' || hashSecret(token) !== csrfHash) {
    throw new NqvmError('CSRF_FAILED', 'missing or wrong X-CSRF-Token header');
  }
  const origin = req.headers.origin;
  if (origin !== undefined) {
    let host: string | null = null;
    try {
      host = new URL(origin).host;
    } catch {
      host = null;
    }
    if (host !== req.headers.host) throw new NqvmError('CSRF_FAILED', 'cross-origin request refused');
  }
}

/** Compares a presented secret with the configured one in constant time (by their digests). */
function sameSecret(presented: string, expected: string): boolean {
  return timingSafeEqual(Buffer.from(hashSecret(presented), 'hex'), Buffer.from(hashSecret(expected), 'hex'));
}

export function authorize(access: RouteAccess, p: Principal): void {
  if (access === 'public') return;
  if (access === 'metrics') {
    if (p.kind === 'metrics') return;
    if (p.kind === 'anonymous')
      throw new NqvmError(
        'UNAUTHENTICATED',
        'metrics need an operator token or session, or the metrics token',
      );
    if (p.kind !== 'user' || !roleAtLeast(p.role, 'operator'))
      throw new NqvmError('FORBIDDEN', 'metrics need the operator role or the metrics token');
    return;
  }
  if (access === 'host' || access === 'join') {
    if (p.kind === access) return;
    if (p.kind === 'anonymous')
      throw new NqvmError(
        'UNAUTHENTICATED',
        access === 'host' ? 'a host credential is required' : 'a join token is required',
      );
    throw new NqvmError(
      'FORBIDDEN',
      access === 'host' ? 'only agents call this route' : 'only a joining agent calls this route',
    );
  }
  if (p.kind === 'anonymous') throw new NqvmError('UNAUTHENTICATED');
  if (p.kind === 'metrics') throw new NqvmError('FORBIDDEN', 'the metrics token only scrapes /metrics');
  if (p.kind !== 'user') throw new NqvmError('FORBIDDEN', 'agent credentials cannot call user routes');
  if (!roleAtLeast(p.role, access))
    throw new NqvmError('FORBIDDEN', `this needs the ${access} role; you have ${p.role}`);
}

export function authHook(s: Services) {
  return async function onRequest(req: FastifyRequest, reply: FastifyReply) {
    req.principal = { kind: 'anonymous' };
    const access = req.routeOptions.config.access;
    if (access === undefined) return; // unknown route: the not-found handler answers
    try {
      if (access === 'public') {
        // Health, login and the docs answer anyone: a stale or unknown token does not stop them.
        req.principal = await identify(req, s).then(
          (r) => r.principal,
          (err: unknown) => {
            if (err instanceof NqvmError && err.code === 'UNAUTHENTICATED')
              return { kind: 'anonymous' as const };
            throw err;
          },
        );
        return;
      }
      const { principal, csrfHash } = await identify(req, s);
      req.principal = principal;
      authorize(access, principal);
      if (csrfHash && !SAFE_METHODS.has(req.method)) checkCsrf(req, csrfHash);
    } catch (err) {
      if (!(err instanceof NqvmError)) throw err;
      return sendError(reply, domainErrorReply(err));
    }
  };
}
