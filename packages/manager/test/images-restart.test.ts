/**
 * An upload cut off by a manager killed with SIGKILL (a real process) is resolved as soon as
 * the manager starts again, on both datastores: before the new one answers, the image is gone
 * with its partial temp file, and the operation failed saying why; the name is free again.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Operation } from '@nqvm/api';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { loadManagerConfig } from '../src/config';
import { openDatastore } from '../src/db/datastore';
import { createManager } from '../src/manager';
import {
  ADMIN_PASSWORD,
  client,
  DATASTORES,
  type DatastoreKind,
  freshDatabaseUrl,
  tokenFor,
} from './harness';
import { expectError, until } from './helpers';
import { chunksOf, upload } from './image-upload';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..', '..', '..');
const MiB = 1024 * 1024;

function managerEnv(dataDir: string, dbUrl: string): Record<string, string> {
  return {
    NQVM_DATA_DIR: dataDir,
    DATABASE_URL: dbUrl,
    MANAGER_BIND: '127.0.0.1:0',
    NQVM_ADMIN_PASSWORD: ADMIN_PASSWORD,
    NQVM_LOG_LEVEL: 'silent',
  };
}

/** Starts `manager-process.ts` in a child process; answers it and the URL it serves. */
async function spawnManager(env: Record<string, string>): Promise<{ proc: ChildProcess; url: string }> {
  const proc = spawn(process.execPath, ['--import', 'tsx', path.join(here, 'manager-process.ts')], {
    cwd: repoRoot,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const url = await new Promise<string>((resolve, reject) => {
    proc.stdout?.on('data', (d) => {
      out += d;
      const m = /listening (\S+)/.exec(out);
      if (m) resolve(m[1] as string);
    });
    proc.stderr?.on('data', (d) => (out += d));
    proc.once('exit', (code) => reject(new Error(`the manager exited (${code}) before serving:\n${out}`)));
  });
  return { proc, url };
}

/** The advisory locks held in the test's PostgreSQL database (a manager's presence is one). */
async function advisoryLocks(dbUrl: string): Promise<number> {
  const c = new pg.Client({ connectionString: dbUrl });
  await c.connect();
  try {
    const { rows } = await c.query(
      `select count(*)::int as n from pg_locks l join pg_database d on d.oid = l.database
        where l.locktype = 'advisory' and d.datname = current_database()`,
    );
    return rows[0].n as number;
  } finally {
    await c.end();
  }
}

describe.each(DATASTORES)('an upload cut off by a manager kill, on %s', (kind: DatastoreKind) => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), `nqvm-restart-${kind}-`));
  const blobDir = path.join(dataDir, 'images', 'blobs', 'sha256');
  const temps = () =>
    fs.existsSync(blobDir) ? fs.readdirSync(blobDir).filter((f) => f.startsWith('.tmp-')) : [];
  let drop = async () => {};
  let killed: ChildProcess | undefined;
  let closeRestarted = async () => {};

  afterAll(async () => {
    killed?.kill('SIGKILL');
    await closeRestarted();
    await drop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it('is resolved by the restart before it answers: row, temp file and operation', async () => {
    const db = await freshDatabaseUrl(kind, dataDir);
    drop = db.drop;
    const env = managerEnv(dataDir, db.url);
    const first = await spawnManager(env);
    killed = first.proc;
    const token = await tokenFor(first.url, 'admin', ADMIN_PASSWORD);
    const api = client(first.url, token);

    // 32 MiB announced, sent slowly: the manager is killed with most of it still to come.
    const body = chunksOf(Buffer.alloc(32 * MiB, 0x5a), 256 * 1024);
    const sending = upload(first.url, token, 'name=cut-off&kind=rootfs', body, { delayMs: 50 }).catch(
      (err: Error) => err,
    );
    const op = await until('the upload to make progress', async () => {
      const ops = (await api.get('/api/v1/operations?kind=image.upload')).body.items as Operation[];
      return ops.find((o) => o.status === 'running' && o.progress.percent > 0);
    });
    await until('its temp file to hold bytes', async () =>
      temps().some((f) => fs.statSync(path.join(blobDir, f)).size > 0),
    );
    const exited = new Promise((r) => first.proc.once('exit', r));
    first.proc.kill('SIGKILL');
    await exited;
    expect(await sending).toBeInstanceOf(Error);
    if (kind === 'postgres')
      // The server ends the killed process's sessions (and its presence lock) once it sees them close.
      await until("the killed manager's sessions to end", async () => (await advisoryLocks(db.url)) === 0);

    // What the kill left: the image importing, its operation running, the partial file.
    const left = await openDatastore(db.url);
    try {
      const row = await left.db
        .selectFrom('images')
        .selectAll()
        .where('name', '=', 'cut-off')
        .executeTakeFirst();
      expect(row?.status).toBe('importing');
      const opRow = await left.db
        .selectFrom('operations')
        .selectAll()
        .where('id', '=', op.id)
        .executeTakeFirst();
      expect(opRow?.status).toBe('running');
    } finally {
      await left.close();
    }
    expect(temps()).toHaveLength(1);

    // The restart: a new manager on the same data folder and datastore.
    const config = loadManagerConfig(env);
    const store = await openDatastore(config.databaseUrl);
    const manager = await createManager(config, { store, loopIntervalMs: 200 });
    closeRestarted = async () => {
      await manager.close();
      await store.close();
    };
    const url = await manager.listen();
    const token2 = await tokenFor(url, 'admin', ADMIN_PASSWORD);
    const again = client(url, token2);
    // No waiting: the start resolved it.
    expectError(await again.get(`/api/v1/images/${op.target.id}`), 404, 'IMAGE_NOT_FOUND');
    expect((await again.get('/api/v1/images?limit=100')).body.items).toEqual([]);
    const failed = (await again.get(`/api/v1/operations/${op.id}`)).body as Operation;
    expect(failed).toMatchObject({ status: 'failed', error: { code: 'IMPORT_FAILED' } });
    expect(failed.error?.message).toContain('the manager running it stopped');
    expect(temps()).toEqual([]);

    const ext4 = path.join(dataDir, 'retry.ext4');
    execFileSync('mkfs.ext4', ['-q', '-F', ext4, '4M']);
    const retry = await upload(url, token2, 'name=cut-off&kind=rootfs', [fs.readFileSync(ext4)]);
    expect(retry.status, retry.text).toBe(201);
    expect(temps()).toEqual([]);
  });
});
