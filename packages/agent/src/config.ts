/**
 * The agent's configuration: the only place in the agent that reads the environment. The
 * reference system's variables (AGENT_BIND, FC_RUN_DIR, FC_BRIDGE, MANAGER_BASE) keep their
 * names and meaning; nqvm's own start with NQVM_.
 */
import os from 'node:os';
import path from 'node:path';
import {
  ConfigError,
  defaultDataDir,
  envBool,
  envHostPort,
  envLogLevel,
  envPositiveInt,
  Name,
  parseEnv,
  splitHostPort,
} from '@nqvm/api';
import { z } from 'zod';

const httpUrl = z
  .url()
  .refine((v) => /^https?:\/\//.test(v), 'expected an http:// or https:// URL')
  .transform((v) => v.replace(/\/+$/, ''));

/** The agent registers under this name: the API's rule for names. */
const hostName = Name;

const AgentEnv = z.object({
  AGENT_BIND: envHostPort.default('127.0.0.1:9090'),
  FC_RUN_DIR: z.string().min(1).optional(),
  FC_BRIDGE: z
    .string()
    .regex(/^[a-zA-Z0-9_.-]{1,15}$/, 'a Linux interface name: 1-15 of [a-zA-Z0-9_.-]')
    .default('fcbr0'),
  MANAGER_BASE: httpUrl.optional(),
  NQVM_DATA_DIR: z.string().min(1).optional(),
  NQVM_JOIN_TOKEN: z.string().min(1).optional(),
  NQVM_AGENT_NAME: hostName.optional(),
  NQVM_AGENT_ADVERTISE_URL: httpUrl.optional(),
  NQVM_AGENT_MAX_VCPU: envPositiveInt.optional(),
  NQVM_AGENT_MAX_MEM_MIB: envPositiveInt.optional(),
  NQVM_AGENT_MAX_DISK_MIB: envPositiveInt.optional(),
  NQVM_HOST_PREFIX: z
    .string()
    .regex(/^[a-z0-9]{1,4}$/, '1-4 of [a-z0-9]')
    .default('nq'),
  NQVM_AGENT_NETNS: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, 'a network namespace name under /run/netns')
    .optional(),
  QEMU_BIN: z.string().min(1).optional(),
  FIRECRACKER_BIN: z.string().min(1).optional(),
  JAILER_BIN: z.string().min(1).optional(),
  NQVM_FC_TRACK_DIRTY_PAGES: envBool.default(false),
  NQVM_HEARTBEAT_INTERVAL_S: envPositiveInt.default(5),
  NQVM_AGENT_IMAGE_CACHE_MAX_MIB: envPositiveInt.default(20_480),
  NQVM_AGENT_METRICS_TOKEN: z.string().min(16, 'at least 16 characters').optional(),
  NQVM_LOG_LEVEL: envLogLevel,
});

export interface AgentConfig {
  /** Where the agent API listens (port 0: any free port). */
  bind: { host: string; port: number };
  /** State directory: identity.json and one folder per VM under `vms/`. */
  stateDir: string;
  /** Bridge for VM NICs (used once networking lands). */
  bridge: string;
  /** Manager URL; may be omitted once identity.json holds it. */
  managerBase: string | null;
  /** Join token for the first registration (`secret` or `secret~sha256:<cert fingerprint>`). */
  joinToken: string | null;
  /** Host name the agent registers under. */
  name: string;
  /** URL the manager uses to reach this agent; null: `http://` + the bound address. */
  advertiseUrl: string | null;
  /** Capacity caps, so several agents can share a machine; null: what the host has. */
  caps: { vcpu: number | null; memMib: number | null; diskMib: number | null };
  /** Host-unique prefix of every name the agent creates on the host (TAPs, nft tables). */
  hostPrefix: string;
  /** A network namespace (under /run/netns) VM networks and QEMU live in; null: the agent's own. */
  netns: string | null;
  qemuBin: string | null;
  firecrackerBin: string | null;
  jailerBin: string | null;
  /** Firecracker VMs boot with dirty page tracking: Diff snapshots on every version (1.13+ has them anyway). */
  fcTrackDirtyPages: boolean;
  /** Heartbeat period until the manager says otherwise. */
  heartbeatIntervalS: number;
  /** Bound of the images fetched from the manager (`<stateDir>/images`); unused ones go first. */
  imageCacheMaxMib: number;
  /** A bearer token Prometheus may scrape `/metrics` with; null: only the manager's signed requests. */
  metricsToken: string | null;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
}

