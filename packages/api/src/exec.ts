/**
 * Running a command in a guest through nqvm's guest agent (a host-to-guest channel: virtio-serial
 * with QEMU, vsock with Firecracker; nothing listens on the guest's network). The manager relays
 * to the VM's agent, which relays to the guest agent; output is returned as UTF-8 text.
 */
import { z } from 'zod';

export const EnvName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/, 'an environment variable name');
export const Arg = z.string().max(16_384);
/** A guest path for a working directory. */
export const GuestDir = z.string().regex(/^\/[^\0]{0,4095}$/, 'an absolute path');
/** A guest user, resolved in the guest's /etc/passwd and /etc/group. */
export const GuestUser = z
  .string()
  .regex(/^[A-Za-z0-9_.-]{1,32}(:[A-Za-z0-9_.-]{1,32})?$/, 'user, uid, user:group or uid:gid');

/** POST /api/v1/vms/{id}/exec */
export const ExecRequest = z.strictObject({
  command: z.array(Arg).min(1).max(256).describe('argv; the first word is looked up in PATH'),
  env: z.record(EnvName, z.string().max(32_768)).optional(),
  working_dir: GuestDir.optional(),
  user: GuestUser.optional(),
  stdin: z.string().max(1_048_576).optional(),
  timeout_s: z.number().int().min(1).max(3600).default(60).describe('then the command is killed (signal 9)'),
});
export type ExecRequest = z.infer<typeof ExecRequest>;

export const ExecResult = z.object({
  exit_code: z.number().int().nullable(),
  /** Set when the command was killed by a signal (e.g. 9 after the timeout). */
  signal: z.number().int().nullable(),
  stdout: z.string(),
  stderr: z.string(),
  /** Output past 4 MiB per stream was dropped. */
  truncated: z.boolean(),
  timed_out: z.boolean(),
  duration_ms: z.number(),
});
export type ExecResult = z.infer<typeof ExecResult>;

/** Manager -> agent: POST /v1/vms/{id}/exec. Bytes travel as base64, exactly. */
export const AgentExec = z.object({
  argv: z.array(z.string()).min(1),
  env: z.record(z.string(), z.string()).default({}),
  cwd: z.string().nullable().default(null),
  user: z.string().nullable().default(null),
  stdin_b64: z.string().nullable().default(null),
  timeout_s: z.number().int().min(1).max(3600),
});
export type AgentExec = z.infer<typeof AgentExec>;

export const AgentExecResult = z.object({
  exit_code: z.number().int().nullable(),
  signal: z.number().int().nullable(),
  stdout_b64: z.string(),
  stderr_b64: z.string(),
  truncated: z.boolean(),
  timed_out: z.boolean(),
  duration_ms: z.number(),
});
export type AgentExecResult = z.infer<typeof AgentExecResult>;

/**
 * The interactive exec WebSocket: `GET /api/v1/vms/{id}/exec/ws` and
 * `/api/v1/containers/{id}/exec/ws` (relayed to the agent's `/v1/vms/{id}/exec/ws`). Binary
 * frames carry the command's input (client to server) and output (server to client; with a tty
 * stdout and stderr are one stream); text frames carry the JSON messages below. The server ends
 * with `exit` (close 1000) or `error` (close 1011).
 */
export const ExecWsQuery = z.object({
  command: z.string().max(65_536).describe('the argv as a JSON array of strings, e.g. ["/bin/sh"]'),
  tty: z.enum(['0', '1']).default('1'),
  rows: z.coerce.number().int().min(1).max(1000).default(24),
  cols: z.coerce.number().int().min(1).max(1000).default(80),
  user: GuestUser.optional(),
  working_dir: GuestDir.optional(),
});
export type ExecWsQuery = z.infer<typeof ExecWsQuery>;

/** The argv of an exec WebSocket query, or null when it is not a non-empty JSON array of strings. */
export function parseExecArgv(command: string): string[] | null {
  try {
    const argv = JSON.parse(command) as unknown;
    if (!Array.isArray(argv) || argv.length === 0 || argv.length > 256) return null;
    return argv.every((a) => typeof a === 'string' && a.length <= 16_384) ? (argv as string[]) : null;
  } catch {
    return null;
  }
}

export const ExecClientMessage = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('resize'),
    rows: z.number().int().min(1).max(1000),
    cols: z.number().int().min(1).max(1000),
  }),
  /** The end of the input (stdin closed; a tty ignores it). */
  z.object({ type: z.literal('eof') }),
  z.object({ type: z.literal('signal'), signal: z.number().int().min(1).max(64) }),
]);
export type ExecClientMessage = z.infer<typeof ExecClientMessage>;

export type ExecServerMessage =
  | { type: 'started'; pid: number }
  | { type: 'exit'; exit_code: number | null; signal: number | null }
  | { type: 'error'; code: string; message: string };
