import {
  ApiToken,
  ApiTokenCreate,
  ApiTokenCreated,
  DeletedResponse,
  IdParams,
  ListQuery,
  listOf,
  NqvmError,
  TokenListQuery,
  User,
  UserCreate,
  UserPatch,
} from '@nqvm/api';
import { toUser } from '../auth/users';
import type { App } from '../http/app-type';
import type { Services } from '../services';

export function userRoutes(app: App, s: Services): void {
  const tags = ['users'];
  app.get(
    '/api/v1/users',
    {
      config: { access: 'admin' },
      schema: { tags, summary: 'List users', querystring: ListQuery, response: { 200: listOf(User) } },
    },
    async (req) => s.users.list(req.query),
  );
  app.post(
    '/api/v1/users',
    {
      config: { access: 'admin', audit: 'user.create' },
      schema: { tags, summary: 'Create a user', body: UserCreate, response: { 201: User } },
    },
    async (req, reply) => {
      const user = await s.users.create(req.body);
      req.auditTarget = { type: 'user', id: user.id };
      return reply.status(201).send(user);
    },
  );
  app.get(
    '/api/v1/users/:id',
    {
      config: { access: 'admin' },
      schema: { tags, summary: 'Get a user', params: IdParams, response: { 200: User } },
    },
    async (req) => toUser(await s.users.getRow(req.params.id)),
  );
  app.patch(
    '/api/v1/users/:id',
    {
      config: { access: 'admin', audit: 'user.update' },
      schema: {
        tags,
        summary: 'Change role, password or disable',
        params: IdParams,
        body: UserPatch,
        response: { 200: User },
      },
    },
    async (req) => s.users.patch(req.params.id, req.body),
  );
  app.delete(
    '/api/v1/users/:id',
    {
      config: { access: 'admin', audit: 'user.delete' },
      schema: { tags, summary: 'Delete a user', params: IdParams, response: { 200: DeletedResponse } },
    },
    async (req) => {
      await s.users.delete(req.params.id);
      return { id: req.params.id, deleted: true as const };
    },
  );
}

export function tokenRoutes(app: App, s: Services): void {
  const tags = ['tokens'];
  const me = (req: { principal: import('../auth/principal').Principal }) => {
    if (req.principal.kind !== 'user') throw new NqvmError('UNAUTHENTICATED');
    return req.principal;
  };
  app.get(
    '/api/v1/tokens',
    {
      config: { access: 'viewer' },
      schema: {
        tags,
        summary: "List API tokens (yours; admins: anyone's with user_id)",
        querystring: TokenListQuery,
        response: { 200: listOf(ApiToken) },
      },
    },
    async (req) => {
      const p = me(req);
      const userId = p.role === 'admin' ? req.query.user_id : p.userId;
      if (req.query.user_id && p.role !== 'admin' && req.query.user_id !== p.userId)
        throw new NqvmError('FORBIDDEN', "only admins list other users' tokens");
      return s.users.listTokens({ ...req.query, user_id: userId });
    },
  );
  app.post(
    '/api/v1/tokens',
    {
      config: { access: 'viewer', audit: 'token.create' },
      schema: {
        tags,
        summary: 'Create an API token (shown once)',
        body: ApiTokenCreate,
        response: { 201: ApiTokenCreated },
      },
    },
    async (req, reply) => {
      const p = me(req);
      // A token cannot mint tokens above itself: its effective role is the ceiling.
      const created = await s.users.createToken({ userId: p.userId, role: p.role }, req.body);
      req.auditTarget = { type: 'token', id: created.id };
      return reply.status(201).send(created);
    },
  );
  app.delete(
    '/api/v1/tokens/:id',
    {
      config: { access: 'viewer', audit: 'token.revoke' },
      schema: { tags, summary: 'Revoke an API token', params: IdParams, response: { 200: ApiToken } },
    },
    async (req) => {
      const p = me(req);
      const row = await s.users.getToken(req.params.id);
      if (row.user_id !== p.userId && p.role !== 'admin')
        throw new NqvmError('FORBIDDEN', "only admins revoke other users' tokens");
      return s.users.revokeToken(req.params.id);
    },
  );
}
