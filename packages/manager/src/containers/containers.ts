/**
 * Containers: an OCI image run as its own microVM. A container's VM has the container's id and
 * name (labelled `nqvm.container=<name>`), the image's ext4 as its root file system (pulled and
 * converted once per manifest digest), nqvm's container init as its initrd and the default
 * kernel; its stored spec carries what the init runs, so the host gets `spec.container`.
 *
 * Create checks what it can at once (names, network, ports, the init, the reference at its
 * registry) and records nothing when one fails; then a background job pulls the image (or reuses
 * it), creates the VM, its port forwards, and starts it. A job that fails leaves no VM behind;
 * the container row stays `failed` with the reason until it is deleted. Otherwise the row goes
 * with its VM. Its status is derived from the VM and the process state the agent reports.
 */
import { randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import {
  type AgentContainerSpec,
  type AgentVmReport,
  type Container,
  type ContainerCreate,
  type ContainerExec,
  type ContainerExecResult,
  type ContainerPort,
  type ContainerStats,
  type ContainerStatus,
  NqvmError,
  type OciImageConfig,
  type Operation,
  type Vm,
  type VmCreate,
  type VmState,
} from '@nqvm/api';
import { isoAfter, nowIso } from '../clock';
import { type Datastore, isUniqueViolation } from '../db/datastore';
import { paginate } from '../db/pagination';
import type { ContainerRow, VmRow } from '../db/schema';
import type { EventBus } from '../events/bus';
import type { AgentClient } from '../hosts/agent-client';
import type { Hosts } from '../hosts/hosts';
import type { ImageService } from '../images/image-service';
import { resolveOciImage } from '../images/oci/index';
import { checkPortFree, type PortForwards } from '../networks/port-forwards';
import type { Operations } from '../operations/operations';
import type { Reconciler } from '../reconciler/reconciler';
import type { VmAction } from '../vms/state-machine';
import { execInVm } from '../vms/vm-exec';
import type { Vms } from '../vms/vms';

/** The initrd image `nqvm up` (and test stacks) register: nqvm's init of container VMs. */
export const CONTAINER_INIT_IMAGE = 'builtin-container-init';
/** The label a container's VM carries, valued with the container's name. */
export const CONTAINER_LABEL = 'nqvm.container';
export const CREATE_KIND = 'container.create';

/** The registry must answer the create request's checks within this time. */
const RESOLVE_TIMEOUT_MS = 10_000;
/** The manager running a create job renews its claim this often... */
const CLAIM_RENEW_MS = 5_000;
/** ...and a claim not renewed for this long means that manager stopped. */
const CLAIM_MS = 15_000;
/** Docker's default PATH, for images that set none. */
const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** The last output kept in a failed start's reason. */
const FAILED_OUTPUT_BYTES = 1000;

/** What the request asked of the process (kept as given). */
interface ContainerRequest {
  command: string[] | null;
  args: string[] | null;
  env: Record<string, string>;
  working_dir: string | null;
  user: string | null;
}

/** What runs: the image config with the request's overrides applied. */
export interface ContainerProcess {
  argv: string[];
  env: Record<string, string>;
  working_dir: string | null;
  user: string | null;
}

/** The create job was cancelled (its operation, or a delete); the reason is the message. */
class CreateCancelled extends Error {}
/**
 * A create step that failed with a code for its operation only (never an HTTP answer, as the
 * reconciler's VM_FAILED): CONTAINER_START_FAILED, VM_FAILED, or the import's own code.
 */
class CreateStepError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}
/** The manager is stopping: the job ends without undoing anything; the sweep fails it later. */
class ManagerStopping extends Error {}

/**
 * Docker's rules: `command` replaces the entrypoint and drops the image's cmd unless `args` are
 * given; `args` replace the cmd. The environment is the image's with the request's on top (PATH
 * defaulted), working dir and user as requested, else the image's.
 *
 * @example
 * containerProcess({ command: null, args: ['-v'], env: {}, working_dir: null, user: null },
 *   { entrypoint: ['/bin/tool'], cmd: ['--serve'], env: [], working_dir: null, user: null, exposed_ports: [] });
 * // { argv: ['/bin/tool', '-v'], env: { PATH: '/usr/local/sbin:...' }, working_dir: null, user: null }
 */
