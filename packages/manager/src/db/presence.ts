/**
 * Which manager processes are running, so work a stopped one left behind (an upload cut off by
 * a kill) is resolved as soon as a manager looks, not once a lease runs out. PostgreSQL: each
 * manager holds a session advisory lock named by its id on a connection of its own, which the
 * server drops with the process. SQLite serves one manager, so only this process runs.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { type Datastore, sql } from './datastore';

/** Two-key advisory locks: this namespace and hashtext(id), apart from the singleton locks. */
const NAMESPACE = 'nqvm:manager';
const RECONNECT_MS = 1000;

export interface Presence {
  /** This process's id (random per start). */
  readonly id: string;
  /** Whether the manager process of that id is running. */
  isRunning(id: string): Promise<boolean>;
  close(): Promise<void>;
}

/**
 * Announces this process as running until `close()`.
 *
 * @example
 * const presence = await openPresence(store, config.databaseUrl);
 * if (!(await presence.isRunning(op.owner))) failAbandoned(op);
 */
export async function openPresence(store: Datastore, databaseUrl: string): Promise<Presence> {
  const id = randomUUID();
  if (store.dialect === 'sqlite')
    return { id, isRunning: async (other) => other === id, close: async () => {} };

  let closed = false;
  let client: pg.Client | null = null;
  let retry: NodeJS.Timeout | undefined;
  const hold = async (): Promise<void> => {
    const c = new pg.Client({ connectionString: databaseUrl });
    // A lost connection (server restart) loses the lock: take it again on a new one.
    c.on('error', () => {});
    c.on('end', () => {
      if (closed || client !== c) return;
      client = null;
      const again = () => {
        if (!closed)
          hold().catch(() => {
            retry = setTimeout(again, RECONNECT_MS);
            retry.unref();
          });
      };
      retry = setTimeout(again, RECONNECT_MS);
      retry.unref();
    });
    await c.connect();
    try {
      await c.query('select pg_advisory_lock(hashtext($1), hashtext($2))', [NAMESPACE, id]);
    } catch (err) {
      await c.end().catch(() => {});
      throw err;
    }
    client = c;
  };
  await hold();
  return {
    id,
    async isRunning(other) {
      if (other === id) return true;
      // One statement, so a lock taken to test is let go on the same session.
      const { rows } = await sql<{ running: boolean }>`select case
          when pg_try_advisory_lock(hashtext(${NAMESPACE}), hashtext(${other}))
          then not pg_advisory_unlock(hashtext(${NAMESPACE}), hashtext(${other}))
          else true end as running`.execute(store.db);
      return rows[0]?.running ?? true;
    },
    async close() {
      closed = true;
      clearTimeout(retry);
      const c = client;
      client = null;
      await c?.end().catch(() => {});
    },
  };
}
