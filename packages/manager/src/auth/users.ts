/** Users, their sessions and API tokens. */
import { randomUUID } from 'node:crypto';
import { NqvmError, type Role, type User } from '@nqvm/api';
import { isoAfter, nowIso } from '../clock';
import { type Datastore, isUniqueViolation } from '../db/datastore';
import { paginate } from '../db/pagination';
import type { ApiTokenRow, UserRow } from '../db/schema';
import type { EventBus } from '../events/bus';
import type { Principal } from './principal';
import { roleAtLeast } from './roles';
import {
  DUMMY_PASSWORD_HASH,
  hashPassword,
  hashSecret,
  newSecret,
  randomPassword,
  verifyPassword,
} from './secrets';

export function toUser(r: UserRow): User {
  return {
    id: r.id,
    username: r.username,
    role: r.role,
    disabled: r.disabled === 1,
    created_at: r.created_at,
    updated_at: r.updated_at,
  };
}

export function toToken(r: ApiTokenRow) {
  return {
    id: r.id,
    user_id: r.user_id,
    name: r.name,
    prefix: r.prefix,
    role: r.role,
    created_at: r.created_at,
    expires_at: r.expires_at,
    last_used_at: r.last_used_at,
    revoked_at: r.revoked_at,
  };
}

export class Users {
  constructor(
    private readonly store: Datastore,
    private readonly bus: EventBus,
    private readonly sessionTtlHours: number,
  ) {}

  /** Creates the first admin when there is no user; returns the generated password, if any. */
  async ensureFirstAdmin(
    password?: string,
  ): Promise<{ username: string; generatedPassword?: string } | null> {
    const any = await this.store.db.selectFrom('users').select('id').limit(1).executeTakeFirst();
    if (any) return null;
    const generated = password ? undefined : randomPassword();
    await this.create({ username: 'admin', password: password ?? generated!, role: 'admin' });
    return { username: 'admin', generatedPassword: generated };
  }

  async create(input: { username: string; password: string; role: Role }): Promise<User> {
    const at = nowIso();
    const row: UserRow = {
      id: randomUUID(),
      username: input.username,
      password_hash: await hashPassword(input.password),
      role: input.role,
      disabled: 0,
      created_at: at,
      updated_at: at,
    };
    try {
      await this.store.db.insertInto('users').values(row).execute();
    } catch (err) {
      if (isUniqueViolation(err))
        throw new NqvmError('NAME_TAKEN', `user "${input.username}" exists`, { field: 'username' });
      throw err;
    }
    const user = toUser(row);
    await this.bus.publish({
      type: 'user.created',
      resourceType: 'user',
      resourceId: user.id,
      data: user,
      minRole: 'admin',
    });
    return user;
  }

  async list(q: { limit: number; cursor?: string }) {
    const page = await paginate(this.store.db.selectFrom('users').selectAll(), 'created_at', q);
    return { items: page.items.map(toUser), next: page.next };
  }

