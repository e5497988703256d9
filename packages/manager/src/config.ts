/**
 * The manager's configuration: the only place that reads the environment. The reference
 * system's variables keep their names and meaning; nqvm's own start with NQVM_.
 */
import path from 'node:path';
import {
  ConfigError,
  defaultDataDir,
  envBool,
  envHostPort,
  envLogLevel,
  envPositiveInt,
  parseEnv,
  splitHostPort,
} from '@nqvm/api';
import { z } from 'zod';
import { parseFetchAllow } from './images/url-policy';

/** The manager's variables; `managerConfigDoc` below describes them for the README. */
const ManagerEnv = z.object({
  DATABASE_URL: z
    .string()
    .regex(/^(postgres(ql)?:\/\/|sqlite:)/, 'expected postgres://... or sqlite:PATH')
    .optional(),
  MANAGER_BIND: envHostPort.default('127.0.0.1:8080'),
  MANAGER_IMAGE_ROOT: z.string().min(1).optional(),
  MANAGER_ALLOW_IMAGE_PATHS: envBool.default(false),
  MANAGER_IMAGE_MAX_BYTES: envPositiveInt.default(64 * 1024 ** 3),
  NQVM_IMAGE_FETCH_ALLOW: z
    .string()
    .default('')
    .transform((v, ctx) => {
      try {
        return parseFetchAllow(v).entries;
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
        return z.NEVER;
      }
    }),
  NQVM_DATA_DIR: z.string().min(1).optional(),
  NQVM_ADMIN_PASSWORD: z.string().min(8, 'at least 8 characters').optional(),
  NQVM_TLS_CERT: z.string().min(1).optional(),
  NQVM_TLS_KEY: z.string().min(1).optional(),
  NQVM_OPERATION_RETENTION_DAYS: envPositiveInt.default(30),
  NQVM_AUDIT_RETENTION_DAYS: envPositiveInt.default(365),
  NQVM_HEARTBEAT_INTERVAL_S: envPositiveInt.default(5),
  NQVM_VCPU_OVERCOMMIT: z.coerce.number().min(1).max(64).default(4),
  NQVM_SESSION_TTL_HOURS: envPositiveInt.default(12),
  NQVM_METRICS_TOKEN: z.string().min(16, 'at least 16 characters').optional(),
  NQVM_LOG_LEVEL: envLogLevel,
});

export interface ManagerConfig {
  databaseUrl: string;
  bind: { host: string; port: number };
  imageRoot: string;
  allowImagePaths: boolean;
  /** Largest image an upload or URL import may bring. */
  imageMaxBytes: number;
  /** What URL imports may fetch from although the URL policy refuses it (CIDRs, addresses, host names). */
  imageFetchAllow: string[];
  dataDir: string;
  adminPassword?: string;
  tls?: { certFile: string; keyFile: string };
  operationRetentionDays: number;
  auditRetentionDays: number;
  heartbeatIntervalS: number;
  vcpuOvercommit: number;
  sessionTtlHours: number;
  /** A bearer token that may scrape `/metrics` (and nothing else); unset: operators only. */
  metricsToken?: string;
  logLevel: string;
}

export { ConfigError, defaultDataDir };

