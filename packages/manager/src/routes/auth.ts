import { Login, LoginResponse, NqvmError, PasswordChange, User } from '@nqvm/api';
import { z } from 'zod';
import { toUser } from '../auth/users';
import type { App } from '../http/app-type';
import { CSRF_COOKIE, SESSION_COOKIE } from '../http/auth-hook';
import type { Services } from '../services';

export function authRoutes(app: App, s: Services): void {
  const secure = Boolean(s.config.tls);

  app.post(
    '/api/v1/auth/login',
    {
      config: { access: 'public', audit: 'auth.login' },
      schema: {
        tags: ['auth'],
        summary: 'Log in; sets the session cookie',
        body: Login,
        response: { 200: LoginResponse },
      },
    },
    async (req, reply) => {
      const { username } = req.body;
      const wait = s.throttle.retryAfterMs(username, req.ip);
      if (wait > 0) {
        reply.header('retry-after', Math.ceil(wait / 1000));
        throw new NqvmError(
          'LOGIN_THROTTLED',
          `too many failed logins; retry in ${Math.ceil(wait / 1000)} s`,
        );
      }
      const user = await s.users.checkPassword(username, req.body.password);
      if (!user) {
        s.throttle.fail(username, req.ip);
        throw new NqvmError('INVALID_CREDENTIALS', 'wrong user name or password');
      }
      s.throttle.succeed(username, req.ip);
      req.principal = {
        kind: 'user',
        userId: user.id,
        username: user.username,
        role: user.role,
        via: 'session',
      };
      req.auditTarget = { type: 'user', id: user.id };
      const session = await s.users.startSession(user.id);
      const expires = new Date(session.expiresAt);
      reply.setCookie(SESSION_COOKIE, session.cookie, {
        httpOnly: true,
        sameSite: 'strict',
        secure,
        path: '/',
        expires,
      });
      reply.setCookie(CSRF_COOKIE, session.csrf, {
        httpOnly: false,
        sameSite: 'strict',
        secure,
        path: '/',
        expires,
      });
      return { user: toUser(user), csrf_token: session.csrf };
    },
  );

  app.post(
    '/api/v1/auth/logout',
    {
      config: { access: 'viewer', audit: 'auth.logout' },
      schema: {
        tags: ['auth'],
        summary: 'End this session',
        response: { 200: z.object({ ok: z.literal(true) }) },
      },
    },
    async (req, reply) => {
      if (req.principal.kind === 'user' && req.principal.sessionId)
        await s.users.endSession(req.principal.sessionId);
      reply.clearCookie(SESSION_COOKIE, { path: '/' });
      reply.clearCookie(CSRF_COOKIE, { path: '/' });
      return { ok: true as const };
    },
  );

  app.get(
    '/api/v1/auth/me',
    {
      config: { access: 'viewer' },
      schema: {
        tags: ['auth'],
        summary: 'Who am I',
        response: {
          200: User.extend({
            effective_role: User.shape.role,
            via: z.enum(['session', 'token']),
            token_id: z
              .string()
              .nullable()
              .describe('the API token this request used (to revoke it at logout)'),
          }),
        },
      },
    },
    async (req) => {
      if (req.principal.kind !== 'user') throw new NqvmError('UNAUTHENTICATED');
      const user = toUser(await s.users.getRow(req.principal.userId));
      const tokenId = req.principal.via === 'token' ? (req.principal.tokenId ?? null) : null;
      return { ...user, effective_role: req.principal.role, via: req.principal.via, token_id: tokenId };
    },
  );

  app.post(
    '/api/v1/auth/password',
    {
      config: { access: 'viewer', audit: 'auth.password' },
      schema: {
        tags: ['auth'],
        summary: 'Change my password (ends my sessions)',
        body: PasswordChange,
        response: { 200: z.object({ ok: z.literal(true) }) },
      },
    },
    async (req) => {
      if (req.principal.kind !== 'user') throw new NqvmError('UNAUTHENTICATED');
      await s.users.changePassword(req.principal.userId, req.body.current_password, req.body.new_password);
      return { ok: true as const };
    },
  );
}
