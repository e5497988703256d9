/**
 * The manager's `/metrics` in the Prometheus text format. Request, datastore and event-stream
 * series are counted as things happen; fleet series (VMs by state and host, hosts, operations
 * in flight) are read from the datastore at scrape time, so every replica answers the same.
 * Labels are bounded: route templates (never raw paths), host names, states, kinds; no VM ids.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Datastore, QueryObservation } from '../db/datastore';
import type { BusEvent } from '../events/bus';

/** Seconds; API calls are mostly milliseconds, image uploads and waits reach a minute. */
const REQUEST_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const QUERY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5];
const LAG_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const OPERATION_BUCKETS = [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800];

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

/** The statement and first table of a query: bounded by the schema. */
export function describeQuery(sqlText: string): { statement: string; table: string } {
  const statement = /^\s*(\w+)/.exec(sqlText)?.[1]?.toLowerCase() ?? 'other';
  const known = ['select', 'insert', 'update', 'delete', 'with'].includes(statement) ? statement : 'other';
  const table =
    /\b(?:from|into|update)\s+"?([a-z_][a-z0-9_]*)"?/i.exec(sqlText)?.[1]?.toLowerCase() ?? 'none';
  return { statement: known, table };
}

/**
 * @example
 * const metrics = new ManagerMetrics(store);
 * app.get('/metrics', async (_req, reply) => reply.type(metrics.contentType).send(await metrics.scrape()));
 */
