/**
 * The manager -> agent protocol. The manager signs every request with its Ed25519 key
 * (headers below); the agent verifies with the public key it got at registration and refuses
 * anything unsigned, stale (> 60 s) or badly signed. Agent -> manager calls use the host
 * credential as a Bearer token (routes under /api/v1/agent/).
 */
import { z } from 'zod';
import { AgentVmReport, DesiredState, RestartPolicy, Uuid, Vmm } from './schemas';

export const SIGNATURE_HEADER = 'x-nqvm-signature';
export const TIMESTAMP_HEADER = 'x-nqvm-timestamp';
export const SIGNATURE_MAX_SKEW_MS = 60_000;

/** An image file the agent needs, with where to find it. */
export const AgentImageRef = z.object({
  id: Uuid,
  sha256: z
    .string()
    .regex(/^[a-f0-9]{64}$/)
    .nullable(),
  size_bytes: z.number().int().nullable(),
  /** Host path, when manager and agent share the machine (nqvm up) or the image root. */
  path: z.string().nullable(),
});
export type AgentImageRef = z.infer<typeof AgentImageRef>;

export const AgentVmSpec = z.object({
  name: z.string(),
  vcpu: z.number().int().min(1),
  mem_mib: z.number().int().min(16),
  vmm: Vmm.nullable(),
  kernel: AgentImageRef,
  initrd: AgentImageRef.nullable(),
  rootfs: AgentImageRef.nullable(),
  disk_size_mib: z.number().int().nullable(),
  boot_args: z.string().nullable(),
  restart_policy: RestartPolicy,
});
export type AgentVmSpec = z.infer<typeof AgentVmSpec>;

/** PUT /v1/vms/{id}: converge this VM to `desired` at `generation` (idempotent). */
export const AgentVmCommand = z.object({
  generation: z.number().int().min(1),
  desired: DesiredState,
  /** Set once per reboot request; the agent reboots when it first sees this generation. */
  reboot: z.boolean().default(false),
  stop: z
    .object({ force: z.boolean(), timeout_s: z.number().int().min(1) })
    .default({ force: false, timeout_s: 30 }),
  spec: AgentVmSpec,
});
export type AgentVmCommand = z.infer<typeof AgentVmCommand>;

export { AgentVmReport as AgentVmStatus } from './schemas';

/** GET /v1/vms/{id}/metrics (agent) and /api/v1/vms/{id}/metrics (manager). */
export const VmMetrics = z.object({
  vmm: Vmm.nullable(),
  /** Firecracker: its last metrics line (JSON, written every 60 s and on flush); null when none yet or another VMM. */
  metrics: z.record(z.string(), z.unknown()).nullable(),
});
export type VmMetrics = z.infer<typeof VmMetrics>;

export const AgentVmList = z.object({ items: z.array(AgentVmReport) });

/**
 * The bytes both sides sign and verify: method, path with query, timestamp (ms since the
 * epoch, as sent in TIMESTAMP_HEADER) and the hex SHA-256 of the body (of no bytes when none).
 */
export function signingInput(
  method: string,
  pathAndQuery: string,
  timestamp: string,
  bodySha256Hex: string,
): Buffer {
  return Buffer.from(`${method.toUpperCase()}\n${pathAndQuery}\n${timestamp}\n${bodySha256Hex}`);
}
