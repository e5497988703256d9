/**
 * Keyset pagination over (created_at, id): stable under inserts, O(limit) per page at any depth.
 * The cursor is opaque to clients (base64url of the last row's key).
 */
import { NqvmError } from '@nqvm/api';
import type { SelectQueryBuilder } from 'kysely';

interface Page<T> {
  items: T[];
  next: string | null;
}

export function encodeCursor(at: string, id: string): string {
  return Buffer.from(JSON.stringify([at, id])).toString('base64url');
}

export function decodeCursor(cursor: string): [string, string] {
  try {
    const v = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    // Only what encodeCursor writes: two short strings of printable characters.
    const ok = (x: unknown): x is string =>
      typeof x === 'string' && x.length <= 128 && [...x].every((c) => c >= ' ');
    if (Array.isArray(v) && v.length === 2 && ok(v[0]) && ok(v[1])) {
      return [v[0], v[1]];
    }
  } catch {
    // fall through to the uniform error
  }
  throw new NqvmError('INVALID_CURSOR', 'cursor is not valid; use the "next" value of a previous page', {
    field: 'cursor',
  });
}

/**
 * Applies the cursor and limit to a query ordered by `timeCol, id` (ascending, or newest first
 * with `order: 'desc'`), and builds the page.
 * @example const page = await paginate(db.selectFrom('vms').selectAll(), 'created_at', q);
 */
// biome-ignore lint/suspicious/noExplicitAny: generic over every table that has an id column
export async function paginate<DB, TB extends keyof DB, R extends { id: string } & Record<string, any>>(
  query: SelectQueryBuilder<DB, TB, R>,
  timeCol: string,
  opts: { limit: number; cursor?: string },
  order: 'asc' | 'desc' = 'asc',
): Promise<Page<R>> {
  // biome-ignore lint/suspicious/noExplicitAny: column names are checked by the callers' tables
  let q = query as SelectQueryBuilder<any, any, R>;
  const past = order === 'asc' ? '>' : '<';
  if (opts.cursor) {
    const [at, id] = decodeCursor(opts.cursor);
    q = q.where((eb) => eb.or([eb(timeCol, past, at), eb.and([eb(timeCol, '=', at), eb('id', past, id)])]));
  }
  const rows = await q
    .orderBy(timeCol, order)
    .orderBy('id', order)
    .limit(opts.limit + 1)
    .execute();
  const more = rows.length > opts.limit;
  const items = more ? rows.slice(0, opts.limit) : rows;
  const last = items[items.length - 1];
  return { items, next: more && last ? encodeCursor(String(last[timeCol]), last.id) : null };
}
