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
  format: string | null;
  status: string;
  source: Json;
  metadata: Json;
  is_default: Bool;
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

export interface TemplatesTable {
  id: string;
  name: string;
  spec: Json;
  created_at: Time;
  updated_at: Time;
}

export interface SnapshotsTable {
  id: string;
  name: string;
  vm_id: string | null;
  host_id: string | null;
  snapshot_type: 'Full' | 'Diff';
  status: string;
  size_bytes: number | null;
  files: Json;
  spec: Json;
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
  networks: NetworksTable;
  templates: TemplatesTable;
  snapshots: SnapshotsTable;
  operations: OperationsTable;
  audit_events: AuditEventsTable;
  events: EventsTable;
}

export type UserRow = Selectable<UsersTable>;
export type HostRow = Selectable<HostsTable>;
export type VmRow = Selectable<VmsTable>;
export type NewVm = Insertable<VmsTable>;
export type VmUpdate = Updateable<VmsTable>;
export type OperationRow = Selectable<OperationsTable>;
export type ApiTokenRow = Selectable<ApiTokensTable>;
export type JoinTokenRow = Selectable<JoinTokensTable>;
export type AuditRow = Selectable<AuditEventsTable>;
