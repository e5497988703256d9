/**
 * Request and response schemas of the public API. Each schema validates input at the edge,
 * gives its TypeScript type (`z.infer`) and feeds the OpenAPI document.
 */
import { z } from 'zod';
import { HostInterface, MAX_HOST_INTERFACES } from './interface-names';

export const Uuid = z.uuid();
export const Timestamp = z.string().meta({ format: 'date-time' });

/** Resource names: reach no host path (those derive from ids), but stay URL- and shell-safe. */
export const Name = z
  .string()
  .regex(
    /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/,
    'letters, digits, "-", "_" or "." (1-63), starting alphanumeric',
  );

export const Labels = z
  .record(
    z.string().regex(/^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$/, 'label keys: lowercase, digits, . _ / -'),
    z.string().max(63),
  )
  .refine((r) => Object.keys(r).length <= 32, 'at most 32 labels');

export const Role = z.enum(['viewer', 'operator', 'admin']);
export type Role = z.infer<typeof Role>;

export const VmState = z.enum([
  'creating',
  'starting',
  'running',
  'pausing',
  'paused',
  'stopping',
  'stopped',
  'failed',
  'deleting',
  'unknown',
]);
export type VmState = z.infer<typeof VmState>;
export const DesiredState = z.enum(['running', 'stopped', 'paused']);
export type DesiredState = z.infer<typeof DesiredState>;
export const RestartPolicy = z.enum(['never', 'on-failure', 'always']);
export const Vmm = z.enum(['firecracker', 'qemu']);

// ---- lists and errors -------------------------------------------------------------------

export const ListQuery = z.object({
  limit: z.coerce.number().int().min(1).max(500).default(50),
  cursor: z.string().max(512).optional(),
});

export function listOf<T extends z.ZodType>(item: T) {
  return z.object({ items: z.array(item), next: z.string().nullable() });
}

export const ErrorResponse = z.object({
  error: z.object({
    code: z.string(),
    message: z.string(),
    details: z.record(z.string(), z.unknown()).optional(),
  }),
});

export const IdParams = z.object({ id: Uuid });
export const DeletedResponse = z.object({ id: Uuid, deleted: z.literal(true) });

// ---- VMs --------------------------------------------------------------------------------

export const GuestConfigInput = z.strictObject({
  mode: z.enum(['auto', 'cloud-init', 'inject', 'none']).default('auto'),
  username: z
    .string()
    .regex(/^[a-z_][a-z0-9_-]{0,31}$/, 'a POSIX user name')
    .optional(),
  password: z.string().min(1).max(256).optional(),
  ssh_authorized_keys: z.array(z.string().max(16_384)).max(32).optional(),
  hostname: z
    .string()
    .regex(/^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/, 'a host name label')
    .optional(),
  user_data: z.string().max(65_536).optional(),
});

export const GuestConfig = z.object({
  mode: z.enum(['auto', 'cloud-init', 'inject', 'none']),
  username: z.string().nullable(),
  has_password: z.boolean(),
  ssh_authorized_keys: z.array(z.string()),
  hostname: z.string().nullable(),
  has_user_data: z.boolean(),
});

/** Data disks one VM takes at most. */
export const MAX_VM_VOLUMES = 16;

export const VmNetworkInput = z.strictObject({ network_id: Uuid, ip: z.ipv4().optional() });

export const VmCreate = z.strictObject({
  name: Name,
  vcpu: z.number().int().min(1).max(32).default(1),
  mem_mib: z.number().int().min(64).max(262_144).default(256),
  kernel_image_id: Uuid.optional(),
  rootfs_image_id: Uuid.optional(),
  initrd_image_id: Uuid.optional(),
  disk_size_mib: z.number().int().min(16).max(4_194_304).optional(),
  boot_args: z.string().max(2048).optional(),
  vmm: Vmm.optional(),
  networks: z
    .array(VmNetworkInput)
    .max(8)
    .optional()
    .describe('one NIC per entry; omitted: one NIC on the default network, if there is one; []: none'),
  volumes: z
    .array(z.strictObject({ volume_id: Uuid }))
    .max(MAX_VM_VOLUMES)
    .refine((v) => new Set(v.map((x) => x.volume_id)).size === v.length, 'each volume at most once')
    .default([])
    .describe('available volumes to attach (by id)'),
  guest_config: GuestConfigInput.optional(),
  restart_policy: RestartPolicy.default('never'),
  labels: Labels.default({}),
  start: z.boolean().default(true),
});
export type VmCreate = z.infer<typeof VmCreate>;

