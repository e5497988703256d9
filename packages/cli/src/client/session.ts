/**
 * What every API command shares: which manager and token to use (flags, then NQVM_URL /
 * NQVM_TOKEN, then the named or current context), names resolved to ids, operations followed
 * with a progress display, and errors turned into a message and an exit code.
 */
import { normalizeFingerprint } from '@nqvm/api/tls-pin';
import type { Command } from 'commander';
import { ApiClient, ApiError } from './api';
import { type Context, loadConfig, TlsSettings } from './config';
import { makePrinter, type Printer, printData, UsageError } from './output';
import { Progress } from './progress';

export interface GlobalOptions {
  server?: string;
  token?: string;
  context?: string;
  output?: string;
  caFile?: string;
  tlsFingerprint?: string;
}

export interface Session {
  api: ApiClient;
  print: Printer;
}

export async function resolveContext(g: GlobalOptions, env = process.env): Promise<Context | null> {
  const config = await loadConfig();
  const name = g.context || env.NQVM_CONTEXT || config.current;
  if (g.context && !config.contexts[g.context]) {
    throw new UsageError(`no context named "${g.context}" (see: nqvm context list)`);
  }
  const saved = name ? config.contexts[name] : undefined;
  const server = g.server || env.NQVM_URL || saved?.server;
  const token = g.token || env.NQVM_TOKEN || (saved && server === saved.server ? saved.token : undefined);
  if (!server) return null;
  const tls = TlsSettings.parse({
    ...(saved && server === saved.server ? saved.tls : {}),
    ...(g.caFile ? { ca_file: g.caFile } : {}),
    ...(g.tlsFingerprint ? { fingerprint: normalizePin(g.tlsFingerprint) } : {}),
  });
  return { server: server.replace(/\/+$/, ''), token: token ?? '', tls, username: saved?.username };
}

function normalizePin(text: string): string {
  const hex = normalizeFingerprint(text);
  if (!hex)
    throw new UsageError('--tls-fingerprint must be a sha256 fingerprint (64 hex digits, colons allowed)');
  return hex;
}

/** The API client and printer for a command, or a clear error when nothing says where to go. */
export async function session(cmd: Command): Promise<Session> {
  const g = cmd.optsWithGlobals<GlobalOptions>();
  const print = makePrinter(g.output);
  const ctx = await resolveContext(g);
  if (!ctx) {
    throw new ApiError(
      0,
      'NOT_LOGGED_IN',
      'no manager configured: run `nqvm login <url>`, or set NQVM_URL and NQVM_TOKEN',
    );
  }
  if (!ctx.token) {
    throw new ApiError(
      0,
      'NOT_LOGGED_IN',
      `no API token for ${ctx.server}: run \`nqvm login ${ctx.server}\``,
    );
  }
  return { api: new ApiClient({ server: ctx.server, token: ctx.token, tls: ctx.tls }), print };
}

/** Wraps a command's action: API errors exit 1 with their code, usage errors exit 2. */
export function action<A extends unknown[]>(
  fn: (...args: A) => Promise<void>,
): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      process.exitCode = reportError(err);
    }
  };
}

