/**
 * The CLI's own settings: named contexts (a manager URL, an API token and how to trust its TLS
 * certificate) in `$XDG_CONFIG_HOME/nqvm/config.json` (or `$NQVM_CONFIG`), written with mode
 * 0600 in a 0700 folder because it holds tokens.
 */
import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';

export const TlsSettings = z.object({
  /** sha256 of the server certificate (DER), 64 hex digits: trust exactly that certificate. */
  fingerprint: z
    .string()
    .regex(/^[0-9a-f]{64}$/)
    .optional(),
  /** A PEM file of CA certificates to trust instead of the system's. */
  ca_file: z.string().optional(),
});
export type TlsSettings = z.infer<typeof TlsSettings>;

export const Context = z.object({
  server: z.string().url(),
  token: z.string().min(1),
  username: z.string().optional(),
  tls: TlsSettings.default({}),
});
export type Context = z.infer<typeof Context>;

export const CliConfig = z.object({
  current: z.string().nullable().default(null),
  contexts: z.record(z.string(), Context).default({}),
});
export type CliConfig = z.infer<typeof CliConfig>;

export function configPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.NQVM_CONFIG) return env.NQVM_CONFIG;
  const base = env.XDG_CONFIG_HOME || path.join(os.homedir(), '.config');
  return path.join(base, 'nqvm', 'config.json');
}

export async function loadConfig(file = configPath()): Promise<CliConfig> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { current: null, contexts: {} };
    throw err;
  }
  const parsed = CliConfig.safeParse(JSON.parse(text));
  if (!parsed.success) throw new Error(`${file} is not a valid nqvm CLI config: ${parsed.error.message}`);
  return parsed.data;
}

/** Writes the config atomically, readable only by its owner. */
export async function saveConfig(config: CliConfig, file = configPath()): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
  await chmod(tmp, 0o600);
  await rename(tmp, file);
}

/** A context name derived from a server URL: `https://vm1.lan:8443` -> `vm1.lan-8443`. */
export function contextNameFor(server: string): string {
  const u = new URL(server);
  return (u.port ? `${u.hostname}-${u.port}` : u.hostname).replace(/[^a-zA-Z0-9._-]/g, '-');
}