export const VmPatch = z.strictObject({
  name: Name.optional(),
  labels: Labels.optional(),
  restart_policy: RestartPolicy.optional(),
  vcpu: z.number().int().min(1).max(32).optional(),
  mem_mib: z.number().int().min(64).max(262_144).optional(),
});
export type VmPatch = z.infer<typeof VmPatch>;

export const VmStop = z.strictObject({
  force: z.boolean().default(false),
  timeout_s: z.number().int().min(1).max(3600).default(30),
});

/** What said a guest is up: its guest agent's hello, or its console (a login prompt, cloud-init done). */
export const GuestReadySignal = z.enum(['guest-agent', 'console']);
export type GuestReadySignal = z.infer<typeof GuestReadySignal>;

export const Vm = z.object({
  id: Uuid,
  name: z.string(),
  state: VmState,
  desired_state: DesiredState,
  host_id: Uuid.nullable(),
  vcpu: z.number().int(),
  mem_mib: z.number().int(),
  kernel_image_id: Uuid.nullable(),
  rootfs_image_id: Uuid.nullable(),
  initrd_image_id: Uuid.nullable(),
  disk_size_mib: z.number().int().nullable(),
  boot_args: z.string().nullable(),
  vmm: Vmm.nullable(),
  networks: z.array(z.object({ network_id: Uuid, ip: z.string().nullable(), mac: z.string().nullable() })),
  volumes: z.array(z.object({ id: Uuid, name: z.string(), size_mib: z.number().int() })),
  guest_config: GuestConfig,
  restart_policy: RestartPolicy,
  labels: z.record(z.string(), z.string()),
  generation: z.number().int(),
  last_error: z.string().nullable(),
  guest_ready_at: Timestamp.nullable().describe(
    'when the guest of the running VM came up (its guest agent answered, or its console showed a ' +
      'login prompt or cloud-init finishing); null while it boots, or when it is not running',
  ),
  guest_ready_signal: GuestReadySignal.nullable().describe('what said the guest is up'),
  created_at: Timestamp,
  updated_at: Timestamp,
});
export type Vm = z.infer<typeof Vm>;

export const VmListQuery = ListQuery.extend({
  state: VmState.optional(),
  host_id: Uuid.optional(),
  name: z.string().max(63).optional().describe('case-sensitive name prefix'),
  label: z
    .string()
    .regex(/^[a-z0-9._/-]+=[^,]*$/, 'key=value')
    .optional(),
});

export const DeleteVmQuery = z.object({
  force: z.enum(['true', 'false']).optional(),
  delete_volumes: z
    .enum(['true', 'false'])
    .optional()
    .describe('delete the attached volumes too (otherwise only those with delete_with_vm)'),
});

// ---- operations -------------------------------------------------------------------------

export const OperationStatus = z.enum(['queued', 'running', 'succeeded', 'failed', 'cancelled']);
export type OperationStatus = z.infer<typeof OperationStatus>;

/** One named step of the work and how long it took (a VM's boot: prepare-disk, boot-vmm, ...). */
export const OperationStep = z.object({
  name: z.string().max(64),
  ms: z.number().min(0).describe('milliseconds, monotonic clock of the host that did it'),
});
export type OperationStep = z.infer<typeof OperationStep>;

export const Operation = z.object({
  id: Uuid,
  kind: z.string(),
  target: z.object({ type: z.string(), id: z.string() }),
  status: OperationStatus,
  progress: z.object({ percent: z.number().min(0).max(100), message: z.string() }),
  error: z.object({ code: z.string(), message: z.string() }).nullable(),
  created_by: z.string().nullable(),
  created_at: Timestamp,
  updated_at: Timestamp,
  steps: z
    .array(OperationStep)
    .describe(
      "where the time went, in order, once it finished: a start's boot steps as the VM's host timed them " +
        '(`boot-vmm.<step>` are parts of `boot-vmm`); empty for other operations',
    ),
});
export type Operation = z.infer<typeof Operation>;

/** Time-ordered logs (operations, audit) list newest first unless asked otherwise. */
const LogOrder = z.enum(['desc', 'asc']).default('desc').describe('desc: newest first; asc: oldest first');

export const OperationListQuery = ListQuery.extend({
  order: LogOrder,
  status: OperationStatus.optional(),
  kind: z.string().max(64).optional(),
  target_id: z.string().max(64).optional(),
});

export const OperationWaitQuery = z.object({ wait: z.coerce.number().min(0).max(60).optional() });

/** Answer of every long-running action: the resource as it is now plus the operation. */
export const VmActionResponse = z.object({ vm: Vm, operation: Operation });

// ---- hosts ------------------------------------------------------------------------------

