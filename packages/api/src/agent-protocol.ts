/**
 * The manager -> agent protocol. The manager signs every request with its Ed25519 key
 * (headers below); the agent verifies with the public key it got at registration and refuses
 * anything unsigned, stale (> 60 s) or badly signed. Agent -> manager calls use the host
 * credential as a Bearer token (routes under /api/v1/agent/).
 */
import { z } from 'zod';
import { AgentVmReport, DesiredState, RestartPolicy, Timestamp, Uuid, Vmm } from './schemas';
import { SnapshotType } from './snapshots';

export const SIGNATURE_HEADER = 'x-nqvm-signature';
export const TIMESTAMP_HEADER = 'x-nqvm-timestamp';
/** A random value per request, signed with it: the agent accepts each one once. */
export const NONCE_HEADER = 'x-nqvm-nonce';
export const SIGNATURE_MAX_SKEW_MS = 60_000;

/** An image file the agent needs, with where to find it. */
const Sha256Hex = z.string().regex(/^[a-f0-9]{64}$/);

export const AgentImageRef = z.object({
  id: Uuid,
  sha256: Sha256Hex.nullable(),
  size_bytes: z.number().int().nullable(),
  /**
   * A path on the manager's machine. The agent uses it only when the same file is there (nqvm
   * up, or a shared image root) with the expected size; otherwise it fetches the blob by digest
   * from the manager (GET /api/v1/agent/images/{sha256}) into its cache.
   */
  path: z.string().nullable(),
  /** File system or container of the bytes: ext4, raw, qcow2, vmlinux, bzimage, cpio... */
  format: z.string().nullable().default(null),
  /** Kernels imported as a bzImage: the ELF vmlinux extracted at import, which Firecracker loads. */
  vmlinux: z.object({ sha256: Sha256Hex, size_bytes: z.number().int() }).nullable().default(null),
  /** Rootfs images: whether cloud-init is installed (decides guest_config mode auto). */
  has_cloud_init: z.boolean().nullable().default(null),
});
export type AgentImageRef = z.infer<typeof AgentImageRef>;

/**
 * What the agent writes into the guest before boot. The password arrives only as a SHA-512
 * crypt hash. `mode` auto: a config drive always, plus an offline edit of the root ext4 when
 * the image has no cloud-init.
 */
export const AgentGuestConfig = z.object({
  mode: z.enum(['auto', 'cloud-init', 'inject', 'none']),
  instance_id: z.string(),
  hostname: z.string(),
  username: z.string().nullable(),
  password_hash: z.string().nullable(),
  ssh_authorized_keys: z.array(z.string()),
  /** User-supplied cloud-config (YAML text starting with #cloud-config) merged into ours. */
  user_data: z.string().nullable(),
  /** cloud-init network-config v2, from the VM's addresses; null when nqvm assigns none. */
  network_config: z.record(z.string(), z.unknown()).nullable().default(null),
});
export type AgentGuestConfig = z.infer<typeof AgentGuestConfig>;

/** A data disk: a sparse raw file on the host, made at first use, kept until deleted. */
export const AgentVolume = z.object({
  id: Uuid,
  name: z.string(),
  size_mib: z.number().int().min(1),
  filesystem: z.enum(['none', 'ext4']),
  read_only: z.boolean().default(false),
});
export type AgentVolume = z.infer<typeof AgentVolume>;

/** A network a VM NIC is on, as the host makes it (bridge, addresses, DHCP, DNS, masquerade). */
export const AgentNetwork = z.object({
  id: Uuid,
  kind: z.enum(['nat', 'bridged', 'isolated']),
  bridge: z.string().optional(),
  uplink: z.string().optional(),
  cidr: z.string().optional(),
  gateway: z.string().optional(),
  dhcp: z.boolean().default(false),
  dhcp_range: z.object({ start: z.string(), end: z.string() }).optional(),
  /** nat: the gateway answers DNS. */
  dns: z.boolean().default(false),
  dns_servers: z.array(z.string()).optional(),
});
export type AgentNetwork = z.infer<typeof AgentNetwork>;

/** One VM NIC: a TAP on its network's bridge. `ip` null: the LAN's DHCP gives it (bridged). */
export const AgentNic = z.object({
  nic_index: z.number().int().min(0).max(31),
  mac: z.string(),
  ip: z.string().nullable(),
  prefix_len: z.number().int().min(0).max(32).nullable(),
  gateway: z.string().nullable(),
  dns: z.array(z.string()).default([]),
  network: AgentNetwork,
});
export type AgentNic = z.infer<typeof AgentNic>;

export const AgentPortForward = z.object({
  id: Uuid,
  proto: z.enum(['tcp', 'udp']),
  host_port: z.number().int().min(1).max(65_535),
  guest_ip: z.string(),
  guest_port: z.number().int().min(1).max(65_535),
});
export type AgentPortForward = z.infer<typeof AgentPortForward>;

/** `GET /v1/host/ports/{proto}/{port}`: whether a program on the host listens on that port. */
export const AgentHostPortParams = z.object({
  proto: z.enum(['tcp', 'udp']),
  port: z.coerce.number().int().min(1).max(65_535),
});
export const AgentHostPort = AgentHostPortParams.extend({ listening: z.boolean() });
export type AgentHostPort = z.infer<typeof AgentHostPort>;

