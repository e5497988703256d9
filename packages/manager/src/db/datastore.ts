/**
 * Opens the datastore named by a URL: `sqlite:PATH` (embedded, WAL) or `postgres://...`,
 * runs the migrations, and hands out one Kysely instance for both.
 */
import fs from 'node:fs';
import path from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { Kysely, type LogEvent, PostgresDialect, SqliteDialect, sql } from 'kysely';
import pg from 'pg';
import { type DialectName, migrateToLatest } from './migrations';
import type { Database } from './schema';

/** One query as the datastore ran it, for metrics. */
export interface QueryObservation {
  sql: string;
  seconds: number;
  failed: boolean;
}

export interface Datastore {
  db: Kysely<Database>;
  dialect: DialectName;
  /** A description without credentials, for logs. */
  describe: string;
  /** Runs fn while holding a cluster-wide lock (PostgreSQL advisory lock); SQLite: one process. */
  withSingletonLock<T>(name: string, fn: () => Promise<T>): Promise<T | undefined>;
  /** Calls `listener` after every query with its time; returns the unsubscribe function. */
  observeQueries(listener: (q: QueryObservation) => void): () => void;
  close(): Promise<void>;
}

/** Kysely's log hook feeding the datastore's query listeners. */
function queryObserver(): Pick<Datastore, 'observeQueries'> & { log: (e: LogEvent) => void } {
  const listeners = new Set<(q: QueryObservation) => void>();
  return {
    observeQueries(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    log(e) {
      if (listeners.size === 0) return;
      const q = { sql: e.query.sql, seconds: e.queryDurationMillis / 1000, failed: e.level === 'error' };
      for (const l of listeners) l(q);
    },
  };
}

// Keep BIGINT (int8) columns as JS numbers: every value nqvm stores fits in 2^53.
pg.types.setTypeParser(20, (v) => Number.parseInt(v, 10));

export async function openDatastore(url: string, opts: { migrate?: boolean } = {}): Promise<Datastore> {
  let store: Datastore;
  const queries = queryObserver();
  if (url.startsWith('sqlite:')) {
    const file = url.slice('sqlite:'.length);
    if (file !== ':memory:') fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true, mode: 0o700 });
    const sqlite = new SqliteDatabase(file);
    sqlite.pragma('journal_mode = WAL');
    sqlite.pragma('synchronous = NORMAL');
    sqlite.pragma('foreign_keys = ON');
    sqlite.pragma('busy_timeout = 5000');
    if (file !== ':memory:') fs.chmodSync(file, 0o600);
    const db = new Kysely<Database>({ dialect: new SqliteDialect({ database: sqlite }), log: queries.log });
    store = {
      db,
      observeQueries: queries.observeQueries,
      dialect: 'sqlite',
      describe: `sqlite:${file}`,
      withSingletonLock: async (_name, fn) => fn(),
      close: () => db.destroy(),
    };
  } else if (/^postgres(ql)?:\/\//.test(url)) {
    const pool = new pg.Pool({ connectionString: url, max: 10 });
    // A backend that ends (PostgreSQL restart, failover, admin termination) is reported as an 'error'
    // event: on the pool for idle clients, on the client itself while checked out (a transaction, the
    // singleton lock). Without listeners node-postgres rethrows it and the process dies. The query in
    // flight fails on its own; the pool discards the broken client and the next query reconnects.
    pool.on('error', () => {});
    pool.on('connect', (client) => client.on('error', () => {}));
    const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }), log: queries.log });
    const u = new URL(url);
    store = {
      db,
      observeQueries: queries.observeQueries,
      dialect: 'postgres',
      describe: `postgres://${u.host}${u.pathname}`,
      async withSingletonLock(name, fn) {
        const client = await pool.connect();
        try {
          const { rows } = await client.query('select pg_try_advisory_lock(hashtext($1)) as ok', [name]);
          if (!rows[0]?.ok) return undefined;
          try {
            return await fn();
          } finally {
            await client.query('select pg_advisory_unlock(hashtext($1))', [name]);
          }
        } finally {
          client.release();
        }
      },
      close: () => db.destroy(),
    };
  } else {
    throw new Error('DATABASE_URL must start with sqlite: or postgres://');
  }
  if (opts.migrate !== false) await migrateToLatest(store.db, store.dialect);
  return store;
}

/** Answers whether an error is a unique-constraint violation on either datastore. */
export function isUniqueViolation(err: unknown): boolean {
  const e = err as { code?: string };
  return (
    e?.code === '23505' ||
    e?.code === 'SQLITE_CONSTRAINT_UNIQUE' ||
    e?.code === 'SQLITE_CONSTRAINT_PRIMARYKEY'
  );
}

export { sql };
