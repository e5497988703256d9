/**
 * Table types of the datastore. The same schema runs on SQLite and PostgreSQL: times are
 * RFC 3339 UTC text (sortable), JSON documents are text, booleans are 0/1 integers.
 */
import type { Generated, Insertable, Selectable, Updateable } from 'kysely';

type Bool = number;
type Json = string;
type Time = string;

export interface UsersTable {
  id: string;
  username: string;
  password_hash: string;
  role: 'viewer' | 'operator' | 'admin';
  disabled: Bool;
  created_at: Time;
  updated_at: Time;
}

export interface SessionsTable {
  id: string; // sha256 of the cookie value
  user_id: string;
  csrf_hash: string;
  created_at: Time;
  expires_at: Time;
  last_seen_at: Time;
}

export interface ApiTokensTable {
  id: string;
  user_id: string;
  name: string;
  token_hash: string;
  prefix: string;
  role: 'viewer' | 'operator' | 'admin';
  created_at: Time;
  expires_at: Time | null;
  last_used_at: Time | null;
  revoked_at: Time | null;
}

export interface JoinTokensTable {
  id: string;
  token_hash: string;
  description: string | null;
  created_by: string | null;
  created_at: Time;
  expires_at: Time;
  revoked_at: Time | null;
  last_used_at: Time | null;
}

export interface HostsTable {
  id: string;
  name: string;
  address: string;
  credential_hash: string | null;
  status: 'ready' | 'unreachable' | 'lost';
  schedulable: Bool;
  labels: Json;
  capacity: Json;
  cap_vcpu: number;
  cap_mem_mib: number;
  cap_disk_mib: number;
  alloc_vcpu: number;
  alloc_mem_mib: number;
  alloc_disk_mib: number;
  agent_version: string | null;
  last_heartbeat_at: Time | null;
  created_at: Time;
  updated_at: Time;
}

export interface VmsTable {
  id: string;
  name: string;
  state: string;
  desired_state: string;
  host_id: string | null;
  generation: number;
  vcpu: number;
  mem_mib: number;
  disk_mib: number;
  vmm: string | null;
  spec: Json;
  labels: Json;
  restart_policy: string;
  last_error: string | null;
  created_by: string | null;
  created_at: Time;
  updated_at: Time;
  observed_generation: Generated<number>;
  commanded_at: Time | null;
  pid: number | null;
  /** When the guest of the running VMM came up, as its host reported it; null while it boots. */
  guest_ready_at: Time | null;
  guest_ready_signal: 'guest-agent' | 'console' | null;
  /** A clone until it first runs: the snapshot its next boot restores (never a cold boot from its image). */
  boot_snapshot_id: string | null;
}

export interface VmLabelsTable {
  vm_id: string;
  key: string;
  value: string;
}

export interface ImagesTable {
  id: string;
  name: string;
  kind: 'kernel' | 'initrd' | 'rootfs';
  sha256: string | null;
  size_bytes: number | null;
  /** Allocated bytes of the blob (or of a path image's file): less than size_bytes when sparse. */
  stored_bytes: number | null;
  format: string | null;
  status: string;
  source: Json;
  metadata: Json;
  is_default: Bool;
  error: string | null;
  created_by: string | null;
  created_at: Time;
  updated_at: Time;
}

export interface VolumesTable {
  id: string;
  name: string;
  size_mib: number;
  filesystem: 'none' | 'ext4';
  /** The host whose disk holds it; set when a VM using it is first placed. */
  host_id: string | null;
  vm_id: string | null;
  delete_with_vm: Bool;
  status: 'available' | 'in-use' | 'deleting';
  created_by: string | null;
  created_at: Time;
  updated_at: Time;
}

export interface NetworksTable {
  id: string;
  name: string;
  kind: 'nat' | 'bridged' | 'isolated';
  cidr: string | null;
  gateway: string | null;
  config: Json;
  is_default: Bool;
  created_at: Time;
  updated_at: Time;
}

export interface VmNicsTable {
  vm_id: string;
  nic_index: number;
  network_id: string;
  mac: string;
  ip: string | null;
  /** ipam: assigned by the manager (unique per network); agent: found by the host (bridged). */
  ip_source: 'ipam' | 'agent';
}

export interface PortForwardsTable {
  id: string;
  vm_id: string;
  nic_index: number;
  proto: 'tcp' | 'udp';
  host_port: number;
  guest_port: number;
  created_at: Time;
}

export interface TemplatesTable {
  id: string;
  name: string;
  spec: Json;
  created_at: Time;
  updated_at: Time;
}

