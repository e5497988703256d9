/**
 * Containers: an OCI image run as its own microVM. The image becomes the VM's root file system
 * (pulled and converted once per digest), nqvm's small init runs the image's entrypoint and
 * command, and the VM stops when that process exits. No Docker daemon, nothing listening on
 * the guest's network: logs and exec travel over a host-to-guest channel.
 */
import { z } from 'zod';
import { AgentVmStats } from './agent-protocol';
import { Arg, EnvName, ExecRequest, ExecResult, GuestDir, GuestUser } from './exec';
import { Labels, ListQuery, Name, Operation, RestartPolicy, Timestamp, Uuid, VmState } from './schemas';

export const ContainerStatus = z
  .enum(['created', 'starting', 'running', 'paused', 'exited', 'failed'])
  .describe(
    'created: defined, never started (start=false). starting: being pulled or created, its VM booting, or the VM ' +
      'up but the process not started yet. running: the process runs. paused: its VM is paused. exited: the process ' +
      'ended (its VM stopped, or is stopping or being restarted by the policy). failed: the create failed (see ' +
      'last_error), the VM failed, or the process could not start.',
  );
export type ContainerStatus = z.infer<typeof ContainerStatus>;

export const ContainerPort = z.strictObject({
  host_port: z.number().int().min(1).max(65_535),
  container_port: z.number().int().min(1).max(65_535),
  protocol: z.enum(['tcp', 'udp']).default('tcp'),
});
export type ContainerPort = z.infer<typeof ContainerPort>;

export const RegistryCredentials = z.strictObject({
  username: z.string().min(1).max(256),
  password: z.string().min(1).max(8192).describe('used for this pull only; never stored'),
});

export const ContainerCreate = z.strictObject({
  name: Name,
  image: z
    .string()
    .min(1)
    .max(512)
    .describe('an OCI reference, e.g. docker.io/library/alpine:3.20 or registry.local:5000/app@sha256:...'),
  command: z
    .array(Arg)
    .max(256)
    .optional()
    .describe("replaces the image's entrypoint (as docker run --entrypoint, but a whole argv)"),
  args: z.array(Arg).max(1024).optional().describe("replaces the image's cmd"),
  env: z
    .record(EnvName, z.string().max(32_768))
    .refine((e) => Object.keys(e).length <= 256, 'at most 256 variables')
    .default({})
    .describe("added to the image's environment (same name: this value wins)"),
  working_dir: GuestDir.optional(),
  user: GuestUser.optional(),
  ports: z
    .array(ContainerPort)
    .max(32)
    .refine(
      (p) => new Set(p.map((x) => `${x.protocol ?? 'tcp'}/${x.host_port}`)).size === p.length,
      'each host port at most once per protocol',
    )
    .default([]),
  vcpu: z.number().int().min(1).max(32).default(1),
  mem_mib: z.number().int().min(64).max(262_144).default(256),
  restart_policy: z
    .preprocess((v) => (v === 'no' ? 'never' : v), RestartPolicy)
    .default('never')
    .describe('never (also "no"), on-failure (a non-zero exit), always'),
  network_id: Uuid.optional().describe('the network of its NIC; default: the default network'),
  registry_credentials: RegistryCredentials.optional(),
  labels: Labels.default({}),
  start: z.boolean().default(true),
});
export type ContainerCreate = z.infer<typeof ContainerCreate>;

export const Container = z.object({
  id: Uuid,
  name: z.string(),
  image: z.string(),
  /** The root file system image made from it; null until the pull finished. */
  image_id: Uuid.nullable(),
  image_digest: z.string().nullable(),
  command: z.array(z.string()).nullable(),
  args: z.array(z.string()).nullable(),
  /** What runs: entrypoint + cmd after the overrides; null until the image config is known. */
  effective_command: z.array(z.string()).nullable(),
  env: z
    .record(z.string(), z.string())
    .describe("the process's environment: the image's with the request's on top (PATH defaulted)"),
  working_dir: z.string().nullable().describe("as requested, else the image's"),
  user: z.string().nullable().describe("as requested, else the image's"),
  ports: z.array(ContainerPort.required()),
  vcpu: z.number().int(),
  mem_mib: z.number().int(),
  restart_policy: RestartPolicy,
  status: ContainerStatus,
  exit_code: z
    .number()
    .int()
    .nullable()
    .describe(
      'the last exit of the process: its exit status; 128+N when killed by signal N (as a shell reports it); for a ' +
        'process that could not start, the code the init reported (125: could not run it, 126: not executable, ' +
        '127: not found). Null until it has exited, and when its VM was killed before the process could tell.',
    ),
  /** Exits of the process that the restart policy answered with a new start. */
  restart_count: z.number().int(),
  started_at: Timestamp.nullable(),
  finished_at: Timestamp.nullable(),
  /** The microVM it runs in (its id is the container's). */
  vm_id: Uuid,
  vm_state: VmState.describe('creating while the image is pulled (no VM yet); failed when the create failed'),
  host_id: Uuid.nullable(),
  ip: z.string().nullable(),
  network_id: Uuid.nullable(),
  last_error: z.string().nullable(),
  labels: z.record(z.string(), z.string()),
  created_at: Timestamp,
  updated_at: Timestamp,
});
export type Container = z.infer<typeof Container>;

export const ContainerListQuery = ListQuery.extend({
  status: ContainerStatus.optional(),
  name: z.string().max(63).optional().describe('case-sensitive name prefix'),
});

export const ContainerActionResponse = z.object({ container: Container, operation: Operation });

export const ContainerStop = z.strictObject({
  timeout_s: z.number().int().min(0).max(3600).default(10).describe('SIGTERM, then SIGKILL after this long'),
});

export const ContainerLogsQuery = z.object({
  tail: z.coerce.number().int().min(0).max(100_000).optional().describe('the last N lines only'),
  follow: z
    .enum(['true', 'false'])
    .default('false')
    .describe('keep streaming new lines until the container stops'),
  timestamps: z.enum(['true', 'false']).default('true'),
  stream: z.enum(['stdout', 'stderr', 'all']).default('all'),
});

/** POST /api/v1/containers/{id}/exec: as POST /api/v1/vms/{id}/exec, in the container's environment. */
export const ContainerExec = ExecRequest;
export type ContainerExec = ExecRequest;
export const ContainerExecResult = ExecResult;
export type ContainerExecResult = ExecResult;

export const ContainerStats = z.object({
  id: Uuid,
  status: ContainerStatus,
  /** The VMM process on the host. */
  host: AgentVmStats.shape.host,
  /** Inside the guest, from its /proc. */
  guest: AgentVmStats.shape.guest,
  at: Timestamp,
});
export type ContainerStats = z.infer<typeof ContainerStats>;
