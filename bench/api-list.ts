/**
 * API benchmark: a real manager on SQLite and on PostgreSQL, each holding 10,000 VMs.
 * Measures `GET /api/v1/vms?limit=100` latency (first page, and deep pages reached through
 * `next` cursors) and `POST /api/v1/vms` throughput at a fixed concurrency, and prints a table.
 *
 *   npx tsx bench/api-list.ts            (PostgreSQL on 127.0.0.1:5432, see NQVM_TEST_PG_URL)
 *   BENCH_VMS=50000 BENCH_REQUESTS=500 npx tsx bench/api-list.ts
 */
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { sql } from 'kysely';
import type { NewVm } from '../packages/manager/src/db/schema';
import { startManager, type TestManager } from '../packages/manager/test/harness';
import { size } from './bench-kit';

const VMS = size('BENCH_VMS', 10_000, 300);
const REQUESTS = size('BENCH_REQUESTS', 300, 20);
const POST_SECONDS = size('BENCH_POST_SECONDS', 3, 1);
const CONCURRENCY = size('BENCH_CONCURRENCY', 8, 4);
const PAGE = 100;
/**
 * BENCH_UNPLACED=1 seeds the running third of the VMs without a host (waiting for placement),
 * which makes the reconciler's loop work on all of them at every pass.
 */
const UNPLACED = process.env.BENCH_UNPLACED === '1';

interface Result {
  kind: string;
  seedMs: number;
  first: number[];
  deep: number[];
  filtered: number[];
  postRps: number;
  postErrors: number;
  postLatency: number[];
}

function pct(sorted: number[], p: number): number {
  if (!sorted.length) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}
const summary = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return `${pct(s, 50).toFixed(2)} / ${pct(s, 99).toFixed(2)}`;
};

/** Inserts the VM rows straight into the datastore (the API path is measured separately). */
async function seed(t: TestManager, n: number): Promise<void> {
  const db = t.manager.services.store.db;
  const spec = JSON.stringify({
    kernel_image_id: null,
    rootfs_image_id: null,
    initrd_image_id: null,
    disk_size_mib: null,
    boot_args: null,
    networks: [],
    guest_config: {
      mode: 'auto',
      username: null,
      password_hash: null,
      ssh_authorized_keys: [],
      hostname: null,
      user_data: null,
    },
  });
  // One ready host that holds the running VMs, already reconciled (observed = generation):
  // the background loops have nothing to do, as on a settled system.
  const hostId = randomUUID();
  const now = new Date().toISOString();
  await db
    .insertInto('hosts')
    .values({
      id: hostId,
      name: 'bench-host',
      address: 'http://127.0.0.1:9',
      credential_hash: null,
      status: 'ready',
      schedulable: 1,
      labels: '{}',
      capacity: JSON.stringify({ vcpu: 100_000, mem_mib: 1e8, disk_mib: 1e9, kvm: true, drivers: [] }),
      cap_vcpu: 100_000,
      cap_mem_mib: 1e8,
      cap_disk_mib: 1e9,
      alloc_vcpu: 0,
      alloc_mem_mib: 0,
      alloc_disk_mib: 0,
      agent_version: 'bench',
      last_heartbeat_at: now,
      created_at: now,
      updated_at: now,
    })
    .execute();
  const start = Date.now() - n * 10;
  const batch = 500;
  for (let i = 0; i < n; i += batch) {
    const rows: NewVm[] = [];
    for (let j = i; j < Math.min(n, i + batch); j++) {
      const at = new Date(start + j * 10).toISOString();
      rows.push({
        id: randomUUID(),
        name: `seed-${String(j).padStart(6, '0')}`,
        state: j % 3 === 0 ? 'running' : 'stopped',
        desired_state: j % 3 === 0 ? 'running' : 'stopped',
        host_id: j % 3 === 0 && !UNPLACED ? hostId : null,
        generation: 1,
        vcpu: 1,
        mem_mib: 256,
        disk_mib: 0,
        vmm: null,
        spec,
        labels: JSON.stringify({ env: j % 2 ? 'prod' : 'dev' }),
        restart_policy: 'never',
        last_error: null,
        created_by: 'bench',
        created_at: at,
        updated_at: at,
        observed_generation: 1,
        commanded_at: null,
        pid: null,
      });
    }
    await db.transaction().execute(async (trx) => {
      await trx.insertInto('vms').values(rows).execute();
      await trx
        .insertInto('vm_labels')
        .values(
          rows.map((r) => ({ vm_id: r.id, key: 'env', value: JSON.parse(r.labels ?? '{}').env as string })),
        )
        .execute();
    });
  }
}

async function timed(
  url: string,
  headers: Record<string, string>,
  init: RequestInit = {},
): Promise<[number, number, string]> {
  const t0 = performance.now();
  const res = await fetch(url, {
    ...init,
    headers: { ...headers, ...(init.headers as Record<string, string>) },
  });
  const text = await res.text();
  return [performance.now() - t0, res.status, text];
}

