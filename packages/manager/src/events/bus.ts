/**
 * The event bus: every state change is appended to the `events` table (so SSE clients can
 * replay from Last-Event-ID) and delivered to local subscribers at once. With PostgreSQL and
 * several managers, each replica also tails the table so it sees the others' events.
 */
import { EventEmitter } from 'node:events';
import type { Role } from '@nqvm/api';
import { nowIso } from '../clock';
import type { Datastore } from '../db/datastore';

export interface BusEvent {
  seq: number;
  /** e.g. "vm.updated" */
  type: string;
  resourceType: string;
  resourceId: string;
  /** Lowest role that may see the event. */
  minRole: Role;
  /** When set, the owner may see it whatever the role (their own API tokens). */
  ownerId: string | null;
  data: unknown;
  /** When the event was recorded (RFC 3339). */
  createdAt: string;
}

export interface PublishInput {
  type: string;
  resourceType: string;
  resourceId: string;
  data: unknown;
  minRole?: Role;
  ownerId?: string | null;
}

export class EventBus {
  private readonly emitter = new EventEmitter();
  private tail?: NodeJS.Timeout;
  private lastSeq = 0;
  private readonly localSeqs = new Set<number>();
  private order: Promise<unknown> = Promise.resolve();
  private stopped = false;

  constructor(private readonly store: Datastore) {
    this.emitter.setMaxListeners(0);
  }

  async start(tailIntervalMs = 250): Promise<void> {
    const row = await this.store.db
      .selectFrom('events')
      .select((eb) => eb.fn.max('seq').as('m'))
      .executeTakeFirst();
    this.lastSeq = Number(row?.m ?? 0);
    if (this.store.dialect !== 'postgres') return;
    const tick = async () => {
      try {
        await this.pollOthers();
      } catch {
        // The datastore being briefly unavailable must not kill the bus; the next tick retries.
      }
      if (this.stopped) return; // stop() ran while this tick was polling
      this.tail = setTimeout(tick, tailIntervalMs);
      this.tail.unref();
    };
    this.tail = setTimeout(tick, tailIntervalMs);
    this.tail.unref();
  }

  stop(): void {
    this.stopped = true;
    if (this.tail) clearTimeout(this.tail);
  }

  /**
   * Appends and delivers one event. Publishes run one after the other: concurrent inserts may
   * finish out of `seq` order (PostgreSQL), and a subscriber that already got a higher seq (the
   * SSE stream) would drop the lower one for good.
   */
  publish(input: PublishInput): Promise<BusEvent> {
    const next = this.order.then(() => this.append(input));
    this.order = next.catch(() => undefined);
    return next;
  }

  private async append(input: PublishInput): Promise<BusEvent> {
    const created_at = nowIso();
    const row = await this.store.db
      .insertInto('events')
      .values({
        type: input.type,
        resource_type: input.resourceType,
        resource_id: input.resourceId,
        min_role: input.minRole ?? 'viewer',
        owner_id: input.ownerId ?? null,
        data: JSON.stringify(input.data),
        created_at,
      })
      .returning('seq')
      .executeTakeFirstOrThrow();
    const event: BusEvent = {
      seq: Number(row.seq),
      type: input.type,
      resourceType: input.resourceType,
      resourceId: input.resourceId,
      minRole: input.minRole ?? 'viewer',
      ownerId: input.ownerId ?? null,
      data: input.data,
      createdAt: created_at,
    };
    if (this.store.dialect === 'postgres') this.localSeqs.add(event.seq);
    this.emitter.emit('event', event);
    return event;
  }

  subscribe(listener: (e: BusEvent) => void): () => void {
    this.emitter.on('event', listener);
    return () => this.emitter.off('event', listener);
  }

  /** Events after `afterSeq`, oldest first, for Last-Event-ID replay. */
  async since(afterSeq: number, limit = 1000): Promise<BusEvent[]> {
    const rows = await this.store.db
      .selectFrom('events')
      .selectAll()
      .where('seq', '>', afterSeq)
      .orderBy('seq')
      .limit(limit)
      .execute();
    return rows.map(toEvent);
  }

  async prune(olderThanIso: string): Promise<number> {
    const r = await this.store.db
      .deleteFrom('events')
      .where('created_at', '<', olderThanIso)
      .executeTakeFirst();
    return Number(r.numDeletedRows);
  }

  private async pollOthers(): Promise<void> {
    const rows = await this.store.db
      .selectFrom('events')
      .selectAll()
      .where('seq', '>', this.lastSeq)
      .orderBy('seq')
      .limit(1000)
      .execute();
    for (const r of rows) {
      const seq = Number(r.seq);
      this.lastSeq = Math.max(this.lastSeq, seq);
      if (this.localSeqs.delete(seq)) continue;
      this.emitter.emit('event', toEvent(r));
    }
    // Local events older than what the table has shown are settled; keep the set small.
    for (const s of this.localSeqs) if (s <= this.lastSeq) this.localSeqs.delete(s);
  }
}

function toEvent(r: {
  seq: number;
  type: string;
  resource_type: string;
  resource_id: string;
  min_role: string;
  owner_id: string | null;
  data: string;
  created_at: string;
}): BusEvent {
  return {
    seq: Number(r.seq),
    type: r.type,
    resourceType: r.resource_type,
    resourceId: r.resource_id,
    minRole: r.min_role as Role,
    ownerId: r.owner_id,
    data: JSON.parse(r.data),
    createdAt: r.created_at,
  };
}
