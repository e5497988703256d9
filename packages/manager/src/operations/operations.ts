/**
 * Operations: long work answers 202 with one of these; clients follow it by id, with `?wait=`,
 * or on the event stream. Every change is published as `operation.created|updated`.
 */
import { randomUUID } from 'node:crypto';
import { NqvmError, type Operation, type OperationStatus, type OperationStep } from '@nqvm/api';
import { nowIso } from '../clock';
import type { Datastore } from '../db/datastore';
import { paginate } from '../db/pagination';
import type { OperationRow } from '../db/schema';
import type { EventBus } from '../events/bus';

export const TERMINAL: ReadonlySet<OperationStatus> = new Set(['succeeded', 'failed', 'cancelled']);

export function toOperation(r: OperationRow): Operation {
  return {
    id: r.id,
    kind: r.kind,
    target: { type: r.target_type, id: r.target_id },
    status: r.status,
    progress: { percent: r.progress_percent, message: r.progress_message },
    error: r.error_code ? { code: r.error_code, message: r.error_message ?? '' } : null,
    created_by: r.created_by,
    created_at: r.created_at,
    updated_at: r.updated_at,
    steps: r.steps ? (JSON.parse(r.steps) as OperationStep[]) : [],
  };
}

export interface NewOperation {
  kind: string;
  target: { type: string; id: string };
  createdBy: string | null;
  message?: string;
  params?: Record<string, unknown>;
}

/** Called when a client cancels an operation of a kind; undoes what the request recorded. */
export type CancelHook = (op: OperationRow) => Promise<void>;

export class Operations {
  private readonly cancelHooks = new Map<string, CancelHook>();

  constructor(
    private readonly store: Datastore,
    private readonly bus: EventBus,
  ) {}

  onCancel(kind: string, hook: CancelHook): void {
    this.cancelHooks.set(kind, hook);
  }

  async create(input: NewOperation): Promise<Operation> {
    const at = nowIso();
    const row: OperationRow = {
      id: randomUUID(),
      kind: input.kind,
      target_type: input.target.type,
      target_id: input.target.id,
      status: 'queued',
      progress_percent: 0,
      progress_message: input.message ?? 'queued',
      error_code: null,
      error_message: null,
      params: JSON.stringify(input.params ?? {}),
      created_by: input.createdBy,
      created_at: at,
      updated_at: at,
      finished_at: null,
      steps: null,
    };
    await this.store.db.insertInto('operations').values(row).execute();
    const op = toOperation(row);
    await this.bus.publish({
      type: 'operation.created',
      resourceType: 'operation',
      resourceId: op.id,
      data: op,
    });
    return op;
  }

  async get(id: string): Promise<Operation> {
    return toOperation(await this.getRow(id));
  }

  async getRow(id: string): Promise<OperationRow> {
    const row = await this.store.db
      .selectFrom('operations')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirst();
    if (!row) throw new NqvmError('OPERATION_NOT_FOUND', { id });
    return row;
  }

  /** Keyset-paged, newest first unless `order` is `asc`. */
  async list(q: {
    limit: number;
    cursor?: string;
    order?: 'asc' | 'desc';
    status?: string;
    kind?: string;
    target_id?: string;
  }) {
    let query = this.store.db.selectFrom('operations').selectAll();
    if (q.status) query = query.where('status', '=', q.status as OperationStatus);
    if (q.kind) query = query.where('kind', '=', q.kind);
    if (q.target_id) query = query.where('target_id', '=', q.target_id);
    const page = await paginate(query, 'created_at', q, q.order ?? 'desc');
    return { items: page.items.map(toOperation), next: page.next };
  }

  /** Active (queued or running) operations on one target, oldest first. */
  async active(targetId: string): Promise<OperationRow[]> {
    return this.store.db
      .selectFrom('operations')
      .selectAll()
      .where('target_id', '=', targetId)
      .where('status', 'in', ['queued', 'running'])
      .orderBy('created_at')
      .execute();
  }

  /** Updates progress or status; a terminal operation never changes again. */
  async update(
    id: string,
    patch: {
      status?: OperationStatus;
      percent?: number;
      message?: string;
      error?: { code: string; message: string } | null;
      steps?: OperationStep[];
    },
  ): Promise<Operation | null> {
    const at = nowIso();
    const terminal = patch.status ? TERMINAL.has(patch.status) : false;
    const res = await this.store.db
      .updateTable('operations')
      .set({
        ...(patch.status ? { status: patch.status } : {}),
        ...(patch.percent !== undefined
          ? { progress_percent: Math.round(Math.max(0, Math.min(100, patch.percent))) }
          : {}),
        ...(patch.message !== undefined ? { progress_message: patch.message } : {}),
        ...(patch.error !== undefined
          ? { error_code: patch.error?.code ?? null, error_message: patch.error?.message ?? null }
          : {}),
        ...(patch.steps ? { steps: JSON.stringify(patch.steps) } : {}),
        ...(terminal ? { finished_at: at } : {}),
        updated_at: at,
      })
      .where('id', '=', id)
      .where('status', 'in', ['queued', 'running'])
      .executeTakeFirst();
    if (Number(res.numUpdatedRows) === 0) return null;
    const op = await this.get(id);
    await this.bus.publish({
      type: 'operation.updated',
      resourceType: 'operation',
      resourceId: id,
      data: op,
    });
    return op;
  }

  /** `steps`: where its time went, when the one who did the work timed it. */
  async succeed(id: string, message = 'done', steps?: OperationStep[]): Promise<Operation | null> {
    return this.update(id, { status: 'succeeded', percent: 100, message, ...(steps ? { steps } : {}) });
  }

  async fail(id: string, code: string, message: string): Promise<Operation | null> {
    return this.update(id, { status: 'failed', message, error: { code, message } });
  }

  async cancel(id: string, reason = 'cancelled by request'): Promise<Operation> {
    const row = await this.getRow(id);
    if (TERMINAL.has(row.status)) {
      throw new NqvmError('OPERATION_NOT_CANCELLABLE', `operation ${id} is already ${row.status}`, {
        status: row.status,
      });
    }
    const hook = this.cancelHooks.get(row.kind);
    if (row.status === 'running' && !hook) {
      throw new NqvmError('OPERATION_NOT_CANCELLABLE', `a running ${row.kind} operation cannot be stopped`, {
        status: row.status,
      });
    }
    const op = await this.update(id, { status: 'cancelled', message: reason });
    if (!op) return this.get(id);
    await hook?.(row);
    return op;
  }

  /** Waits up to `seconds` for the operation to finish; answers its state either way. */
  async wait(id: string, seconds: number): Promise<Operation> {
    const first = await this.get(id);
    if (seconds <= 0 || TERMINAL.has(first.status)) return first;
    return new Promise<Operation>((resolve, reject) => {
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        unsubscribe();
        this.get(id).then(resolve, reject);
      };
      const timer = setTimeout(finish, seconds * 1000);
      const unsubscribe = this.bus.subscribe((e) => {
        if (
          e.resourceType === 'operation' &&
          e.resourceId === id &&
          TERMINAL.has((e.data as Operation).status)
        )
          finish();
      });
      // The operation may have finished between the first read and the subscription.
      this.get(id).then((op) => TERMINAL.has(op.status) && finish(), reject);
    });
  }

  async prune(olderThanIso: string): Promise<number> {
    const r = await this.store.db
      .deleteFrom('operations')
      .where('finished_at', 'is not', null)
      .where('finished_at', '<', olderThanIso)
      .executeTakeFirst();
    return Number(r.numDeletedRows);
  }
}