export const HostStatus = z.enum(['ready', 'unreachable', 'lost']);

export const DriverReport = z.object({
  kind: Vmm,
  available: z.boolean(),
  version: z.string().nullable(),
  kvm: z.boolean(),
  features: z.array(z.string()).max(64).default([]),
  reason: z.string().max(1000).optional(),
});

export const HostCapacity = z.object({
  vcpu: z.number().int().min(0),
  mem_mib: z.number().int().min(0),
  disk_mib: z.number().int().min(0),
  /** Free space on that file system when measured (each heartbeat); absent from older agents. */
  disk_free_mib: z.number().int().min(0).optional(),
  kvm: z.boolean(),
  drivers: z.array(DriverReport).max(4),
  /** The host's interfaces a network can name (bridge, uplink); where bridged networks are available. */
  interfaces: z.array(HostInterface).max(MAX_HOST_INTERFACES).default([]),
});

const HostResource = z.object({
  capacity: z.number().int().describe('what the scheduler places up to'),
  allocated: z
    .number()
    .int()
    .describe(
      'reserved by the VMs placed on the host, stopped ones included (they keep their place until deleted)',
    ),
  free: z.number().int().describe('capacity - allocated (never below 0): what a new VM can have here'),
});

/** The host's room as the scheduler counts it: the one source of every capacity figure shown. */
export const HostResources = z
  .object({
    vcpu: HostResource.extend({
      cores: z.number().int().describe('the cores the agent offers (capacity.vcpu)'),
      overcommit: z
        .number()
        .describe('vCPUs placed per core (NQVM_VCPU_OVERCOMMIT); capacity = floor(cores x overcommit)'),
    }),
    mem_mib: HostResource.describe('never overcommitted'),
    disk_mib: HostResource.describe(
      "never overcommitted; a VM reserves its whole disk (disk_size_mib, or its root image's size)",
    ),
  })
  .describe('what the scheduler places against: capacity, allocated and free vCPU, memory and disk');

export const Host = z.object({
  id: Uuid,
  name: z.string(),
  address: z.string(),
  status: HostStatus,
  schedulable: z.boolean(),
  credential_revoked: z.boolean(),
  labels: z.record(z.string(), z.string()),
  capacity: HostCapacity,
  allocated: z.object({ vcpu: z.number().int(), mem_mib: z.number().int(), disk_mib: z.number().int() }),
  resources: HostResources,
  agent_version: z.string().nullable(),
  last_heartbeat_at: Timestamp.nullable(),
  created_at: Timestamp,
  updated_at: Timestamp,
});
export type Host = z.infer<typeof Host>;

export const HostListQuery = ListQuery.extend({ status: HostStatus.optional() });

export const JoinTokenCreate = z.strictObject({
  ttl_s: z
    .number()
    .int()
    .min(60)
    .max(30 * 86_400)
    .default(3600),
  description: z.string().max(200).optional(),
});

export const JoinToken = z.object({
  id: Uuid,
  description: z.string().nullable(),
  created_at: Timestamp,
  expires_at: Timestamp,
  revoked_at: Timestamp.nullable(),
  last_used_at: Timestamp.nullable(),
});
export const JoinTokenCreated = JoinToken.extend({
  token: z.string().describe('shown once; give it to `nqvm agent --join-token`'),
});

export const AgentRegister = z.strictObject({
  name: Name,
  address: z.url().max(300),
  agent_version: z.string().max(64),
  capacity: HostCapacity,
  labels: Labels.default({}),
});

export const AgentRegistered = z.object({
  host_id: Uuid,
  credential: z.string().describe('shown once; the agent stores it'),
  heartbeat_interval_s: z.number(),
  manager_public_key: z.string().describe('PEM; the agent verifies the manager requests signed with it'),
});

/** What an agent reports per VM (in heartbeats). */
export const AgentVmState = z.enum([
  'starting',
  'running',
  'pausing',
  'paused',
  'stopping',
  'stopped',
  'failed',
  'deleted',
]);
export type AgentVmState = z.infer<typeof AgentVmState>;

