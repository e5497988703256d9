/**
 * The host agent: adopts the VMs of its state directory, serves the signed API the manager
 * calls, registers with the manager once (join token -> identity.json) and heartbeats with the
 * host's capacity and every VM's state. Stopping the agent never stops a VM.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { type AgentVmReport, listenError } from '@nqvm/api';
import type { FastifyBaseLogger } from 'fastify';
import { pino } from 'pino';
import type { AgentConfig } from '../config';
import type { VmmDriver } from '../drivers/types';
import { type BlobSource, ImageCache } from '../images/image-cache';
import { AgentMetrics } from '../metrics/agent-metrics';
import { UsageHistory } from '../metrics/usage-history';
import { startUsageSampler } from '../metrics/usage-sampler';
import { HostNetwork, hostRunner } from '../network';
import { listLinks } from '../network/iproute';
import { SnapshotStore } from '../snapshots/snapshot-store';
import { VolumeStore } from '../volumes/volume-store';
import { buildAgentApi } from './api';
import { hostInterfaces, measureCapacity } from './capacity';
import { defaultDrivers } from './default-drivers';
import { DriverSet } from './driver-set';
import { Heartbeater } from './heartbeat';
import { type AgentIdentity, identityPath, loadIdentity, saveIdentity } from './identity';
import { errorMessage } from './logger';
import {
  type HeartbeatBody,
  type JoinToken,
  ManagerClient,
  ManagerRequestError,
  parseJoinToken,
} from './manager-client';
import { type ConsoleOpener, openVmConsole } from './vm-console';
import { VmRegistry } from './vm-registry';
import { DEFAULT_RESTART_BACKOFF, type RestartBackoff } from './vm-runtime';

export const AGENT_VERSION = '0.1.0';

export interface AgentOptions {
  /** VMM drivers; default QEMU and Firecracker as configured. */
  drivers?: VmmDriver[];
  /** Default: pino at `config.logLevel` on stdout. */
  logger?: FastifyBaseLogger;
  /** Verify manager signatures with this PEM key instead of the registered one (no manager needed). */
  managerPublicKey?: string;
  openConsole?: ConsoleOpener;
  restartBackoff?: Partial<RestartBackoff>;
  /** Delay between a VM change and its heartbeat. Default 50 ms. */
  heartbeatDebounceMs?: number;
  /** The host's networking; default one over the agent's state directory and host prefix. */
  network?: HostNetwork;
  /** How long `close()` waits for VM work in flight before letting go. Default 10 s. */
  closeWaitMs?: number;
  version?: string;
}

export type AgentStopReason = { reason: 'closed' } | { reason: 'credential-revoked'; message: string };

export interface Agent {
  readonly config: AgentConfig;
  /** Where the API listens, e.g. `http://127.0.0.1:9090`. */
  readonly url: string;
  /** What the manager was told to call. */
  readonly advertiseUrl: string;
  /** This host's id at the manager; null without a manager. */
  readonly hostId: string | null;
  /** Whether this start registered (a join token was used) rather than reusing identity.json. */
  readonly registered: boolean;
  /** Resolves once the agent has stopped: closed, or its credential was revoked. */
  readonly stopped: Promise<AgentStopReason>;
  /** Every VM's report, as heartbeats carry them. */
  vms(): AgentVmReport[];
  /** Sends a heartbeat now; resolves when it is done. */
  heartbeat(): Promise<void>;
  /** Replaces the host credential at the manager and in identity.json. */
  rotateCredential(): Promise<void>;
  /** Stops serving and heartbeating; VMs keep running. */
  close(): Promise<void>;
}

const REGISTER_RETRY_MAX_MS = 30_000;

function urlHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/**
 * Starts an agent: resolves once it serves its API and, with a manager, is registered.
 *
 * @example
 * const agent = await createAgent(loadAgentConfig({ MANAGER_BASE: url, NQVM_JOIN_TOKEN: token, AGENT_BIND: '127.0.0.1:0' }));
 * console.log(agent.hostId, agent.url);
 * await agent.close(); // VMs keep running
 */