/**
 * A container VM: the rootfs is the OCI image, the initrd nqvm's container init, which runs this
 * argv (entrypoint + cmd, overrides applied) with this environment as the given user.
 */
export const AgentContainerSpec = z.object({
  argv: z.array(z.string()).min(1),
  /** `K=V`: the image's environment with the request's on top. */
  env: z.array(z.string()),
  working_dir: z.string().nullable(),
  user: z.string().nullable(),
});
export type AgentContainerSpec = z.infer<typeof AgentContainerSpec>;

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
  guest_config: AgentGuestConfig.nullable().default(null),
  volumes: z.array(AgentVolume).default([]),
  nics: z.array(AgentNic).default([]),
  port_forwards: z.array(AgentPortForward).default([]),
  container: AgentContainerSpec.nullable().default(null),
});
export type AgentVmSpec = z.infer<typeof AgentVmSpec>;

/**
 * GET /v1/vms/{id}/logs: a container's output as text lines (`<RFC 3339 time> <stream> <text>`,
 * or the text alone without timestamps); `follow` streams until the container stops.
 */
export const AgentLogsQuery = z.object({
  tail: z.coerce.number().int().min(0).max(100_000).optional(),
  follow: z.enum(['0', '1', 'true', 'false']).default('0'),
  timestamps: z.enum(['0', '1', 'true', 'false']).default('1'),
  stream: z.enum(['stdout', 'stderr', 'all']).default('all'),
});

/** GET /v1/vms/{id}/stats */
export const AgentVmStats = z.object({
  host: z.object({ pid: z.number().int(), rss_bytes: z.number().int(), cpu_seconds: z.number() }).nullable(),
  guest: z
    .object({
      mem_total_bytes: z.number().int(),
      mem_available_bytes: z.number().int(),
      load_1m: z.number(),
      uptime_s: z.number(),
      processes: z.number().int(),
    })
    .nullable(),
});
export type AgentVmStats = z.infer<typeof AgentVmStats>;

/** PUT /v1/vms/{id}: converge this VM to `desired` at `generation` (idempotent). */
export const AgentVmCommand = z.object({
  generation: z.number().int().min(1),
  desired: DesiredState,
  /** Set once per reboot request; the agent reboots when it first sees this generation. */
  reboot: z.boolean().default(false),
  stop: z
    .object({ force: z.boolean(), timeout_s: z.number().int().min(1) })
    .default({ force: false, timeout_s: 30 }),
  /**
   * Set on the generation that restores: the VM's VMM (if any) is stopped and the VM boots from
   * this snapshot of this host instead of cold. A snapshot of another VM makes this VM its
   * clone: its disk is copied from the snapshot's and its NICs are re-addressed after the restore.
   */
  restore: z.object({ snapshot_id: Uuid }).nullable().default(null),
  spec: AgentVmSpec,
});
export type AgentVmCommand = z.infer<typeof AgentVmCommand>;

/** PUT /v1/vms/{id}/snapshots/{snapshot_id}: take it (idempotent: an existing one is answered as it is). */
export const AgentSnapshotCreate = z.object({ type: SnapshotType });
export type AgentSnapshotCreate = z.infer<typeof AgentSnapshotCreate>;

/** A snapshot as the agent keeps it (`<state dir>/snapshots/<id>/`). */
export const AgentSnapshot = z.object({
  id: Uuid,
  vm_id: Uuid,
  status: z.enum(['ready', 'failed']),
  type: SnapshotType,
  /** Diff: the snapshot of the same VMM run it builds on; null for Full (and a Diff of a whole run). */
  parent_id: Uuid.nullable(),
  vmm: Vmm,
  vcpu: z.number().int(),
  mem_mib: z.number().int(),
  size_bytes: z.number().int(),
  sizes: z.object({
    state_bytes: z.number().int(),
    memory_bytes: z.number().int(),
    disk_bytes: z.number().int(),
  }),
  guest_agent: z.boolean(),
  error: z.string().max(2000).nullable(),
  created_at: Timestamp,
});
export type AgentSnapshot = z.infer<typeof AgentSnapshot>;

/** GET /v1/snapshots. DELETE /v1/snapshots/{id}: 204, or 409 SNAPSHOT_IN_USE while a VM or a Diff depends on it. */
export const AgentSnapshotList = z.object({ items: z.array(AgentSnapshot) });
export type AgentSnapshotList = z.infer<typeof AgentSnapshotList>;

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
 * epoch, as sent in TIMESTAMP_HEADER), nonce (NONCE_HEADER) and the hex SHA-256 of the body (of
 * no bytes when none).
 */
export function signingInput(
  method: string,
  pathAndQuery: string,
  timestamp: string,
  nonce: string,
  bodySha256Hex: string,
): Buffer {
  return Buffer.from(`${method.toUpperCase()}\n${pathAndQuery}\n${timestamp}\n${nonce}\n${bodySha256Hex}`);
}