/** The non-null columns 0005 added have defaults (Generated): inserts may leave them out. */
export interface SnapshotsTable {
  id: string;
  name: string;
  description: string | null;
  /** Null once the VM is deleted; the snapshot stays usable from `spec`. */
  vm_id: string | null;
  vm_name: Generated<string>;
  /** The host whose agent keeps the files; null once that host is removed. */
  host_id: string | null;
  snapshot_type: 'Full' | 'Diff';
  /** Diff: the snapshot whose memory it builds on. */
  parent_id: string | null;
  status: 'creating' | 'ready' | 'failed' | 'deleting';
  vmm: Generated<'firecracker' | 'qemu'>;
  vcpu: Generated<number>;
  mem_mib: Generated<number>;
  size_bytes: number | null;
  /** {state_bytes, memory_bytes, disk_bytes} once ready. */
  sizes: Json | null;
  guest_agent: Generated<Bool>;
  error: string | null;
  files: Json;
  /** What a clone needs (SnapshotSpec in snapshots/snapshots.ts), image ids under the VM spec's names. */
  spec: Json;
  created_by: string | null;
  /** While `creating` or `deleting`: until when the manager asking the agent holds the work. */
  claimed_until: Time | null;
  created_at: Time;
  updated_at: Time;
}

/** A container; its VM (same id) holds what runs. See containers/containers.ts. */
export interface ContainersTable {
  id: string;
  name: string;
  /** The reference as the request gave it. */
  image: string;
  /** The rootfs image made from it, once the pull finished. */
  image_id: string | null;
  /** The linux/amd64 manifest digest the reference resolved to. */
  image_digest: string | null;
  /** {command, args, env, working_dir, user} as requested. */
  request: Json;
  /** {argv, env, working_dir, user}: what runs, from the image config and the request. */
  process: Json | null;
  /** [{host_port, container_port, protocol}] */
  ports: Json;
  vcpu: number;
  mem_mib: number;
  restart_policy: 'never' | 'on-failure' | 'always';
  network_id: string | null;
  labels: Json;
  start: Bool;
  /** creating: the create job runs; ready: it finished; failed: it failed (no VM left). */
  phase: 'creating' | 'ready' | 'failed';
  /** The status as last derived (for filtering); GET derives it afresh. */
  status: 'created' | 'starting' | 'running' | 'paused' | 'exited' | 'failed';
  /** From the agent's reports: the process runs in its VM's current run. */
  running: Generated<Bool>;
  exit_kind: 'exited' | 'signal' | 'unstartable' | null;
  exit_value: number | null;
  started_at: Time | null;
  finished_at: Time | null;
  restart_count: Generated<number>;
  last_error: string | null;
  created_by: string | null;
  claimed_until: Time | null;
  created_at: Time;
  updated_at: Time;
}

export interface OperationsTable {
  id: string;
  kind: string;
  target_type: string;
  target_id: string;
  status: 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';
  progress_percent: number;
  progress_message: string;
  error_code: string | null;
  error_message: string | null;
  params: Json;
  created_by: string | null;
  created_at: Time;
  updated_at: Time;
  finished_at: Time | null;
  /** JSON list of {name, ms}: where the finished work's time went; null when not told. */
  steps: Json | null;
}

export interface AuditEventsTable {
  id: string;
  at: Time;
  actor_type: 'user' | 'token' | 'host' | 'anonymous' | 'system';
  actor_id: string | null;
  actor_name: string | null;
  action: string;
  target_type: string | null;
  target_id: string | null;
  result: 'success' | 'failure';
  status_code: number;
  ip: string | null;
}

export interface EventsTable {
  seq: Generated<number>;
  type: string;
  resource_type: string;
  resource_id: string;
  min_role: 'viewer' | 'operator' | 'admin';
  owner_id: string | null;
  data: Json;
  created_at: Time;
}

export interface Database {
  users: UsersTable;
  sessions: SessionsTable;
  api_tokens: ApiTokensTable;
  join_tokens: JoinTokensTable;
  hosts: HostsTable;
  vms: VmsTable;
  vm_labels: VmLabelsTable;
  images: ImagesTable;
  volumes: VolumesTable;
  networks: NetworksTable;
  vm_nics: VmNicsTable;
  port_forwards: PortForwardsTable;
  templates: TemplatesTable;
  snapshots: SnapshotsTable;
  containers: ContainersTable;
  operations: OperationsTable;
  audit_events: AuditEventsTable;
  events: EventsTable;
}

export type UserRow = Selectable<UsersTable>;
export type HostRow = Selectable<HostsTable>;
export type VmRow = Selectable<VmsTable>;
export type ImageRow = Selectable<ImagesTable>;
export type VolumeRow = Selectable<VolumesTable>;
export type NetworkRow = Selectable<NetworksTable>;
export type VmNicRow = Selectable<VmNicsTable>;
export type PortForwardRow = Selectable<PortForwardsTable>;
export type NewVm = Insertable<VmsTable>;
export type VmUpdate = Updateable<VmsTable>;
export type OperationRow = Selectable<OperationsTable>;
export type SnapshotRow = Selectable<SnapshotsTable>;
export type ContainerRow = Selectable<ContainersTable>;
export type ApiTokenRow = Selectable<ApiTokensTable>;
export type JoinTokenRow = Selectable<JoinTokensTable>;
export type AuditRow = Selectable<AuditEventsTable>;