export async function createAgent(config: AgentConfig, options: AgentOptions = {}): Promise<Agent> {
  const log = options.logger ?? pino({ level: config.logLevel });
  const version = options.version ?? AGENT_VERSION;
  await mkdir(config.stateDir, { recursive: true, mode: 0o700 });
  const drivers = new DriverSet(options.drivers ?? defaultDrivers(config, log));
  void drivers.all();

  let heartbeater: Heartbeater | null = null;
  // Set once the manager client and credential are known; boots before that use shared paths only.
  let blobSource: BlobSource | null = null;
  const images = new ImageCache({
    stateDir: config.stateDir,
    maxBytes: config.imageCacheMaxMib * 1024 * 1024,
    source: () => blobSource,
    log,
  });
  const volumes = new VolumeStore(config.stateDir);
  const snapshots = new SnapshotStore(config.stateDir);
  for (const id of await snapshots.removeUnfinished())
    log.warn({ snapshotId: id }, 'removed a snapshot the agent stopped in the middle of');
  const network =
    options.network ??
    new HostNetwork({
      stateDir: config.stateDir,
      hostPrefix: config.hostPrefix,
      ...(config.netns ? { netns: config.netns } : {}),
    });
  await restoreNetworking(network, config.stateDir, log);
  const registry = new VmRegistry(
    {
      stateDir: config.stateDir,
      drivers,
      images,
      volumes,
      snapshots,
      network,
      log,
      openConsole: options.openConsole ?? openVmConsole,
      backoff: { ...DEFAULT_RESTART_BACKOFF, ...options.restartBackoff },
      onChange: () => heartbeater?.poke(),
    },
    log,
  );
  await registry.restoreAll();
  const usage = new UsageHistory();
  const stopSampling = startUsageSampler(
    {
      running: () => registry.runningVmms(),
      holds: (id) => registry.has(id),
      taps: () => network.tapsByVm(),
    },
    usage,
  );

  let identity: AgentIdentity | null = await loadIdentity(config.stateDir);
  const pinnedKey = options.managerPublicKey ?? identity?.manager_public_key;
  let managerKey: KeyObject | null = pinnedKey ? createPublicKey(pinnedKey) : null;
  const app = await buildAgentApi({
    vms: registry,
    volumes,
    managerKey: () => managerKey,
    logger: log,
    listensOn: (proto, port) => network.listensOn(proto, port),
    metrics: new AgentMetrics({
      running: () => registry.runningVmms(),
      states: () => registry.stateCounts(),
      taps: () => network.tapsByVm(),
      capacity: async () => measureCapacity(config.stateDir, config.caps, await drivers.all(), []),
      stateDir: config.stateDir,
    }),
    metricsToken: config.metricsToken,
    usage,
  });
  try {
    await app.listen({ host: config.bind.host, port: config.bind.port });
  } catch (err) {
    stopSampling();
    await app.close();
    throw listenError(
      err,
      'the agent API',
      config.bind,
      'AGENT_BIND=HOST:PORT (nqvm up --agent-bind, nqvm agent --bind)',
    );
  }
  const port = (app.server.address() as AddressInfo).port;
  const url = `http://${urlHost(config.bind.host)}:${port}`;
  const wildcard = config.bind.host === '0.0.0.0' || config.bind.host === '::';
  const advertiseUrl = config.advertiseUrl ?? (wildcard ? `http://${os.hostname()}:${port}` : url);

  let resolveStopped!: (r: AgentStopReason) => void;
  const stopped = new Promise<AgentStopReason>((resolve) => {
    resolveStopped = resolve;
  });
  let closing: Promise<void> | null = null;
  const shutdown = (reason: AgentStopReason): Promise<void> => {
    closing ??= (async () => {
      heartbeater?.stop();
      stopSampling();
      await app.close();
      await registry.release(options.closeWaitMs ?? 10_000);
      resolveStopped(reason);
    })();
    return closing;
  };

  const joinToken: JoinToken | null = config.joinToken ? parseJoinToken(config.joinToken) : null;
  const base = config.managerBase ?? identity?.manager_base ?? null;
  let client: ManagerClient | null = null;
  let registered = false;

  // Read where VM networks live (NQVM_AGENT_NETNS), so the report names what the agent can use.
  const links = hostRunner(config.netns ? { netns: config.netns } : {});
  let interfacesFailing = false;
  const interfaces = async () => {
    try {
      const found = hostInterfaces(await listLinks(links), network.names);
      interfacesFailing = false;
      return found;
    } catch (err) {
      if (!interfacesFailing) log.warn({ err: errorMessage(err) }, 'cannot list the host interfaces');
      interfacesFailing = true;
      return [];
    }
  };
  const capacity = async () =>
    measureCapacity(config.stateDir, config.caps, await drivers.all(), await interfaces());
  const collect = async (): Promise<HeartbeatBody> => {
    await registry
      .refreshAddresses()
      .catch((err: unknown) => log.warn({ err: errorMessage(err) }, 'address lookup failed'));
    return { capacity: await capacity(), agent_version: version, vms: registry.reports() };
  };

  const register = async (managerBase: string, token: JoinToken): Promise<AgentIdentity> => {
    const c = new ManagerClient({ base: managerBase, tlsFingerprint: token.tlsFingerprint });
    const body = {
      name: config.name,
      address: advertiseUrl,
      agent_version: version,
      capacity: await capacity(),
    };
    for (let delay = 1_000; ; delay = Math.min(delay * 2, REGISTER_RETRY_MAX_MS)) {
      try {
        const out = await c.register(token.secret, body);
        const id: AgentIdentity = {
          host_id: out.host_id,
          credential: out.credential,
          manager_public_key: out.manager_public_key,
          manager_base: managerBase,
          tls_fingerprint: token.tlsFingerprint,
        };
        await saveIdentity(config.stateDir, id);
        client = c;
        managerKey = createPublicKey(id.manager_public_key);
        registered = true;
        log.info(
          { hostId: id.host_id, manager: managerBase, name: config.name },
          'registered with the manager',
        );
        return id;
      } catch (err) {
        if (!(err instanceof ManagerRequestError && err.retryable)) throw err;
        log.warn({ err: errorMessage(err), retryInMs: delay }, 'cannot register yet; retrying');
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  };

  try {
    if (base && !identity) {
      if (!joinToken) {
        throw new Error(
          `${identityPath(config.stateDir)} does not exist: give a join token (--join-token or NQVM_JOIN_TOKEN) to register with ${base}`,
        );
      }
      identity = await register(base, joinToken);
    } else if (base && identity) {
      client = new ManagerClient({ base, tlsFingerprint: identity.tls_fingerprint });
      try {
        await client.heartbeat(identity.credential, await collect());
      } catch (err) {
        if (!(err instanceof ManagerRequestError && err.unauthorized)) {
          log.warn({ err: errorMessage(err) }, 'first heartbeat failed; retrying every interval');
        } else if (joinToken) {
          log.warn({ hostId: identity.host_id }, 'the manager refused the stored credential; joining again');
          identity = await register(base, joinToken);
        } else {
          throw new Error(
            'the manager refused the stored host credential (revoked?): give a new join token (--join-token) to join again',
          );
        }
      }
    } else {
      log.warn({}, 'no manager configured (MANAGER_BASE): the agent serves its API but reports to no one');
    }
  } catch (err) {
    await shutdown({ reason: 'closed' });
    throw err;
  }

  if (client && identity) {
    blobSource = { open: (sha256) => client!.openImageBlob(identity!.credential, sha256) };
    const hb = new Heartbeater({
      client: () => client!,
      credential: () => identity!.credential,
      collect,
      intervalS: config.heartbeatIntervalS,
      debounceMs: options.heartbeatDebounceMs ?? 50,
      log,
      onDelivered: (body) => registry.acknowledge(body.vms),
      onRevoked: (err) => {
        log.error(
          { hostId: identity?.host_id, err: err.message },
          'the manager refused this host credential (revoked): heartbeats stopped and the agent stops; its VMs keep running. Join again with a new join token.',
        );
        void shutdown({ reason: 'credential-revoked', message: err.message });
      },
    });
    heartbeater = hb;
    hb.start();
  }

  return {
    config,
    url,
    advertiseUrl,
    get hostId() {
      return identity?.host_id ?? null;
    },
    registered,
    stopped,
    vms: () => registry.reports(),
    heartbeat: async () => {
      await heartbeater?.beatNow();
    },
    async rotateCredential() {
      if (!client || !identity) throw new Error('this agent is not registered with a manager');
      const credential = await client.rotateCredential(identity.credential);
      identity = { ...identity, credential };
      await saveIdentity(config.stateDir, identity);
      log.info({ hostId: identity.host_id }, 'host credential rotated');
    },
    close: () => shutdown({ reason: 'closed' }),
  };
}

/**
 * Re-applies the networks, TAPs and port forwards this host held (after an agent restart or a
 * host reboot): whatever is missing is made again. What cannot be applied is logged, and the
 * VMs still start (a boot converges its own NICs again).
 */
async function restoreNetworking(
  network: HostNetwork,
  stateDir: string,
  log: FastifyBaseLogger,
): Promise<void> {
  // A host that never had a VM NIC is left alone: no nftables table, no sysctl.
  if (!existsSync(path.join(stateDir, 'network', 'state.json'))) return;
  try {
    const report = await network.reconcile();
    if (report.actions.length) log.info({ actions: report.actions }, 'host networking restored');
    for (const f of report.failures) log.warn(f, 'host network object not restored');
    for (const w of report.warnings) log.warn(w, 'another firewall may drop VM traffic');
    // A VMM still running on a TAP made anew holds the old, deleted device.
    for (const t of report.createdTaps)
      log.warn(t, 'a TAP was made anew: its VM has no network until it is restarted');
  } catch (err) {
    log.error({ err: errorMessage(err) }, 'cannot restore host networking');
  }
}