export { ConfigError };

/**
 * Validates the environment; throws a ConfigError naming the first bad variable.
 *
 * @example
 * const config = loadAgentConfig({ ...process.env, MANAGER_BASE: 'http://10.0.0.1:8080' });
 */
export function loadAgentConfig(env: NodeJS.ProcessEnv = process.env): AgentConfig {
  const e = parseEnv(AgentEnv, env);
  const name = e.NQVM_AGENT_NAME ?? os.hostname();
  if (!hostName.safeParse(name).success) {
    throw new ConfigError('NQVM_AGENT_NAME', `the host name "${name}" is not a valid agent name; set one`);
  }
  return {
    bind: splitHostPort(e.AGENT_BIND),
    stateDir: path.resolve(e.FC_RUN_DIR ?? path.join(defaultDataDir(env), 'agent')),
    bridge: e.FC_BRIDGE,
    managerBase: e.MANAGER_BASE ?? null,
    joinToken: e.NQVM_JOIN_TOKEN ?? null,
    name,
    advertiseUrl: e.NQVM_AGENT_ADVERTISE_URL ?? null,
    caps: {
      vcpu: e.NQVM_AGENT_MAX_VCPU ?? null,
      memMib: e.NQVM_AGENT_MAX_MEM_MIB ?? null,
      diskMib: e.NQVM_AGENT_MAX_DISK_MIB ?? null,
    },
    hostPrefix: e.NQVM_HOST_PREFIX,
    netns: e.NQVM_AGENT_NETNS ?? null,
    qemuBin: e.QEMU_BIN ?? null,
    firecrackerBin: e.FIRECRACKER_BIN ?? null,
    jailerBin: e.JAILER_BIN ?? null,
    fcTrackDirtyPages: e.NQVM_FC_TRACK_DIRTY_PAGES,
    heartbeatIntervalS: e.NQVM_HEARTBEAT_INTERVAL_S,
    imageCacheMaxMib: e.NQVM_AGENT_IMAGE_CACHE_MAX_MIB,
    metricsToken: e.NQVM_AGENT_METRICS_TOKEN ?? null,
    logLevel: e.NQVM_LOG_LEVEL,
  };
}

/** Rows for the README's configuration table. */
export const agentConfigDoc: Array<[string, string, string]> = [
  ['AGENT_BIND', '127.0.0.1:9090', 'address and port of the agent API (the manager calls it)'],
  [
    'FC_RUN_DIR',
    '$NQVM_DATA_DIR/agent',
    'agent state: identity.json, one folder per VM, the image cache (images/) and volumes (volumes/)',
  ],
  ['FC_BRIDGE', 'fcbr0', 'bridge VM NICs attach to'],
  ['MANAGER_BASE', '(from identity.json)', 'manager URL; required for the first registration'],
  ['NQVM_JOIN_TOKEN', '(none)', 'join token from `POST /api/v1/join-tokens`; needed once, to register'],
  ['NQVM_AGENT_NAME', 'the host name', 'name the host registers under'],
  ['NQVM_AGENT_ADVERTISE_URL', 'http://$AGENT_BIND', 'URL the manager uses to reach this agent'],
  [
    'NQVM_AGENT_MAX_VCPU / _MEM_MIB / _DISK_MIB',
    '(what the host has)',
    'caps on the capacity this agent offers',
  ],
  ['NQVM_HOST_PREFIX', 'nq', 'host-unique prefix (1-4 of [a-z0-9]) of TAPs and other host names'],
  ['QEMU_BIN / FIRECRACKER_BIN / JAILER_BIN', '(from PATH)', 'VMM binaries'],
  [
    'NQVM_FC_TRACK_DIRTY_PAGES',
    'false',
    'boot Firecracker VMs with dirty page tracking: small Diff snapshots on every version (a little slower guest memory writes)',
  ],
  ['NQVM_HEARTBEAT_INTERVAL_S', '5', 'heartbeat period until the manager answers its own'],
  [
    'NQVM_AGENT_IMAGE_CACHE_MAX_MIB',
    '20480',
    'size limit of the images fetched from the manager; least recently used images no VM uses are evicted',
  ],
  [
    'NQVM_AGENT_METRICS_TOKEN',
    '(unset)',
    'bearer token (16+ characters) that may scrape `/metrics`; without it only the manager (signed) can',
  ],
  ['NQVM_LOG_LEVEL', 'info', 'fatal, error, warn, info, debug, trace or silent'],
];
