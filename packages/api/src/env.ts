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
