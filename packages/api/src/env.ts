/**
 * Pieces every nqvm process's configuration module shares: value schemas for environment
 * variables, the default data folder, and parsing that names the first bad variable.
 */
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';

export const envHostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:]+\]|[a-zA-Z0-9.-]+):\d{1,5}$/, 'expected HOST:PORT, e.g. 127.0.0.1:8080')
  .refine((v) => Number(v.slice(v.lastIndexOf(':') + 1)) <= 65535, 'port must be 0-65535');

export const envPositiveInt = z.coerce.number().int().positive();

export const envBool = z
  .enum(['true', 'false', '1', '0', 'yes', 'no'], { message: 'expected true or false' })
  .transform((v) => v === 'true' || v === '1' || v === 'yes');

export const envLogLevel = z
  .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
  .default('info');

/** Splits a validated `HOST:PORT` (IPv6 in brackets) into its parts. */
export function splitHostPort(v: string): { host: string; port: number } {
  const sep = v.lastIndexOf(':');
  return { host: v.slice(0, sep).replace(/^\[|\]$/g, ''), port: Number(v.slice(sep + 1)) };
}

/** `$NQVM_DATA_DIR`, else /var/lib/nqvm for root, else ~/.local/share/nqvm. */
export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.NQVM_DATA_DIR) return path.resolve(env.NQVM_DATA_DIR);
  return process.getuid?.() === 0 ? '/var/lib/nqvm' : path.join(os.homedir(), '.local', 'share', 'nqvm');
}

/** A configuration error that names the variable at fault. */
export class ConfigError extends Error {
  constructor(
    readonly variable: string,
    detail: string,
  ) {
    super(`invalid configuration: ${variable}: ${detail}`);
    this.name = 'ConfigError';
  }
}

/** Parses the environment with `schema`; throws a ConfigError naming the first bad variable. */
export function parseEnv<T extends z.ZodType>(schema: T, env: NodeJS.ProcessEnv): z.infer<T> {
  const parsed = schema.safeParse(env);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0]!;
  throw new ConfigError(String(issue.path[0]), issue.message);
}

/**
 * What a server tells its user when it cannot listen on its configured address: which address,
 * why in words, and the setting that picks another (a bare `EADDRINUSE` names neither).
 * Answers `err` unchanged when it is not a listen failure.
 */
export function listenError(
  err: unknown,
  what: string,
  bind: { host: string; port: number },
  setting: string,
): unknown {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  const at = `${bind.host.includes(':') ? `[${bind.host}]` : bind.host}:${bind.port}`;
  const why: Record<string, string> = {
    EADDRINUSE: `port ${bind.port} is taken on ${bind.host} (another nqvm, or another program, listens there)`,
    EACCES: `listening on port ${bind.port} needs privileges this process does not have`,
    EADDRNOTAVAIL: `${bind.host} is not an address of this machine`,
  };
  if (!code || !why[code]) return err;
  return new Error(`${what} cannot listen on ${at}: ${why[code]}; pick another with ${setting}`, {
    cause: err,
  });
}