  async getRow(id: string): Promise<UserRow> {
    const row = await this.store.db.selectFrom('users').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) throw new NqvmError('USER_NOT_FOUND', { id });
    return row;
  }

  async patch(id: string, p: { role?: Role; password?: string; disabled?: boolean }): Promise<User> {
    const row = await this.getRow(id);
    if ((p.role && p.role !== 'admin') || p.disabled) await this.keepOneAdmin(row);
    await this.store.db
      .updateTable('users')
      .set({
        ...(p.role ? { role: p.role } : {}),
        ...(p.password ? { password_hash: await hashPassword(p.password) } : {}),
        ...(p.disabled !== undefined ? { disabled: p.disabled ? 1 : 0 } : {}),
        updated_at: nowIso(),
      })
      .where('id', '=', id)
      .execute();
    // A new password or a lower role ends the user's sessions; tokens above the new role are capped at use.
    if (p.password || p.disabled || p.role)
      await this.store.db.deleteFrom('sessions').where('user_id', '=', id).execute();
    const user = toUser(await this.getRow(id));
    await this.bus.publish({
      type: 'user.updated',
      resourceType: 'user',
      resourceId: id,
      data: user,
      minRole: 'admin',
    });
    return user;
  }

  async delete(id: string): Promise<void> {
    const row = await this.getRow(id);
    await this.keepOneAdmin(row);
    await this.store.db.deleteFrom('users').where('id', '=', id).execute();
    await this.bus.publish({
      type: 'user.deleted',
      resourceType: 'user',
      resourceId: id,
      data: toUser(row),
      minRole: 'admin',
    });
  }

  private async keepOneAdmin(row: UserRow): Promise<void> {
    if (row.role !== 'admin' || row.disabled) return;
    const admins = await this.store.db
      .selectFrom('users')
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .where('role', '=', 'admin')
      .where('disabled', '=', 0)
      .executeTakeFirstOrThrow();
    if (Number(admins.n) <= 1) throw new NqvmError('LAST_ADMIN', 'this is the last enabled admin');
  }

  // ---- passwords and sessions ---------------------------------------------------------

  /** Checks a username and password in constant-ish time; null when they do not match. */
  async checkPassword(username: string, password: string): Promise<UserRow | null> {
    const row = await this.store.db
      .selectFrom('users')
      .selectAll()
      .where('username', '=', username)
      .executeTakeFirst();
    const ok = await verifyPassword(password, row?.password_hash ?? DUMMY_PASSWORD_HASH);
    return ok && row && !row.disabled ? row : null;
  }

  async changePassword(userId: string, current: string, next: string): Promise<void> {
    const row = await this.getRow(userId);
    if (!(await verifyPassword(current, row.password_hash))) {
      throw new NqvmError('INVALID_CREDENTIALS', 'the current password is wrong');
    }
    await this.patch(userId, { password: next });
  }

  async startSession(userId: string): Promise<{ cookie: string; csrf: string; expiresAt: string }> {
    const cookie = newSecret('nqvm_ses');
    const csrf = newSecret('nqvm_csrf');
    const at = nowIso();
    const expiresAt = isoAfter(this.sessionTtlHours * 3_600_000);
    await this.store.db
      .insertInto('sessions')
      .values({
        id: hashSecret(cookie),
        user_id: userId,
        csrf_hash: hashSecret(csrf),
        created_at: at,
        expires_at: expiresAt,
        last_seen_at: at,
      })
      .execute();
    return { cookie, csrf, expiresAt };
  }

  async endSession(sessionId: string): Promise<void> {
    await this.store.db.deleteFrom('sessions').where('id', '=', sessionId).execute();
  }

  /** Resolves a session cookie to a principal plus the session's CSRF hash. */
  async resolveSession(cookie: string): Promise<{ principal: Principal; csrfHash: string } | null> {
    const id = hashSecret(cookie);
    const row = await this.store.db
      .selectFrom('sessions')
      .innerJoin('users', 'users.id', 'sessions.user_id')
      .select([
        'sessions.id as sid',
        'sessions.csrf_hash',
        'sessions.expires_at',
        'users.id as uid',
        'users.username',
        'users.role',
        'users.disabled',
      ])
      .where('sessions.id', '=', id)
      .executeTakeFirst();
    if (!row || row.disabled || row.expires_at <= nowIso()) return null;
    return {
      principal: {
        kind: 'user',
        userId: row.uid,
        username: row.username,
        role: row.role,
        via: 'session',
        sessionId: row.sid,
      },
      csrfHash: row.csrf_hash,
    };
  }

  // ---- API tokens -----------------------------------------------------------------------

  async createToken(
    owner: { userId: string; role: Role },
    input: { name: string; role?: Role; expires_in_days: number | null },
  ): Promise<ReturnType<typeof toToken> & { token: string }> {
    const role = input.role ?? owner.role;
    if (!roleAtLeast(owner.role, role))
      throw new NqvmError(
        'FORBIDDEN',
        `a token cannot have a higher role (${role}) than its owner (${owner.role})`,
      );
    const token = newSecret('nqvm_tok');
    const row: ApiTokenRow = {
      id: randomUUID(),
      user_id: owner.userId,
      name: input.name,
      token_hash: hashSecret(token),
      prefix: token.slice(0, 14),
      role,
      created_at: nowIso(),
      expires_at: input.expires_in_days === null ? null : isoAfter(input.expires_in_days * 86_400_000),
      last_used_at: null,
      revoked_at: null,
    };
    await this.store.db.insertInto('api_tokens').values(row).execute();
    const out = toToken(row);
    await this.bus.publish({
      type: 'token.created',
      resourceType: 'token',
      resourceId: row.id,
      data: out,
      minRole: 'admin',
      ownerId: owner.userId,
    });
    return { ...out, token };
  }

  async listTokens(q: { limit: number; cursor?: string; user_id?: string }) {
    let query = this.store.db.selectFrom('api_tokens').selectAll();
    if (q.user_id) query = query.where('user_id', '=', q.user_id);
    const page = await paginate(query, 'created_at', q);
    return { items: page.items.map(toToken), next: page.next };
  }

  async getToken(id: string): Promise<ApiTokenRow> {
    const row = await this.store.db
      .selectFrom('api_tokens')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirst();
    if (!row) throw new NqvmError('TOKEN_NOT_FOUND', { id });
    return row;
  }

  async revokeToken(id: string): Promise<ReturnType<typeof toToken>> {
    const row = await this.getToken(id);
    if (!row.revoked_at)
      await this.store.db
        .updateTable('api_tokens')
        .set({ revoked_at: nowIso() })
        .where('id', '=', id)
        .execute();
    const out = toToken(await this.getToken(id));
    await this.bus.publish({
      type: 'token.updated',
      resourceType: 'token',
      resourceId: id,
      data: out,
      minRole: 'admin',
      ownerId: row.user_id,
    });
    return out;
  }

  async resolveToken(token: string): Promise<Principal | null> {
    const row = await this.store.db
      .selectFrom('api_tokens')
      .innerJoin('users', 'users.id', 'api_tokens.user_id')
      .select([
        'api_tokens.id as tid',
        'api_tokens.role as trole',
        'api_tokens.expires_at',
        'api_tokens.revoked_at',
        'api_tokens.last_used_at',
        'users.id as uid',
        'users.username',
        'users.role as urole',
        'users.disabled',
      ])
      .where('api_tokens.token_hash', '=', hashSecret(token))
      .executeTakeFirst();
    const now = nowIso();
    if (!row || row.revoked_at || row.disabled || (row.expires_at && row.expires_at <= now)) return null;
    if (!row.last_used_at || row.last_used_at < isoAfter(-60_000)) {
      await this.store.db
        .updateTable('api_tokens')
        .set({ last_used_at: now })
        .where('id', '=', row.tid)
        .execute();
    }
    const role = roleAtLeast(row.urole, row.trole) ? row.trole : row.urole;
    return { kind: 'user', userId: row.uid, username: row.username, role, via: 'token', tokenId: row.tid };
  }

  async pruneSessions(): Promise<void> {
    await this.store.db.deleteFrom('sessions').where('expires_at', '<', nowIso()).execute();
  }
}