export class ManagerMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'method' | 'route' | 'status'>;
  private readonly requestSeconds: Histogram<'method' | 'route' | 'status'>;
  private readonly querySeconds: Histogram<'statement' | 'table' | 'result'>;
  private readonly eventLag: Histogram;
  private readonly eventClients: Gauge;
  private readonly operations: Counter<'kind' | 'result'>;
  private readonly operationSeconds: Histogram<'kind' | 'result'>;
  private readonly vms: Gauge<'state' | 'host'>;
  private readonly hosts: Gauge<'status'>;
  private readonly operationsActive: Gauge<'kind' | 'status'>;
  private readonly hostVcpus: Gauge<'host' | 'kind'>;
  private readonly hostMemory: Gauge<'host' | 'kind'>;
  private readonly unsubscribe: Array<() => void> = [];
  private clients = 0;

  constructor(private readonly store: Datastore) {
    const registers = [this.registry];
    const routeLabels = ['method', 'route', 'status'] as const;
    this.requests = new Counter({
      name: 'nqvm_api_requests_total',
      help: 'API requests answered, by route template and status',
      labelNames: routeLabels,
      registers,
    });
    this.requestSeconds = new Histogram({
      name: 'nqvm_api_request_duration_seconds',
      help: 'Time to answer an API request, by route template and status',
      labelNames: routeLabels,
      buckets: REQUEST_BUCKETS,
      registers,
    });
    this.querySeconds = new Histogram({
      name: 'nqvm_datastore_query_duration_seconds',
      help: 'Datastore query time, by statement and first table',
      labelNames: ['statement', 'table', 'result'],
      buckets: QUERY_BUCKETS,
      registers,
    });
    this.eventLag = new Histogram({
      name: 'nqvm_event_stream_lag_seconds',
      help: 'Time from an event being recorded to its delivery on an SSE stream',
      buckets: LAG_BUCKETS,
      registers,
    });
    this.eventClients = new Gauge({
      name: 'nqvm_event_stream_clients',
      help: 'Open SSE streams on this manager',
      registers,
      collect: () => this.eventClients.set(this.clients),
    });
    this.operations = new Counter({
      name: 'nqvm_operations_total',
      help: 'Operations finished since this manager started, by kind and result',
      labelNames: ['kind', 'result'],
      registers,
    });
    this.operationSeconds = new Histogram({
      name: 'nqvm_operation_duration_seconds',
      help: 'Time from an operation being created to its end, by kind and result',
      labelNames: ['kind', 'result'],
      buckets: OPERATION_BUCKETS,
      registers,
    });
    this.vms = new Gauge({
      name: 'nqvm_vms',
      help: 'VMs by state and host ("" for none)',
      labelNames: ['state', 'host'],
      registers,
    });
    this.hosts = new Gauge({
      name: 'nqvm_hosts',
      help: 'Hosts by status',
      labelNames: ['status'],
      registers,
    });
    this.operationsActive = new Gauge({
      name: 'nqvm_operations_active',
      help: 'Operations queued or running, by kind',
      labelNames: ['kind', 'status'],
      registers,
    });
    this.hostVcpus = new Gauge({
      name: 'nqvm_host_scheduler_vcpus',
      help: "A host's vCPUs: its cores (capacity, before NQVM_VCPU_OVERCOMMIT) and those given to VMs",
      labelNames: ['host', 'kind'],
      registers,
    });
    this.hostMemory = new Gauge({
      name: 'nqvm_host_scheduler_memory_bytes',
      help: "A host's memory: capacity and what VMs were given",
      labelNames: ['host', 'kind'],
      registers,
    });
    // prom-client's default metrics break Prometheus's naming rules (gauges named *_total): the manager's own two.
    new Counter({
      name: 'nqvm_manager_process_cpu_seconds_total',
      help: 'CPU time of the manager process (user + system)',
      registers,
      collect() {
        const u = process.cpuUsage();
        this.reset();
        this.inc((u.user + u.system) / 1e6);
      },
    });
    new Gauge({
      name: 'nqvm_manager_process_resident_memory_bytes',
      help: 'Resident memory of the manager process',
      registers,
      collect() {
        this.set(process.memoryUsage.rss());
      },
    });
    this.unsubscribe.push(store.observeQueries((q) => this.onQuery(q)));
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** An answered request: `route` is the route template (null when no route matched). */
  observeRequest(method: string, route: string | null, status: number, seconds: number): void {
    const labels = { method, route: route ?? 'unmatched', status: String(status) };
    this.requests.inc(labels);
    this.requestSeconds.observe(labels, seconds);
  }

  /** An SSE stream opened; the returned function closes it. */
  streamOpened(): () => void {
    this.clients++;
    let open = true;
    return () => {
      if (open) this.clients--;
      open = false;
    };
  }

  /** An event written to an SSE stream. */
  eventDelivered(e: BusEvent): void {
    if (e.createdAt) this.eventLag.observe(Math.max(0, (Date.now() - Date.parse(e.createdAt)) / 1000));
  }

  /** Counts operations as their end is published (on every replica: each sees every event). */
  onEvent(e: BusEvent): void {
    if (e.type !== 'operation.updated') return;
    const op = e.data as { kind?: string; status?: string; created_at?: string; updated_at?: string };
    if (!op.kind || !op.status || !TERMINAL.has(op.status)) return;
    const labels = { kind: op.kind, result: op.status };
    this.operations.inc(labels);
    if (op.created_at && op.updated_at) {
      const s = (Date.parse(op.updated_at) - Date.parse(op.created_at)) / 1000;
      if (Number.isFinite(s) && s >= 0) this.operationSeconds.observe(labels, s);
    }
  }

  /** Reads the fleet series from the datastore and answers the exposition text. */
  async scrape(): Promise<string> {
    const db = this.store.db;
    const [vms, hosts, ops] = await Promise.all([
      db
        .selectFrom('vms')
        .leftJoin('hosts', 'hosts.id', 'vms.host_id')
        .select((eb) => ['vms.state as state', 'hosts.name as host', eb.fn.countAll<number>().as('n')])
        .groupBy(['vms.state', 'hosts.name'])
        .execute(),
      db
        .selectFrom('hosts')
        .select(['name', 'status', 'cap_vcpu', 'cap_mem_mib', 'alloc_vcpu', 'alloc_mem_mib'])
        .execute(),
      db
        .selectFrom('operations')
        .select((eb) => ['kind', 'status', eb.fn.countAll<number>().as('n')])
        .where('status', 'in', ['queued', 'running'])
        .groupBy(['kind', 'status'])
        .execute(),
    ]);
    this.vms.reset();
    for (const r of vms) this.vms.set({ state: r.state, host: r.host ?? '' }, Number(r.n));
    this.hosts.reset();
    for (const status of ['ready', 'unreachable', 'lost'])
      this.hosts.set({ status }, hosts.filter((h) => h.status === status).length);
    this.hostVcpus.reset();
    this.hostMemory.reset();
    for (const h of hosts) {
      this.hostVcpus.set({ host: h.name, kind: 'capacity' }, h.cap_vcpu);
      this.hostVcpus.set({ host: h.name, kind: 'allocated' }, h.alloc_vcpu);
      this.hostMemory.set({ host: h.name, kind: 'capacity' }, h.cap_mem_mib * 1024 * 1024);
      this.hostMemory.set({ host: h.name, kind: 'allocated' }, h.alloc_mem_mib * 1024 * 1024);
    }
    this.operationsActive.reset();
    for (const r of ops) this.operationsActive.set({ kind: r.kind, status: r.status }, Number(r.n));
    return this.registry.metrics();
  }

  /** Stops observing the datastore (the manager closes). */
  close(): void {
    for (const u of this.unsubscribe.splice(0)) u();
  }

  private onQuery(q: QueryObservation): void {
    const { statement, table } = describeQuery(q.sql);
    this.querySeconds.observe({ statement, table, result: q.failed ? 'error' : 'ok' }, q.seconds);
  }
}