export function containerProcess(req: ContainerRequest, config: OciImageConfig): ContainerProcess {
  const argv = [
    ...(req.command ?? config.entrypoint ?? []),
    ...(req.args ?? (req.command ? [] : (config.cmd ?? []))),
  ];
  if (!argv.length)
    throw new NqvmError('CONTAINER_COMMAND_MISSING', 'the image defines no entrypoint or cmd; give command', {
      field: 'command',
    });
  const env: Record<string, string> = {};
  for (const kv of config.env) {
    const eq = kv.indexOf('=');
    if (eq > 0) env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  Object.assign(env, req.env);
  env.PATH ??= DEFAULT_PATH;
  return {
    argv,
    env,
    working_dir: req.working_dir ?? config.working_dir,
    user: req.user ?? config.user,
  };
}

/** A shell's view of an exit: the status, 128+N for signal N, the init's code when it could not start. */
export function exitCodeOf(kind: ContainerRow['exit_kind'], value: number | null): number | null {
  if (kind === null || value === null) return null;
  return kind === 'signal' ? 128 + value : value;
}

/** What a container's view needs of its VM (also of one just removed). */
interface VmFacts {
  state: VmState;
  host_id: string | null;
  updated_at: string;
  network_id: string | null;
  ip: string | null;
}

/** The status of a container from its row and its VM (see ContainerStatus in @nqvm/api). */
export function containerStatus(row: ContainerRow, vm: Pick<VmFacts, 'state'> | undefined): ContainerStatus {
  if (row.phase === 'failed') return 'failed';
  const exited: ContainerStatus | null =
    row.exit_kind === null ? null : row.exit_kind === 'unstartable' ? 'failed' : 'exited';
  const ended = (): ContainerStatus => exited ?? (row.started_at ? 'exited' : 'created');
  if (!vm) return row.start ? 'starting' : 'created';
  switch (vm.state) {
    case 'failed':
      return 'failed';
    case 'creating':
    case 'starting':
      return 'starting';
    case 'running':
    case 'pausing':
      return row.running ? 'running' : (exited ?? 'starting');
    case 'paused':
      return 'paused';
    case 'stopped':
      // Defined, its forwards being added, about to be started by the create job.
      if (row.phase === 'creating' && row.start && !exited) return 'starting';
      return ended();
    default:
      // stopping, deleting, unknown (its host does not answer): as the process was last seen.
      return row.running ? 'running' : ended();
  }
}

export function toContainer(row: ContainerRow, vm: VmFacts | undefined): Container {
  const req = JSON.parse(row.request) as ContainerRequest;
  const proc = row.process === null ? null : (JSON.parse(row.process) as ContainerProcess);
  return {
    id: row.id,
    name: row.name,
    image: row.image,
    image_id: row.image_id,
    image_digest: row.image_digest,
    command: req.command,
    args: req.args,
    effective_command: proc?.argv ?? null,
    env: proc?.env ?? req.env,
    working_dir: proc ? proc.working_dir : req.working_dir,
    user: proc ? proc.user : req.user,
    ports: JSON.parse(row.ports),
    vcpu: row.vcpu,
    mem_mib: Number(row.mem_mib),
    restart_policy: row.restart_policy,
    status: containerStatus(row, vm),
    exit_code: exitCodeOf(row.exit_kind, row.exit_value),
    restart_count: row.restart_count,
    started_at: row.started_at,
    finished_at: row.finished_at,
    vm_id: row.id,
    vm_state: vm?.state ?? (row.phase === 'failed' ? 'failed' : 'creating'),
    host_id: vm?.host_id ?? null,
    ip: vm?.ip ?? null,
    network_id: vm ? vm.network_id : row.network_id,
    last_error: row.last_error,
    labels: JSON.parse(row.labels),
    created_at: row.created_at,
    updated_at: vm && vm.updated_at > row.updated_at ? vm.updated_at : row.updated_at,
  };
}

export interface ContainerListFilter {
  limit: number;
  cursor?: string;
  status?: ContainerStatus;
  name?: string;
}

export interface ContainersDeps {
  store: Datastore;
  bus: EventBus;
  ops: Operations;
  vms: Vms;
  images: ImageService;
  portForwards: PortForwards;
  hosts: Hosts;
  agents: AgentClient;
  reconciler: Reconciler;
  log: { warn: (o: object, m: string) => void };
}

/** What a create job needs beyond the row; the credentials live here, in memory, only. */
interface CreateJob {
  id: string;
  actor: string | null;
  pinned: string;
  digest: string;
  kernelId: string;
  initId: string;
  credentials?: { username: string; password: string };
}

/** One pull of a manifest digest, shared by the containers that need it. */
interface Pull {
  importOpId: string | null;
  done: Promise<{ id: string; name: string; reused: boolean }>;
}

export class Containers {
  /** Create jobs this manager runs, by container id. */
  private readonly jobs = new Map<string, { abort: AbortController; done: Promise<void> }>();
  /** Pulls in flight in this manager, by manifest digest. */
  private readonly pulls = new Map<string, Pull>();

  constructor(private readonly d: ContainersDeps) {
    d.vms.onChange((vm) => this.guard('follow its VM', () => this.refresh(vm.id)));
    d.vms.onRemove((vm) => this.guard('follow its VM', () => this.vmRemoved(vm)));
    d.reconciler.onReport((vm, r) => this.guard('apply a report', () => this.applyReport(vm, r)));
    d.ops.onCancel(CREATE_KIND, async (op) => {
      this.jobs.get(op.target_id)?.abort.abort(new CreateCancelled('the create was cancelled'));
    });
  }

  // ---- reads ----------------------------------------------------------------------------

  async list(f: ContainerListFilter): Promise<{ items: Container[]; next: string | null }> {
    let q = this.d.store.db.selectFrom('containers').selectAll();
    if (f.status) q = q.where('status', '=', f.status);
    if (f.name) q = q.where('name', '>=', f.name).where('name', '<', `${f.name}\uffff`);
    const page = await paginate(q, 'created_at', f);
    return { items: await this.views(page.items), next: page.next };
  }

  async findRow(id: string): Promise<ContainerRow | undefined> {
    return this.d.store.db.selectFrom('containers').selectAll().where('id', '=', id).executeTakeFirst();
  }

  async getRow(id: string): Promise<ContainerRow> {
    const row = await this.findRow(id);
    if (!row) throw new NqvmError('CONTAINER_NOT_FOUND', { id });
    return row;
  }

  async get(id: string): Promise<Container> {
    return (await this.views([await this.getRow(id)]))[0]!;
  }

  // ---- create ---------------------------------------------------------------------------

  /**
   * Checks the request (a few seconds at most: the registry is asked for the manifest and the
   * config), records the container `creating` and starts its background job; answers its
   * `container.create` operation. A refusal records nothing.
   */
  async create(
    input: ContainerCreate,
    actor: string | null,
  ): Promise<{ container: Container; operation: Operation }> {
    await this.checkNameFree(input.name);
    const networkId = await this.networkOf(input);
    await this.checkPortsFree(input.ports);
    const boot = await this.bootImages();
    const image = await this.resolve(input);
    const request: ContainerRequest = {
      command: input.command ?? null,
      args: input.args ?? null,
      env: input.env,
      working_dir: input.working_dir ?? null,
      user: input.user ?? null,
    };
    const proc = containerProcess(request, image.config);
    const at = nowIso();
    const row: ContainerRow = {
      id: randomUUID(),
      name: input.name,
      image: input.image,
      image_id: null,
      image_digest: image.manifestDigest,
      request: JSON.stringify(request),
      process: JSON.stringify(proc),
      ports: JSON.stringify(
        input.ports.map((p) => ({
          host_port: p.host_port,
          container_port: p.container_port,
          protocol: p.protocol ?? 'tcp',
        })),
      ),
      vcpu: input.vcpu,
      mem_mib: input.mem_mib,
      restart_policy: input.restart_policy,
      network_id: networkId,
      labels: JSON.stringify(input.labels),
      start: input.start ? 1 : 0,
      phase: 'creating',
      status: input.start ? 'starting' : 'created',
      running: 0,
      exit_kind: null,
      exit_value: null,
      started_at: null,
      finished_at: null,
      restart_count: 0,
      last_error: null,
      created_by: actor,
      claimed_until: isoAfter(CLAIM_MS),
      created_at: at,
      updated_at: at,
    };
    try {
      await this.d.store.db.insertInto('containers').values(row).execute();
    } catch (err) {
      if (isUniqueViolation(err))
        throw new NqvmError('NAME_TAKEN', `a container named "${input.name}" exists`, { field: 'name' });
      throw err;
    }
    const container = toContainer(row, undefined);
    await this.publish('container.created', container);
    const operation = await this.d.ops.create({
      kind: CREATE_KIND,
      target: { type: 'container', id: row.id },
      createdBy: actor,
      // The credentials stay in the job's memory: never in the operation, the row or a log.
      params: { image: input.image, manifest_digest: image.manifestDigest },
      message: `pulling ${image.pinned}`,
    });
    this.startJob({
      id: row.id,
      actor,
      pinned: image.pinned,
      digest: image.manifestDigest,
      kernelId: boot.kernelId,
      initId: boot.initId,
      credentials: input.registry_credentials,
    });
    return { container, operation };
  }

  private async checkNameFree(name: string): Promise<void> {
    const db = this.d.store.db;
    const vm = await db.selectFrom('vms').select('id').where('name', '=', name).executeTakeFirst();
    if (vm) throw new NqvmError('NAME_TAKEN', `a VM named "${name}" exists`, { field: 'name' });
    const c = await db.selectFrom('containers').select('id').where('name', '=', name).executeTakeFirst();
    if (c) throw new NqvmError('NAME_TAKEN', `a container named "${name}" exists`, { field: 'name' });
  }

  /** The network of the container's NIC: as given, else the default one (none: no NIC, no ports). */
  private async networkOf(input: ContainerCreate): Promise<string | null> {
    const db = this.d.store.db;
    if (input.network_id) {
      const n = await db
        .selectFrom('networks')
        .select('id')
        .where('id', '=', input.network_id)
        .executeTakeFirst();
      if (!n)
        throw new NqvmError('VALIDATION_FAILED', `network_id: no network ${input.network_id}`, {
          fields: [{ path: 'body.network_id', message: 'unknown network' }],
        });
      return n.id;
    }
    const def = await db.selectFrom('networks').select('id').where('is_default', '=', 1).executeTakeFirst();
    if (!def && input.ports.length)
      throw new NqvmError(
        'VALIDATION_FAILED',
        'ports need a network: give network_id (there is no default network)',
        {
          fields: [{ path: 'body.network_id', message: 'required for ports: there is no default network' }],
        },
      );
    return def?.id ?? null;
  }

  /** 409 PORT_IN_USE as a port forward would answer, also for the ports of containers being created. */
  private async checkPortsFree(ports: ContainerCreate['ports']): Promise<void> {
    const db = this.d.store.db;
    for (const p of ports) {
      await checkPortFree(db, p.protocol ?? 'tcp', p.host_port, null);
      await this.d.portForwards.checkHostsFree(p.protocol ?? 'tcp', p.host_port, null);
    }
    const creating = await db
      .selectFrom('containers')
      .select(['id', 'ports'])
      .where('phase', '=', 'creating')
      .execute();
    for (const c of creating) {
      const theirs = JSON.parse(c.ports) as ContainerPort[];
      const clash = ports.find((p) =>
        theirs.some((t) => t.host_port === p.host_port && t.protocol === (p.protocol ?? 'tcp')),
      );
      if (clash)
        throw new NqvmError(
          'PORT_IN_USE',
          `${clash.protocol ?? 'tcp'} port ${clash.host_port} is taken by a container being created`,
          { container_id: c.id },
        );
    }
  }

  /** nqvm's container init and the default kernel it boots with; 409 CONTAINER_INIT_MISSING without them. */
  private async bootImages(): Promise<{ kernelId: string; initId: string }> {
    const db = this.d.store.db;
    const init = await db
      .selectFrom('images')
      .select(['id', 'kind', 'status'])
      .where('name', '=', CONTAINER_INIT_IMAGE)
      .executeTakeFirst();
    if (init?.kind !== 'initrd' || init.status !== 'ready')
      throw new NqvmError(
        'CONTAINER_INIT_MISSING',
        `nqvm's container init is not registered: containers need a ready initrd image named "${CONTAINER_INIT_IMAGE}". ` +
          '`nqvm up` registers it; on another manager, register the initrd that ensureContainerInit() of ' +
          '@nqvm/testkit builds (POST /api/v1/images with a path source) under that name',
        { image: CONTAINER_INIT_IMAGE, ...(init ? { kind: init.kind, status: init.status } : {}) },
      );
    const kernel = await db
      .selectFrom('images')
      .select('id')
      .where('kind', '=', 'kernel')
      .where('is_default', '=', 1)
      .where('status', '=', 'ready')
      .executeTakeFirst();
    if (!kernel)
      throw new NqvmError(
        'CONTAINER_INIT_MISSING',
        "no default kernel is registered: nqvm's container init boots with the default (cloud) kernel, " +
          'which `nqvm up` registers with it',
        { image: 'default kernel' },
      );
    return { kernelId: kernel.id, initId: init.id };
  }

  private async resolve(input: ContainerCreate) {
    const creds = input.registry_credentials;
    try {
      return await resolveOciImage(input.image, {
        username: creds?.username,
        password: creds?.password,
        signal: AbortSignal.timeout(RESOLVE_TIMEOUT_MS),
      });
    } catch (err) {
      if (err instanceof NqvmError && err.code === 'VALIDATION_FAILED')
        throw new NqvmError('VALIDATION_FAILED', `image: ${err.message}`, {
          fields: [{ path: 'body.image', message: err.message }],
        });
      throw err;
    }
  }

  // ---- the create job --------------------------------------------------------------------

  private startJob(job: CreateJob): void {
    const abort = new AbortController();
    const renew = setInterval(() => {
      this.d.store.db
        .updateTable('containers')
        .set({ claimed_until: isoAfter(CLAIM_MS) })
        .where('id', '=', job.id)
        .where('phase', '=', 'creating')
        .execute()
        .catch((err) => this.d.log.warn({ err, containerId: job.id }, 'could not renew the create claim'));
    }, CLAIM_RENEW_MS);
    renew.unref();
    const done = this.runJob(job, abort.signal)
      .catch((err) => this.d.log.warn({ err, containerId: job.id }, 'container create job failed'))
      .finally(() => {
        clearInterval(renew);
        this.jobs.delete(job.id);
      });
    this.jobs.set(job.id, { abort, done });
  }

  /** The create's named steps: image, vm, ports, start. A failure undoes them and says which failed. */
  private async runJob(job: CreateJob, signal: AbortSignal): Promise<void> {
    let step = 'image';
    try {
      const imageId = await this.imageFor(job, signal);
      await this.d.store.db
        .updateTable('containers')
        .set({ image_id: imageId, updated_at: nowIso() })
        .where('id', '=', job.id)
        .execute();
      signal.throwIfAborted();
      step = 'vm';
      await this.progress(job.id, 75, 'creating the microVM');
      const row = await this.getRow(job.id);
      await this.createVm(job, row, imageId);
      signal.throwIfAborted();
      step = 'ports';
      const ports = JSON.parse(row.ports) as ContainerPort[];
      if (ports.length) await this.progress(job.id, 80, `forwarding ${ports.length} port(s)`);
      for (const p of ports)
        await this.d.portForwards.create(job.id, {
          nic_index: 0,
          proto: p.protocol,
          host_port: p.host_port,
          guest_port: p.container_port,
        });
      signal.throwIfAborted();
      let outcome = 'created, not started';
      if (row.start) {
        step = 'start';
        await this.d.vms.act(job.id, 'start', job.actor);
        void this.d.reconciler.reconcile(job.id);
        outcome = await this.started(job.id, signal);
      }
      const done = await this.d.store.db
        .updateTable('containers')
        .set({ phase: 'ready', claimed_until: null, updated_at: nowIso() })
        .where('id', '=', job.id)
        .where('phase', '=', 'creating')
        .executeTakeFirst();
      if (Number(done.numUpdatedRows) === 0) return;
      await this.refresh(job.id);
      for (const op of await this.createOps(job.id)) await this.d.ops.succeed(op.id, outcome);
    } catch (err) {
      if (signal.reason instanceof ManagerStopping) return;
      if (signal.aborted && signal.reason instanceof CreateCancelled)
        return this.failCreate(job.id, 'CONFLICT', signal.reason.message, job.actor);
      if (err instanceof CreateCancelled) return this.failCreate(job.id, 'CONFLICT', err.message, job.actor);
      const known = err instanceof NqvmError || err instanceof CreateStepError;
      if (!known) this.d.log.warn({ err, containerId: job.id, step }, 'container create step failed');
      const message = (err as Error)?.message ?? String(err);
      return this.failCreate(job.id, known ? err.code : 'INTERNAL', `${step}: ${message}`, job.actor);
    }
  }

  private async createVm(job: CreateJob, row: ContainerRow, imageId: string): Promise<void> {
    const proc = JSON.parse(row.process!) as ContainerProcess;
    const spec: AgentContainerSpec = {
      argv: proc.argv,
      env: Object.entries(proc.env).map(([k, v]) => `${k}=${v}`),
      working_dir: proc.working_dir,
      user: proc.user,
    };
    const input: VmCreate = {
      name: row.name,
      vcpu: row.vcpu,
      mem_mib: Number(row.mem_mib),
      kernel_image_id: job.kernelId,
      rootfs_image_id: imageId,
      initrd_image_id: job.initId,
      networks: row.network_id ? [{ network_id: row.network_id }] : [],
      volumes: [],
      // The init configures the guest (host name, network) itself: no config drive.
      guest_config: { mode: 'none' },
      restart_policy: row.restart_policy,
      labels: { ...JSON.parse(row.labels), [CONTAINER_LABEL]: row.name },
      // Defined first: its forwards go in before its first command.
      start: false,
    };
    // Another VM may take the lowest free address first (ADDRESS_IN_USE, "retry"): retry.
    for (let attempt = 1; ; attempt++) {
      try {
        await this.d.vms.create(input, job.actor, { id: job.id, container: spec });
        break;
      } catch (err) {
        if (!(err instanceof NqvmError) || err.code !== 'ADDRESS_IN_USE' || attempt >= 5) throw err;
      }
    }
    await this.refresh(job.id);
  }

  /**
   * Waits until the process started (or already ran and exited: a quick job); answers the
   * operation's closing message. A VM that fails, or a process that cannot start, fails it.
   */
  private async started(id: string, signal: AbortSignal): Promise<string> {
    let seen = '';
    return this.watch([id], signal, async () => {
      const row = await this.findRow(id);
      const vm = await this.d.vms.findRow(id);
      if (row?.phase !== 'creating') throw new CreateCancelled('the container was deleted');
      if (!vm) throw new CreateStepError('CONFLICT', 'its VM was deleted');
      if (row.exit_kind === 'unstartable')
        throw new CreateStepError(
          'CONTAINER_START_FAILED',
          `the process could not start (code ${row.exit_value})${await this.lastOutput(vm)}`,
        );
      if (vm.state === 'failed')
        throw new CreateStepError('VM_FAILED', `the VM failed: ${vm.last_error ?? 'no reason given'}`);
      if (vm.state === 'running' && row.running) return `running (VM on host ${await this.hostName(vm)})`;
      if (row.exit_kind !== null)
        return `the process ran and exited with code ${exitCodeOf(row.exit_kind, row.exit_value)}`;
      if (vm.state === 'stopped' && vm.desired_state === 'stopped')
        throw new CreateStepError(
          'VM_FAILED',
          `the VM stopped before its process started${await this.lastOutput(vm)}`,
        );
      const now =
        vm.state === 'running' ? 'VM is running, waiting for the process to start' : `VM is ${vm.state}`;
      if (now !== seen) {
        seen = now;
        await this.progress(id, vm.host_id ? 90 : 85, now);
      }
      return null;
    });
  }

  /**
   * The rootfs image of the job's digest: a ready one, or the one a pull makes. The look-up and
   * the pull are one flight per digest in this manager, entered synchronously: two containers of
   * a new image created at once pull it once.
   */
  private async imageFor(job: CreateJob, signal: AbortSignal): Promise<string> {
    let pull = this.pulls.get(job.digest);
    if (pull)
      await this.progress(job.id, 5, `waiting for the pull of ${job.digest} another container started`);
    else pull = this.startPull(job);
    const shared = pull;
    const stop = this.d.bus.subscribe((e) => {
      if (e.resourceType !== 'operation' || e.resourceId !== shared.importOpId) return;
      const op = e.data as Operation;
      if (op.status === 'running')
        this.progress(job.id, 5 + op.progress.percent * 0.65, `pulling: ${op.progress.message}`).catch(
          () => {},
        );
    });
    try {
      const image = await abortable(pull.done, signal);
      if (image.reused)
        await this.progress(job.id, 70, `image ${image.name} (${job.digest}) is here already`);
      return image.id;
    } finally {
      stop();
    }
  }

  /**
   * Reuses a ready image of the digest, or imports the pinned reference with the image service
   * (credentials in memory only). A failed import's image row goes: nothing is left of it.
   */
  private startPull(job: CreateJob): Pull {
    const pull: Pull = { importOpId: null, done: Promise.resolve({ id: '', name: '', reused: false }) };
    pull.done = (async () => {
      const ready = await this.readyImageOf(job.digest);
      if (ready) return { ...ready, reused: true };
      const { image, operation } = await this.importImage(job);
      pull.importOpId = operation.id;
      let op = await this.d.ops.get(operation.id);
      while (op.status === 'queued' || op.status === 'running') op = await this.d.ops.wait(operation.id, 60);
      if (op.status === 'succeeded') return { id: image.id, name: image.name, reused: false };
      await this.d.images.delete(image.id, false).catch(() => {});
      throw new CreateStepError(
        op.error?.code ?? 'IMPORT_FAILED',
        `pulling ${job.pinned} failed: ${op.error?.message ?? op.progress.message}`,
      );
    })().finally(() => this.pulls.delete(job.digest));
    // Each waiter handles the outcome; none may be left unobserved.
    pull.done.catch(() => {});
    this.pulls.set(job.digest, pull);
    return pull;
  }

  private async importImage(job: CreateJob) {
    const repo =
      job.pinned
        .replace(/[:@].*$/, '')
        .split('/')
        .at(-1) ?? 'image';
    const hex = job.digest.replace(/^sha\d+:/, '');
    for (const name of [`${repo.slice(0, 40)}-${hex.slice(0, 12)}`, `oci-${hex.slice(0, 40)}`]) {
      try {
        const out = await this.d.images.create(
          {
            name,
            kind: 'rootfs',
            source: {
              type: 'oci',
              reference: job.pinned,
              username: job.credentials?.username,
              password: job.credentials?.password,
            },
          },
          job.actor,
        );
        return { image: out.image, operation: out.operation! };
      } catch (err) {
        if (!(err instanceof NqvmError) || err.code !== 'NAME_TAKEN') throw err;
      }
    }
    throw new NqvmError(
      'NAME_TAKEN',
      `no free image name for ${job.pinned}; rename the images named after it`,
    );
  }

  private async readyImageOf(digest: string): Promise<{ id: string; name: string } | undefined> {
    const rows = await this.d.store.db
      .selectFrom('images')
      .select(['id', 'name', 'metadata'])
      .where('kind', '=', 'rootfs')
      .where('status', '=', 'ready')
      .where('metadata', 'like', `%${digest}%`)
      .orderBy('created_at')
      .execute();
    return rows.find((r) => JSON.parse(r.metadata).oci?.manifest_digest === digest);
  }

  /**
   * Ends a create that failed: the row is marked failed before its VM goes (so it is kept when
   * the VM is removed), the VM (and with it its forwards) is deleted, the operation fails.
   */
  private async failCreate(id: string, code: string, message: string, actor: string | null): Promise<void> {
    const marked = await this.d.store.db
      .updateTable('containers')
      .set({
        phase: 'failed',
        status: 'failed',
        last_error: message.slice(0, 2000),
        claimed_until: null,
        updated_at: nowIso(),
      })
      .where('id', '=', id)
      .where('phase', '=', 'creating')
      .executeTakeFirst();
    if (Number(marked.numUpdatedRows) === 0) return;
    const vm = await this.d.vms.findRow(id);
    if (vm && vm.state !== 'deleting') {
      try {
        await this.d.vms.delete(id, true, actor);
        void this.d.reconciler.reconcile(id);
      } catch (err) {
        this.d.log.warn({ err, containerId: id }, "could not delete a failed container's VM");
      }
    }
    await this.refresh(id);
    for (const op of await this.createOps(id)) await this.d.ops.fail(op.id, code, message);
  }

  /**
   * Creates whose manager stopped (their claim expired) fail now, their VM deleted; rows whose
   * VM is gone without them (a manager stopped between the two) go. Run by the manager's loop.
   */
  async sweep(): Promise<void> {
    const db = this.d.store.db;
    const now = nowIso();
    const expired = await db
      .selectFrom('containers')
      .select(['id', 'claimed_until', 'created_by'])
      .where('phase', '=', 'creating')
      .where((eb) => eb.or([eb('claimed_until', 'is', null), eb('claimed_until', '<', now)]))
      .execute();
    for (const c of expired) {
      if (this.jobs.has(c.id)) continue;
      const claimed = await db
        .updateTable('containers')
        .set({ claimed_until: isoAfter(CLAIM_MS) })
        .where('id', '=', c.id)
        .where('phase', '=', 'creating')
        .where('claimed_until', c.claimed_until === null ? 'is' : '=', c.claimed_until)
        .executeTakeFirst();
      if (Number(claimed.numUpdatedRows) === 1)
        await this.failCreate(
          c.id,
          'CONFLICT',
          'the manager creating this container stopped; create it again',
          c.created_by,
        );
    }
    const orphans = await db
      .selectFrom('containers')
      .selectAll()
      .where('phase', '=', 'ready')
      .where((eb) =>
        eb.not(eb.exists(eb.selectFrom('vms').select('vms.id').whereRef('vms.id', '=', 'containers.id'))),
      )
      .execute();
    for (const row of orphans)
      await this.removeRow(row, {
        state: 'deleting',
        host_id: null,
        updated_at: row.updated_at,
        network_id: row.network_id,
        ip: null,
      });
  }

  /** Ends this manager's create jobs without undoing them (shutdown); the sweep settles them. */
  async stop(): Promise<void> {
    for (const job of this.jobs.values()) job.abort.abort(new ManagerStopping('the manager is stopping'));
    await Promise.all([...this.jobs.values()].map((j) => j.done));
  }

  // ---- actions --------------------------------------------------------------------------

  /**
   * Acts on the container's VM (the VM action's operation answers). Restart reboots a running
   * VM (the init runs the process anew) and starts a stopped or failed one.
   */
  async act(
    id: string,
    action: 'start' | 'stop' | 'restart' | 'pause' | 'resume',
    actor: string | null,
    params: Record<string, unknown> = {},
  ): Promise<{ container: Container; operation: Operation }> {
    const row = await this.getRow(id);
    this.requireVm(row, action);
    const vm = await this.d.vms.getRow(id);
    let vmAction: VmAction = action === 'restart' ? 'start' : action;
    if (action === 'restart') {
      if (vm.state === 'running') vmAction = 'reboot';
      else if (vm.state !== 'stopped' && vm.state !== 'failed')
        throw new NqvmError('VM_INVALID_STATE', `cannot restart a container whose VM is ${vm.state}`, {
          state: vm.state,
          allowed_from: ['running', 'stopped', 'failed'],
        });
    }
    const out = await this.d.vms.act(id, vmAction, actor, params);
    return { container: await this.get(id), operation: out.operation };
  }

  /**
   * Deletes the container's VM (409 while it runs unless `force`); the row goes once the VM is
   * gone. A failed container (no VM left) goes at once; one being created has its create
   * cancelled first.
   */
  async delete(
    id: string,
    force: boolean,
    actor: string | null,
  ): Promise<{ container: Container; operation: Operation }> {
    let row = await this.getRow(id);
    if (row.phase === 'creating') {
      const job = this.jobs.get(id);
      if (!job)
        throw new NqvmError(
          'CONFLICT',
          'another manager is creating this container; delete it once its operation has ended',
          { status: row.status },
        );
      job.abort.abort(new CreateCancelled('the container was deleted while being created'));
      await job.done;
      row = await this.getRow(id);
    }
    const before = (await this.views([row]))[0]!;
    if (row.phase === 'failed') {
      await this.removeRow(row, undefined);
      const op = await this.d.ops.create({
        kind: 'container.delete',
        target: { type: 'container', id },
        createdBy: actor,
        params: { force },
      });
      return { container: before, operation: (await this.d.ops.succeed(op.id, 'deleted')) ?? op };
    }
    const out = await this.d.vms.delete(id, force, actor);
    const now = await this.findRow(id);
    return {
      container: now ? (await this.views([now]))[0]! : { ...before, vm_state: 'deleting' },
      operation: out.operation,
    };
  }

  private requireVm(row: ContainerRow, action: string): void {
    if (row.phase === 'creating')
      throw new NqvmError(
        'VM_INVALID_STATE',
        `cannot ${action} a container that is being created; follow its operation`,
        { status: row.status },
      );
    if (row.phase === 'failed')
      throw new NqvmError(
        'VM_INVALID_STATE',
        `the container failed to be created (${row.last_error ?? 'no reason recorded'}): delete it and create it again`,
        { status: 'failed' },
      );
  }

  // ---- the process: logs, exec, stats ------------------------------------------------------

  /**
   * The agent's log stream of the container, or null when its VM was never placed (nothing ran,
   * nothing was written). `signal` ends a followed stream (the client went away).
   */
  async logs(
    id: string,
    q: { tail?: number; follow: boolean; timestamps: boolean; stream: 'all' | 'stdout' | 'stderr' },
    signal: AbortSignal,
  ): Promise<Readable | null> {
    await this.getRow(id);
    const vm = await this.d.vms.findRow(id);
    if (!vm?.host_id) return null;
    const host = await this.readyHost(vm.host_id);
    return this.d.agents.logs(host.address, id, q, signal);
  }

  /** A command in the container's environment (its env, user and working dir unless overridden). */
  async exec(id: string, req: ContainerExec): Promise<ContainerExecResult> {
    const row = await this.getRow(id);
    this.requireVm(row, 'exec in');
    const proc = JSON.parse(row.process!) as ContainerProcess;
    return execInVm(this.d, id, {
      ...req,
      env: { ...proc.env, ...req.env },
      user: req.user ?? proc.user ?? undefined,
      working_dir: req.working_dir ?? proc.working_dir ?? undefined,
    });
  }

  /** The user and working dir an interactive exec defaults to: the container's. */
  async execDefaults(id: string): Promise<{ user?: string; working_dir?: string }> {
    const row = await this.getRow(id);
    this.requireVm(row, 'exec in');
    const proc = JSON.parse(row.process!) as ContainerProcess;
    return { user: proc.user ?? undefined, working_dir: proc.working_dir ?? undefined };
  }

  /** Figures of the VMM process and the guest; null parts while its VM runs nowhere. */
  async stats(id: string): Promise<ContainerStats> {
    const container = await this.get(id);
    const vm = await this.d.vms.findRow(id);
    const live = vm?.host_id && ['running', 'pausing', 'paused', 'stopping'].includes(vm.state);
    if (!vm?.host_id || !live) return { id, status: container.status, host: null, guest: null, at: nowIso() };
    const host = await this.readyHost(vm.host_id);
    const s = await this.d.agents.stats(host.address, id);
    return { id, status: container.status, host: s.host, guest: s.guest, at: nowIso() };
  }

  // ---- following the VM and the reports ----------------------------------------------------

  /** Keeps the process state the agent reports; publishes the change. */
  private async applyReport(vm: VmRow, r: AgentVmReport): Promise<void> {
    const c = r.container;
    if (!c) return;
    const row = await this.findRow(vm.id);
    if (!row || row.phase === 'failed') return;
    const next = {
      running: c.running ? 1 : 0,
      exit_kind: c.exit?.kind ?? null,
      exit_value: c.exit?.value ?? null,
      started_at: c.started_at,
      finished_at: c.finished_at,
      restart_count: c.restarts,
    };
    const same = (Object.keys(next) as Array<keyof typeof next>).every((k) => row[k] === next[k]);
    if (same) return;
    await this.d.store.db
      .updateTable('containers')
      .set({ ...next, updated_at: nowIso() })
      .where('id', '=', row.id)
      .execute();
    await this.refresh(row.id);
  }

  /** Re-derives the status (kept for filtering) and publishes the container as GET shows it. */
  private async refresh(id: string): Promise<void> {
    const row = await this.findRow(id);
    if (!row) return;
    const [view] = await this.views([row]);
    if (view!.status !== row.status)
      await this.d.store.db
        .updateTable('containers')
        .set({ status: view!.status })
        .where('id', '=', id)
        .execute();
    await this.publish('container.updated', view!);
  }

  /** The VM is gone: a container that is not failed goes with it. */
  private async vmRemoved(vm: Vm): Promise<void> {
    const row = await this.findRow(vm.id);
    if (!row) return;
    if (row.phase !== 'ready') return this.refresh(vm.id);
    await this.removeRow(row, {
      state: vm.state,
      host_id: vm.host_id,
      updated_at: vm.updated_at,
      network_id: vm.networks[0]?.network_id ?? null,
      ip: vm.networks[0]?.ip ?? null,
    });
  }

  private async removeRow(row: ContainerRow, vm: VmFacts | undefined): Promise<void> {
    const gone = await this.d.store.db.deleteFrom('containers').where('id', '=', row.id).executeTakeFirst();
    if (Number(gone.numDeletedRows) === 0) return;
    await this.publish('container.deleted', toContainer(row, vm));
  }

  // ---- helpers --------------------------------------------------------------------------

  private async views(rows: ContainerRow[]): Promise<Container[]> {
    if (!rows.length) return [];
    const ids = rows.map((r) => r.id);
    const db = this.d.store.db;
    const vms = await db
      .selectFrom('vms')
      .select(['id', 'state', 'host_id', 'updated_at'])
      .where('id', 'in', ids)
      .execute();
    const nics = await db
      .selectFrom('vm_nics')
      .select(['vm_id', 'network_id', 'ip'])
      .where('vm_id', 'in', ids)
      .where('nic_index', '=', 0)
      .execute();
    const byId = new Map(vms.map((v) => [v.id, v]));
    const nicOf = new Map(nics.map((n) => [n.vm_id, n]));
    return rows.map((r) => {
      const vm = byId.get(r.id);
      const nic = nicOf.get(r.id);
      return toContainer(
        r,
        vm && {
          state: vm.state as VmState,
          host_id: vm.host_id,
          updated_at: vm.updated_at,
          network_id: nic?.network_id ?? null,
          ip: nic?.ip ?? null,
        },
      );
    });
  }

  private async readyHost(hostId: string) {
    const host = await this.d.hosts.getRow(hostId);
    if (host.status !== 'ready')
      throw new NqvmError('HOST_UNAVAILABLE', `the container's host ${host.name} is ${host.status}`, {
        host_id: host.id,
      });
    return host;
  }

  private async hostName(vm: VmRow): Promise<string> {
    return vm.host_id
      ? ((await this.d.hosts.getRow(vm.host_id).catch(() => null))?.name ?? vm.host_id)
      : 'none';
  }

  /** The end of what the process printed, for the reason of a failed start (best effort). */
  private async lastOutput(vm: VmRow): Promise<string> {
    if (!vm.host_id) return '';
    try {
      const host = await this.d.hosts.getRow(vm.host_id);
      const stream = await this.d.agents.logs(
        host.address,
        vm.id,
        { tail: 5, follow: false, timestamps: false, stream: 'all' },
        AbortSignal.timeout(5_000),
      );
      const chunks: Buffer[] = [];
      for await (const c of stream) chunks.push(c as Buffer);
      const text = Buffer.concat(chunks).toString('utf8').trim();
      return text ? `; its last output: ${text.slice(-FAILED_OUTPUT_BYTES)}` : '';
    } catch {
      return '';
    }
  }

  private async createOps(id: string) {
    return (await this.d.ops.active(id)).filter((o) => o.kind === CREATE_KIND);
  }

  private async progress(id: string, percent: number, message: string): Promise<void> {
    for (const op of await this.createOps(id))
      if (op.progress_message !== message)
        await this.d.ops.update(op.id, { status: 'running', percent, message });
  }

  /**
   * Resolves with `probe`'s first non-null answer; probes now, on every event about one of
   * `ids` (and the create's own operation being cancelled shows as an abort), and every second.
   */
  private watch<T>(ids: string[], signal: AbortSignal, probe: () => Promise<T | null>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let busy = false;
      let again = false;
      let over = false;
      const finish = () => {
        over = true;
        unsubscribe();
        clearInterval(timer);
        signal.removeEventListener('abort', onAbort);
      };
      const check = async (): Promise<void> => {
        if (over) return;
        if (busy) {
          again = true;
          return;
        }
        busy = true;
        try {
          do {
            again = false;
            const v = await probe();
            if (v !== null && !over) {
              finish();
              resolve(v);
              return;
            }
          } while (again && !over);
        } catch (err) {
          if (!over) {
            finish();
            reject(err);
          }
        } finally {
          busy = false;
        }
      };
      const onAbort = () => {
        if (over) return;
        finish();
        reject(signal.reason);
      };
      const unsubscribe = this.d.bus.subscribe((e) => {
        if (ids.includes(e.resourceId)) void check();
      });
      const timer = setInterval(() => void check(), 1000);
      timer.unref();
      signal.addEventListener('abort', onAbort, { once: true });
      if (signal.aborted) onAbort();
      else void check();
    });
  }

  private async publish(type: string, c: Container): Promise<void> {
    await this.d.bus.publish({ type, resourceType: 'container', resourceId: c.id, data: c });
  }

  /** Runs a hook's work; a failure is logged, never thrown into the VM's own change. */
  private async guard(what: string, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      this.d.log.warn({ err }, `container: could not ${what}`);
    }
  }
}

/** `p`, or the abort's reason once `signal` aborts first. */
function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (err) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}