export const AgentVmReport = z.object({
  id: Uuid,
  generation: z.number().int().min(0),
  state: AgentVmState,
  error: z.string().max(2000).nullable().default(null),
  vmm: Vmm.nullable().default(null),
  pid: z.number().int().nullable().default(null),
  /** Addresses the agent found for NICs the manager gave none (bridged networks). */
  nics: z
    .array(z.object({ nic_index: z.number().int().min(0).max(31), ip: z.ipv4().nullable() }))
    .max(32)
    .optional(),
  /** Container VMs: the process the init runs, as the guest agent reported it. */
  container: z
    .object({
      /** Whether the process has started in the VM's current run (and not exited). */
      running: z.boolean(),
      exit: z
        .object({ kind: z.enum(['exited', 'signal', 'unstartable']), value: z.number().int() })
        .nullable(),
      started_at: Timestamp.nullable(),
      finished_at: Timestamp.nullable(),
      /** Starts by the restart policy since the container was created. */
      restarts: z.number().int().min(0),
    })
    .optional(),
  /** When the guest of the running VMM came up and what said so; null while it boots (or is down). */
  guest_ready: z.object({ at: Timestamp, signal: GuestReadySignal }).nullable().optional(),
  /** The VM ended by itself and its restart policy boots it again shortly: it still wants to run. */
  restarting: z.boolean().optional(),
  /** How long each step of the running VMM's boot took (absent for a VMM adopted after a restart). */
  boot_steps: z.array(OperationStep).max(64).optional(),
});
export type AgentVmReport = z.infer<typeof AgentVmReport>;

export const AgentHeartbeat = z.strictObject({
  capacity: HostCapacity,
  agent_version: z.string().max(64).optional(),
  vms: z.array(AgentVmReport).max(10_000),
});

export const AgentHeartbeatResponse = z.object({ heartbeat_interval_s: z.number() });

// ---- users, sessions, tokens, audit -----------------------------------------------------

export const Username = z.string().regex(/^[a-zA-Z0-9][a-zA-Z0-9_.@-]{0,63}$/, 'letters, digits, . _ @ -');
export const Password = z.string().min(8, 'at least 8 characters').max(1024);

export const User = z.object({
  id: Uuid,
  username: z.string(),
  role: Role,
  disabled: z.boolean(),
  created_at: Timestamp,
  updated_at: Timestamp,
});
export type User = z.infer<typeof User>;

export const UserCreate = z.strictObject({ username: Username, password: Password, role: Role });
export const UserPatch = z.strictObject({
  role: Role.optional(),
  password: Password.optional(),
  disabled: z.boolean().optional(),
});

export const Login = z.strictObject({ username: z.string().max(64), password: z.string().max(1024) });
export const LoginResponse = z.object({ user: User, csrf_token: z.string() });
export const PasswordChange = z.strictObject({
  current_password: z.string().max(1024),
  new_password: Password,
});

export const ApiToken = z.object({
  id: Uuid,
  user_id: Uuid,
  name: z.string(),
  prefix: z.string().describe('the first characters of the token, to recognise it'),
  role: Role,
  created_at: Timestamp,
  expires_at: Timestamp.nullable(),
  last_used_at: Timestamp.nullable(),
  revoked_at: Timestamp.nullable(),
});
export const ApiTokenCreate = z.strictObject({
  name: Name,
  role: Role.optional().describe("defaults to the owner's role; never higher"),
  expires_in_days: z.number().int().min(1).max(3650).nullable().default(90),
});
export const ApiTokenCreated = ApiToken.extend({ token: z.string().describe('shown once') });
export const TokenListQuery = ListQuery.extend({ user_id: Uuid.optional() });

export const AuditEvent = z.object({
  id: Uuid,
  at: Timestamp,
  actor: z.object({
    type: z.enum(['user', 'token', 'host', 'anonymous', 'system']),
    id: z.string().nullable(),
    name: z.string().nullable(),
  }),
  action: z.string(),
  target: z.object({ type: z.string(), id: z.string() }).nullable(),
  result: z.enum(['success', 'failure']),
  status_code: z.number().int(),
  ip: z.string().nullable(),
});
/** An RFC 3339 time in a query (any offset; the manager compares it in UTC). */
const QueryTime = z.iso.datetime({ offset: true });

export const AuditListQuery = ListQuery.extend({
  order: LogOrder,
  action: z.string().max(100).optional().describe('exact action, e.g. vm.create'),
  actor_id: z.string().max(64).optional().describe('user, token or host id'),
  actor_name: z.string().max(64).optional().describe('user name (also for their API tokens) or host name'),
  actor_type: AuditEvent.shape.actor.shape.type.optional(),
  target_type: z.string().max(64).optional().describe('e.g. vm, user'),
  target_id: z.string().max(64).optional(),
  result: AuditEvent.shape.result.optional(),
  since: QueryTime.optional().describe('events at or after this time'),
  until: QueryTime.optional().describe('events before this time'),
});
export type AuditListQuery = z.infer<typeof AuditListQuery>;

export const Health = z.object({ status: z.literal('ok'), version: z.string() });