/** Validates the environment; throws a ConfigError naming the first bad variable. */
export function loadManagerConfig(env: NodeJS.ProcessEnv = process.env): ManagerConfig {
  const e = parseEnv(ManagerEnv, env);
  if (Boolean(e.NQVM_TLS_CERT) !== Boolean(e.NQVM_TLS_KEY)) {
    throw new ConfigError(
      e.NQVM_TLS_CERT ? 'NQVM_TLS_KEY' : 'NQVM_TLS_CERT',
      'set both NQVM_TLS_CERT and NQVM_TLS_KEY',
    );
  }
  const dataDir = defaultDataDir(env);
  return {
    databaseUrl: e.DATABASE_URL ?? `sqlite:${path.join(dataDir, 'nqvm.db')}`,
    bind: splitHostPort(e.MANAGER_BIND),
    imageRoot: path.resolve(e.MANAGER_IMAGE_ROOT ?? path.join(dataDir, 'images')),
    allowImagePaths: e.MANAGER_ALLOW_IMAGE_PATHS,
    imageMaxBytes: e.MANAGER_IMAGE_MAX_BYTES,
    imageFetchAllow: e.NQVM_IMAGE_FETCH_ALLOW,
    dataDir,
    adminPassword: e.NQVM_ADMIN_PASSWORD,
    tls:
      e.NQVM_TLS_CERT && e.NQVM_TLS_KEY ? { certFile: e.NQVM_TLS_CERT, keyFile: e.NQVM_TLS_KEY } : undefined,
    operationRetentionDays: e.NQVM_OPERATION_RETENTION_DAYS,
    auditRetentionDays: e.NQVM_AUDIT_RETENTION_DAYS,
    heartbeatIntervalS: e.NQVM_HEARTBEAT_INTERVAL_S,
    vcpuOvercommit: e.NQVM_VCPU_OVERCOMMIT,
    sessionTtlHours: e.NQVM_SESSION_TTL_HOURS,
    metricsToken: e.NQVM_METRICS_TOKEN,
    logLevel: e.NQVM_LOG_LEVEL,
  };
}

/** Rows for the README's configuration table. */
export const managerConfigDoc: Array<[string, string, string]> = [
  [
    'DATABASE_URL',
    'sqlite:$NQVM_DATA_DIR/nqvm.db',
    'postgres://... for PostgreSQL (several managers), or sqlite:PATH',
  ],
  ['MANAGER_BIND', '127.0.0.1:8080', 'address and port the API and web UI listen on'],
  ['MANAGER_IMAGE_ROOT', '$NQVM_DATA_DIR/images', 'image store; host-path imports must stay under it'],
  [
    'MANAGER_ALLOW_IMAGE_PATHS',
    'false',
    'allow registering images by host path (under MANAGER_IMAGE_ROOT only)',
  ],
  ['MANAGER_IMAGE_MAX_BYTES', '68719476736 (64 GiB)', 'largest image an upload or URL import may bring'],
  [
    'NQVM_IMAGE_FETCH_ALLOW',
    '(empty)',
    'CIDRs, addresses and host names URL imports may fetch from although they are loopback, ' +
      "link-local, multicast, reserved, the manager's machine or a registered host (refused otherwise)",
  ],
  ['NQVM_DATA_DIR', '/var/lib/nqvm (root) or ~/.local/share/nqvm', 'embedded store, keys and local state'],
  [
    'NQVM_ADMIN_PASSWORD',
    '(random, printed once)',
    'password of the first admin, used only when no user exists',
  ],
  [
    'NQVM_TLS_CERT / NQVM_TLS_KEY',
    '(unset: HTTP)',
    'PEM files; the manager then serves HTTPS and cookies carry Secure',
  ],
  ['NQVM_OPERATION_RETENTION_DAYS', '30', 'finished operations older than this are pruned'],
  ['NQVM_AUDIT_RETENTION_DAYS', '365', 'audit events older than this are pruned'],
  [
    'NQVM_HEARTBEAT_INTERVAL_S',
    '5',
    'agent heartbeat interval; a host is unreachable after 3 missed, lost after 12',
  ],
  ['NQVM_VCPU_OVERCOMMIT', '4', 'vCPUs placed per host core; memory and disk are never overcommitted'],
  ['NQVM_SESSION_TTL_HOURS', '12', 'lifetime of a web UI session'],
  [
    'NQVM_METRICS_TOKEN',
    '(unset: operators only)',
    'bearer token (16+ characters) that may scrape `/metrics` and nothing else, for Prometheus',
  ],
  ['NQVM_LOG_LEVEL', 'info', 'fatal, error, warn, info, debug, trace or silent'],
];
