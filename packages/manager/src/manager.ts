/**
 * A running manager: datastore, services, HTTP API and its background loops (host health
 * sweep, retention pruning). Several managers may share one PostgreSQL; loops that must run
 * once per cluster take an advisory lock.
 */
import { createHash, X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import { listenError } from '@nqvm/api';
import pino from 'pino';
import { AuditLog } from './audit/audit';
import { LoginThrottle } from './auth/throttle';
import { Users } from './auth/users';
import { isoAfter } from './clock';
import type { ManagerConfig } from './config';
import { Containers } from './containers/containers';
import { type Datastore, openDatastore } from './db/datastore';
import { openPresence } from './db/presence';
import { EventBus } from './events/bus';
import { AgentClient } from './hosts/agent-client';
import { Hosts } from './hosts/hosts';
import { loadOrCreateManagerKey } from './hosts/manager-key';
import type { App } from './http/app-type';
import { type BuildOptions, buildApp, type RegisteredRoute } from './http/server';
import { ImageService } from './images/image-service';
import { ManagerMetrics } from './metrics/manager-metrics';
import { Networks } from './networks/networks';
import { PortForwards } from './networks/port-forwards';
import { Operations } from './operations/operations';
import { Reconciler } from './reconciler/reconciler';
import { Scheduler } from './scheduler/scheduler';
import type { Services } from './services';
import { Snapshots } from './snapshots/snapshots';
import { Templates } from './templates/templates';
import { Vms } from './vms/vms';
import { publishVolumes } from './volumes/vm-volumes';
import { Volumes } from './volumes/volumes';

export const VERSION = '0.1.0';
const EVENT_RETENTION_MS = 60 * 60_000;

export interface Manager {
  app: App;
  services: Services;
  routes: RegisteredRoute[];
  /** The first admin's generated password, when this start created it. */
  firstAdmin: { username: string; generatedPassword?: string } | null;
  listen(): Promise<string>;
  close(): Promise<void>;
}

export interface ManagerOptions extends Omit<BuildOptions, 'https' | 'logger'> {
  store?: Datastore;
  /** Background loop period (tests shorten it). */
  loopIntervalMs?: number;
  /** Where log lines go; default standard output. */
  logStream?: pino.DestinationStream;
}

/**
 * A logged request names its method and path; its query string is left out (it can carry an
 * exec's command, a console's parameters or a token), as are headers (cookies, bearer tokens).
 */
export function requestForLog(req: {
  method?: string;
  url?: string;
  ip?: string;
  hostname?: string;
}): Record<string, unknown> {
  const url = req.url ?? '';
  const q = url.indexOf('?');
  return {
    method: req.method,
    url: q < 0 ? url : `${url.slice(0, q)}?(query not logged)`,
    host: req.hostname,
    remoteAddress: req.ip,
  };
}

export async function createManager(config: ManagerConfig, opts: ManagerOptions = {}): Promise<Manager> {
  fs.mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  const store = opts.store ?? (await openDatastore(config.databaseUrl));
  const bus = new EventBus(store);
  await bus.start();
  const metrics = new ManagerMetrics(store);
  const stopCountingOperations = bus.subscribe((e) => metrics.onEvent(e));
  const ops = new Operations(store, bus);
  let https: BuildOptions['https'];
  let fingerprint: string | null = null;
  if (config.tls) {
    https = { cert: fs.readFileSync(config.tls.certFile), key: fs.readFileSync(config.tls.keyFile) };
    fingerprint = createHash('sha256').update(new X509Certificate(https.cert).raw).digest('hex');
  }
  const scheduler = new Scheduler(store, config.vcpuOvercommit, {
    onVolumesPinned: (ids) => publishVolumes(store.db, bus, ids),
  });
  const vms = new Vms(store, bus, ops, scheduler);
  const managerKey = loadOrCreateManagerKey(config.dataDir);
  const agents = new AgentClient(managerKey);
  // One logger for the HTTP layer and the background loops, at NQVM_LOG_LEVEL.
  const log = pino(
    { level: config.logLevel, serializers: { req: requestForLog } },
    opts.logStream ?? pino.destination(1),
  );
  // Marks this process as running, so what it leaves when killed is resolved at once.
  const presence = await openPresence(store, config.databaseUrl);
  const images = new ImageService(store, bus, ops, config, log, presence);
  const portForwards = new PortForwards(store, vms, agents);
  const reconciler = new Reconciler(store, vms, ops, scheduler, agents, log);
  const hosts = new Hosts(store, bus, config.heartbeatIntervalS, fingerprint, config.vcpuOvercommit);
  const services: Services = {
    config,
    store,
    bus,
    ops,
    vms,
    images,
    volumes: new Volumes(store, bus, agents, vms, log),
    templates: new Templates(store, bus, vms),
    snapshots: new Snapshots(store, bus, ops, agents, vms, log),
    containers: new Containers({
      store,
      bus,
      ops,
      vms,
      images,
      portForwards,
      hosts,
      agents,
      reconciler,
      log,
    }),
    networks: new Networks(store, bus),
    portForwards,
    scheduler,
    agents,
    reconciler,
    metrics,
    users: new Users(store, bus, config.sessionTtlHours),
    hosts,
    audit: new AuditLog(store),
    throttle: new LoginThrottle(),
    managerKey,
    version: VERSION,
  };
  const firstAdmin = await services.users.ensureFirstAdmin(config.adminPassword);
  await services.images.start();
  const { app, routes } = await buildApp(services, { ...opts, https, logger: log });

  const interval = opts.loopIntervalMs ?? 1000;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let lastPrune = 0;
  const loop = async () => {
    try {
      await store.withSingletonLock('nqvm:reconciler', () => services.reconciler.pass());
      await store.withSingletonLock('nqvm:volume-sweep', () => services.volumes.sweep());
      await store.withSingletonLock('nqvm:snapshot-sweep', () => services.snapshots.sweep());
      await store.withSingletonLock('nqvm:container-sweep', () => services.containers.sweep());
      await store.withSingletonLock('nqvm:health-sweep', async () => {
        for (const host of await services.hosts.sweep()) {
          if (host.status === 'ready') continue;
          for (const vm of await store.db
            .selectFrom('vms')
            .select(['id', 'state', 'desired_state', 'generation'])
            .where('host_id', '=', host.id)
            .execute()) {
            // A VM being deleted stays so: `deleting` is the delete's intent, which the host
            // carries out when it is back. A failed VM its host will not restart holds no VMM:
            // it stays failed with its reason.
            if (vm.state === 'unknown' || vm.state === 'deleting') continue;
            if (vm.state === 'failed' && vm.desired_state === 'stopped') continue;
            await services.vms.writeIf(
              vm.id,
              { state: vm.state, generation: vm.generation },
              { state: 'unknown', last_error: `host ${host.name} is ${host.status}` },
            );
          }
        }
      });
      if (Date.now() - lastPrune > 60_000) {
        lastPrune = Date.now();
        await store.withSingletonLock('nqvm:prune', async () => {
          await ops.prune(isoAfter(-config.operationRetentionDays * 86_400_000));
          await services.audit.prune(isoAfter(-config.auditRetentionDays * 86_400_000));
          await bus.prune(isoAfter(-EVENT_RETENTION_MS));
          await services.users.pruneSessions();
        });
      }
    } catch (err) {
      app.log.error({ err }, 'background loop failed; retrying');
    }
    if (!stopped) {
      timer = setTimeout(loop, interval);
      timer.unref();
    }
  };
  timer = setTimeout(loop, interval);
  timer.unref();

  return {
    app,
    services,
    routes,
    firstAdmin,
    async listen() {
      try {
        return await app.listen({ host: config.bind.host, port: config.bind.port });
      } catch (err) {
        throw listenError(err, 'the manager', config.bind, 'MANAGER_BIND=HOST:PORT');
      }
    },
    async close() {
      stopped = true;
      if (timer) clearTimeout(timer);
      await services.containers.stop();
      await services.images.stop();
      await presence.close();
      bus.stop();
      stopCountingOperations();
      metrics.close();
      await app.close();
      if (!opts.store) await store.close();
    },
  };
}