async function run(kind: 'sqlite' | 'postgres'): Promise<Result> {
  // A long heartbeat interval and no hosts: the background loops stay idle during the measurement.
  const t = await startManager(kind, { NQVM_HEARTBEAT_INTERVAL_S: '3600' });
  try {
    const auth = { authorization: `Bearer ${t.adminToken}` };
    const s0 = performance.now();
    await seed(t, VMS);
    const seedMs = performance.now() - s0;
    // Fresh planner statistics, as autovacuum would have them on a live system.
    if (kind === 'postgres') await sql`analyze`.execute(t.manager.services.store.db);

    const list = `${t.url}/api/v1/vms?limit=${PAGE}`;
    // Walk every page once: checks the cursor chain and collects the deep cursors.
    const cursors: string[] = [];
    let next: string | null = null;
    let seen = 0;
    do {
      const [, status, text] = await timed(next ? `${list}&cursor=${next}` : list, auth);
      if (status !== 200) throw new Error(`list: ${status} ${text.slice(0, 200)}`);
      const page = JSON.parse(text) as { items: unknown[]; next: string | null };
      seen += page.items.length;
      next = page.next;
      if (next) cursors.push(next);
    } while (next);
    if (seen !== VMS) throw new Error(`paged through ${seen} VMs, expected ${VMS}`);
    const deepCursors = cursors.slice(Math.floor(cursors.length / 2));

    for (let i = 0; i < 20; i++) await timed(list, auth); // warm-up
    const first: number[] = [];
    for (let i = 0; i < REQUESTS; i++) first.push((await timed(list, auth))[0]);
    const deep: number[] = [];
    for (let i = 0; i < REQUESTS; i++)
      deep.push((await timed(`${list}&cursor=${deepCursors[i % deepCursors.length]}`, auth))[0]);
    const filtered: number[] = [];
    for (let i = 0; i < REQUESTS; i++)
      filtered.push((await timed(`${list}&label=env=prod&state=stopped`, auth))[0]);

    // POST /api/v1/vms at a fixed concurrency for a few seconds.
    let n = 0;
    let ok = 0;
    let errors = 0;
    const postLatency: number[] = [];
    const until = performance.now() + POST_SECONDS * 1000;
    const worker = async () => {
      while (performance.now() < until) {
        const name = `bench-${kind}-${n++}`;
        const [ms, status] = await timed(`${t.url}/api/v1/vms`, auth, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ name, vcpu: 1, mem_mib: 256, labels: { bench: 'post' }, start: false }),
        });
        postLatency.push(ms);
        if (status === 202) ok++;
        else errors++;
      }
    };
    const p0 = performance.now();
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    const postRps = ok / ((performance.now() - p0) / 1000);
    return { kind, seedMs, first, deep, filtered, postRps, postErrors: errors, postLatency };
  } finally {
    await t.close();
  }
}

async function main(): Promise<void> {
  const results: Result[] = [];
  for (const kind of ['sqlite', 'postgres'] as const) {
    console.log(`${kind}: seeding ${VMS} VMs and measuring...`);
    const r = await run(kind);
    results.push(r);
    console.log(
      `${kind}: GET first page p50/p99 ${summary(r.first)} ms, deep ${summary(r.deep)} ms, filtered ${summary(r.filtered)} ms; ` +
        `POST ${r.postRps.toFixed(0)} req/s (p50/p99 ${summary(r.postLatency)} ms, ${r.postErrors} errors)`,
    );
  }
  const rows: Array<[string, ...string[]]> = [
    [`seed ${VMS} VMs (direct insert, s)`, ...results.map((r) => (r.seedMs / 1000).toFixed(2))],
    [`GET /vms?limit=${PAGE} first page p50 / p99 ms`, ...results.map((r) => summary(r.first))],
    [`GET /vms?limit=${PAGE} deep page (cursor) p50 / p99 ms`, ...results.map((r) => summary(r.deep))],
    [`GET /vms?limit=${PAGE}&label=..&state=.. p50 / p99 ms`, ...results.map((r) => summary(r.filtered))],
    [
      `POST /vms req/s (concurrency ${CONCURRENCY}, ${POST_SECONDS} s)`,
      ...results.map((r) => r.postRps.toFixed(0)),
    ],
    ['POST /vms latency p50 / p99 ms', ...results.map((r) => summary(r.postLatency))],
    ['POST /vms errors', ...results.map((r) => String(r.postErrors))],
  ];
  const header = ['', ...results.map((r) => r.kind)];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  console.log(`\n${line(header)}\n${widths.map((w) => '-'.repeat(w)).join('  ')}`);
  for (const r of rows) console.log(line(r));
  console.log(
    `\n${REQUESTS} sequential requests per GET row; Node ${process.version}${UNPLACED ? '; a third of the VMs unplaced' : ''}.`,
  );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
