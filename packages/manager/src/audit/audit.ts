/** The audit log: who did what to which target, with what result, and when. Admins read it. */
import { randomUUID } from 'node:crypto';
import type { AuditListQuery } from '@nqvm/api';
import { nowIso } from '../clock';
import type { Datastore } from '../db/datastore';
import { paginate } from '../db/pagination';
import type { AuditRow } from '../db/schema';

export interface AuditEntry {
  actor: { type: AuditRow['actor_type']; id: string | null; name: string | null };
  action: string;
  target: { type: string; id: string } | null;
  statusCode: number;
  ip: string | null;
}

export class AuditLog {
  constructor(private readonly store: Datastore) {}

  async record(e: AuditEntry): Promise<void> {
    await this.store.db
      .insertInto('audit_events')
      .values({
        id: randomUUID(),
        at: nowIso(),
        actor_type: e.actor.type,
        actor_id: e.actor.id,
        actor_name: e.actor.name,
        action: e.action,
        target_type: e.target?.type ?? null,
        target_id: e.target?.id ?? null,
        result: e.statusCode < 400 ? 'success' : 'failure',
        status_code: e.statusCode,
        ip: e.ip,
      })
      .execute();
  }

  /** Keyset-paged, newest first unless `order` is `asc`; every filter given must match. */
  async list(q: AuditListQuery) {
    let query = this.store.db.selectFrom('audit_events').selectAll();
    if (q.action) query = query.where('action', '=', q.action);
    if (q.actor_id) query = query.where('actor_id', '=', q.actor_id);
    if (q.actor_name) query = query.where('actor_name', '=', q.actor_name);
    if (q.actor_type) query = query.where('actor_type', '=', q.actor_type);
    if (q.target_type) query = query.where('target_type', '=', q.target_type);
    if (q.target_id) query = query.where('target_id', '=', q.target_id);
    if (q.result) query = query.where('result', '=', q.result);
    // Stored times are UTC ISO strings, so comparing normalised text compares times.
    if (q.since) query = query.where('at', '>=', new Date(q.since).toISOString());
    if (q.until) query = query.where('at', '<', new Date(q.until).toISOString());
    const page = await paginate(query, 'at', q, q.order);
    return {
      items: page.items.map((r) => ({
        id: r.id,
        at: r.at,
        actor: { type: r.actor_type, id: r.actor_id, name: r.actor_name },
        action: r.action,
        target: r.target_type && r.target_id ? { type: r.target_type, id: r.target_id } : null,
        result: r.result,
        status_code: r.status_code,
        ip: r.ip,
      })),
      next: page.next,
    };
  }

  async prune(olderThanIso: string): Promise<number> {
    const r = await this.store.db
      .deleteFrom('audit_events')
      .where('at', '<', olderThanIso)
      .executeTakeFirst();
    return Number(r.numDeletedRows);
  }
}