export function reportError(err: unknown): number {
  if (err instanceof UsageError) {
    process.stderr.write(`nqvm: ${err.message}\n`);
    return 2;
  }
  if (err instanceof ApiError) {
    let text = `nqvm: ${err.code}: ${err.message}`;
    const fields = (err.details as { fields?: Array<{ path?: string; message?: string }> } | undefined)
      ?.fields;
    if (Array.isArray(fields)) {
      for (const f of fields) text += `\n  ${f.path ?? ''}: ${f.message ?? ''}`;
    }
    process.stderr.write(`${text}\n`);
    return 1;
  }
  process.stderr.write(`nqvm: ${err instanceof Error ? err.message : String(err)}\n`);
  return 1;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export interface ResourceKind {
  /** e.g. `/api/v1/vms` */
  path: string;
  /** e.g. `VM` in messages */
  label: string;
  /** the field holding the name (`name`, `username`) */
  nameField?: string;
  /** the list filter that narrows by name prefix, when the API has one */
  nameFilter?: string;
  notFoundCode: string;
}

export const KINDS = {
  vm: { path: '/api/v1/vms', label: 'VM', nameFilter: 'name', notFoundCode: 'VM_NOT_FOUND' },
  image: { path: '/api/v1/images', label: 'image', nameFilter: 'name', notFoundCode: 'IMAGE_NOT_FOUND' },
  host: { path: '/api/v1/hosts', label: 'host', notFoundCode: 'HOST_NOT_FOUND' },
  volume: { path: '/api/v1/volumes', label: 'volume', nameFilter: 'name', notFoundCode: 'VOLUME_NOT_FOUND' },
  network: { path: '/api/v1/networks', label: 'network', notFoundCode: 'NETWORK_NOT_FOUND' },
  template: {
    path: '/api/v1/templates',
    label: 'template',
    nameFilter: 'name',
    notFoundCode: 'TEMPLATE_NOT_FOUND',
  },
  snapshot: { path: '/api/v1/snapshots', label: 'snapshot', notFoundCode: 'SNAPSHOT_NOT_FOUND' },
  container: {
    path: '/api/v1/containers',
    label: 'container',
    nameFilter: 'name',
    notFoundCode: 'CONTAINER_NOT_FOUND',
  },
  user: { path: '/api/v1/users', label: 'user', nameField: 'username', notFoundCode: 'USER_NOT_FOUND' },
  token: { path: '/api/v1/tokens', label: 'API token', notFoundCode: 'TOKEN_NOT_FOUND' },
} satisfies Record<string, ResourceKind>;

/** An id for `nameOrId`: ids pass through; a name must match exactly one resource. */
export async function resolveId(api: ApiClient, kind: ResourceKind, nameOrId: string): Promise<string> {
  if (UUID.test(nameOrId)) return nameOrId.toLowerCase();
  const field = kind.nameField ?? 'name';
  const items = await api.all<Record<string, unknown>>(
    kind.path,
    kind.nameFilter ? { [kind.nameFilter]: nameOrId } : {},
  );
  const hit = items.find((i) => i[field] === nameOrId);
  if (!hit) throw new ApiError(404, kind.notFoundCode, `no ${kind.label} named "${nameOrId}"`);
  return String(hit.id);
}

export interface OperationLike {
  id: string;
  kind: string;
  status: string;
  progress: { percent: number; message: string };
  error: { code: string; message: string } | null;
}

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

/**
 * Follows an operation until it ends, showing its progress on a terminal; throws its error when
 * it failed or was cancelled.
 */
export async function waitOperation(
  api: ApiClient,
  op: OperationLike,
  opts: { timeoutS?: number; label?: string } = {},
): Promise<OperationLike> {
  const progress = new Progress(opts.label ?? op.kind);
  const deadline = opts.timeoutS ? Date.now() + opts.timeoutS * 1000 : Number.POSITIVE_INFINITY;
  let current = op;
  try {
    while (!TERMINAL.has(current.status)) {
      progress.update(current.progress.percent, current.progress.message);
      const left = Math.ceil((deadline - Date.now()) / 1000);
      if (left <= 0) {
        throw new ApiError(
          0,
          'TIMEOUT',
          `operation ${op.id} still ${current.status} after ${opts.timeoutS} s`,
        );
      }
      current = await api.get<OperationLike>(`/api/v1/operations/${op.id}`, { wait: Math.min(left, 10) });
    }
  } finally {
    progress.done(current.status === 'succeeded');
  }
  if (current.status !== 'succeeded') {
    throw new ApiError(
      0,
      current.error?.code ?? 'OPERATION_FAILED',
      `${current.kind} ${current.status}: ${current.error?.message ?? 'no reason given'}`,
    );
  }
  return current;
}

/**
 * What a command run with --no-wait prints: JSON/YAML get the API's whole answer, operation
 * included; a table gets `table()` on stdout (unchanged, so scripts that read it keep working)
 * and each operation's id on stderr, to follow with `nqvm op wait`.
 */
export function printAccepted(
  print: Printer,
  answer: unknown,
  operations: Array<Pick<OperationLike, 'id' | 'status'>>,
  table: () => void,
): void {
  if (print.format !== 'table') {
    printData(print, answer);
    return;
  }
  table();
  for (const op of operations) {
    process.stderr.write(`operation ${op.id} ${op.status} (follow: nqvm op wait ${op.id})\n`);
  }
}

/** `--limit` of a paged list: 1 to 500, as the API takes it. */
export function parseLimit(text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > 500) {
    throw new UsageError(`--limit must be a whole number from 1 to 500, not "${text}"`);
  }
  return n;
}
