/**
 * The agent's identity with its manager, stored in `<state>/identity.json` (mode 0600): the
 * host id and credential from registration, the manager's public key that verifies requests
 * signed by the manager, and where the manager is (with the pinned TLS certificate, if any).
 */
import path from 'node:path';
import { z } from 'zod';
import { readJsonFile, writeJsonAtomic } from './state-files';

export const AgentIdentity = z.object({
  host_id: z.string().min(1),
  credential: z.string().min(1),
  manager_public_key: z.string().min(1),
  manager_base: z.string().min(1),
  /** sha256 (hex) of the manager's TLS certificate, from the join token; null: normal TLS checks. */
  tls_fingerprint: z.string().nullable().default(null),
});
export type AgentIdentity = z.infer<typeof AgentIdentity>;

export function identityPath(stateDir: string): string {
  return path.join(stateDir, 'identity.json');
}

/** The stored identity, or null before the first registration. */
export async function loadIdentity(stateDir: string): Promise<AgentIdentity | null> {
  const file = identityPath(stateDir);
  const raw = await readJsonFile(file);
  if (raw === null) return null;
  const parsed = AgentIdentity.safeParse(raw);
  if (!parsed.success)
    throw new Error(`${file} is not a valid agent identity: ${parsed.error.issues[0]?.message}`);
  return parsed.data;
}

export async function saveIdentity(stateDir: string, identity: AgentIdentity): Promise<void> {
  await writeJsonAtomic(identityPath(stateDir), identity, 0o600);
}
