import {
  closeSync,
  constants,
  existsSync,
  openSync,
  readFileSync,
  readSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { dirname, isAbsolute, join, normalize, relative, resolve } from 'node:path';
import { GuestMemory } from './guest-memory';
import { appendJournal, type SimPhase } from './journal';
import { EMPTY_ID_FAULT, resourceIdFault } from './resource-id';
import {
  type BodyValidator,
  createBodyValidator,
  type FirecrackerSimVersion,
  type FirecrackerSpec,
  loadFirecrackerSpec,
  matchOperation,
} from './spec';
import { GUEST_TICK_MS, GuestMemoryError, type GuestState, TickingGuest } from './ticking-guest';

/** A request Firecracker refuses: answered 400 with this text as `fault_message`. */
export class Fault extends Error {}

export interface SimResponse {
  status: number;
  body?: unknown;
  /** Runs once the response has been written (e.g. the process exits). */
  after?: () => void;
}

export interface SimulatorOptions {
  version: FirecrackerSimVersion;
  instanceId: string;
  /** The jailer's chroot: every path the API receives resolves inside it. */
  root?: string;
  /** Directory relative paths resolve against when there is no root. */
  cwd: string;
  journalPath?: string;
  payloadLimit: number;
  mmdsSizeLimit: number;
  bootTimer: boolean;
  /** Whether serial input is wired (decided from the kind of stdin). */
  serialInput: boolean;
  /** Guest serial output (Firecracker's stdout). */
  writeConsole: (text: string) => void;
  /** Firecracker's stderr. */
  writeStderr: (text: string) => void;
  exit: (code: number) => void;
  /** Dies by SIGABRT, as Firecracker (built with panic = "abort") does after a panic. */
  abort: () => void;
  /**
   * Test fault: the VMM panics on this request, a route key such as `ACTION InstanceStart` or
   * `PUT /drives/{drive_id}` (after the request passed its checks, as a panic in the VMM
   * thread comes): the message is logged, then the process aborts without answering.
   */
  panicOn?: { request: string; message: string };
  /**
   * The guest's vsock listeners: a host-initiated connection to port P goes to the Unix socket
   * `<dir>/<P>.sock`. Without it every CONNECT is answered OK and leads nowhere.
   */
  guestVsockDir?: string;
  /** How often the guest writes its memory while running (GUEST_TICK_MS by default). */
  guestTickMs?: number;
}

type Json = Record<string, unknown>;

const LEVELS = ['Off', 'Error', 'Warning', 'Info', 'Debug', 'Trace'] as const;
type Level = (typeof LEVELS)[number];

/** Phase rules: keys are "METHOD template" (plus actions), from NOTES and each endpoint's summary. */
const PRE_BOOT_ONLY = new Set([
  'PUT /boot-source',
  'PUT /machine-config',
  'PATCH /machine-config',
  'PUT /drives/{drive_id}',
  'PUT /network-interfaces/{iface_id}',
  'PUT /vsock',
  'PUT /balloon',
  'PUT /mmds/config',
  'PUT /entropy',
  'PUT /cpu-config',
  'PUT /serial',
  'PUT /pmem/{id}',
  'PUT /hotplug/memory',
  'PUT /logger',
  'PUT /metrics',
  'PUT /snapshot/load',
  'ACTION InstanceStart',
]);
const POST_BOOT_ONLY = new Set([
  'PATCH /vm',
  'PUT /snapshot/create',
  'PATCH /drives/{drive_id}',
  'PATCH /network-interfaces/{iface_id}',
  'PATCH /balloon/statistics',
  'PATCH /balloon/hinting/start',
  'PATCH /balloon/hinting/stop',
  'GET /balloon/hinting/status',
  'PATCH /pmem/{id}',
  'PATCH /hotplug/memory',
  'ACTION FlushMetrics',
  'ACTION SendCtrlAltDel',
]);
/** Configuring these leaves the process fresh enough for a snapshot load. */
const LOAD_COMPATIBLE = new Set(['PUT /logger', 'PUT /metrics']);

const SNAPSHOT_MAGIC = 'NQVM-FC-SIM-SNAPSHOT';
/** Firecracker's first host-side port of host-initiated vsock connections. */
const VSOCK_FIRST_LOCAL_PORT = 1 << 30;
/** The connect command is a short line; Firecracker drops a connection that sends more. */
const VSOCK_MAX_COMMAND = 32;
/** The guest prints its tick on the console every this many ticks. */
const CONSOLE_TICK_EVERY = 5;

export function versionAtLeast(version: string, min: string): boolean {
  const a = version.split('.').map(Number);
  const b = min.split('.').map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (a[i] ?? 0) - (b[i] ?? 0);
    if (d !== 0) return d > 0;
  }
  return true;
}

/** Snapshot format: one per minor release, so a binary restores only its own. */
function snapshotFormat(version: string): string {
  return version.split('.').slice(0, 2).join('.');
}

const osError = (err: unknown): string => {
  const e = err as NodeJS.ErrnoException;
  const codes: Record<string, string> = {
    ENOENT: 'No such file or directory (os error 2)',
    EACCES: 'Permission denied (os error 13)',
    EISDIR: 'Is a directory (os error 21)',
    EADDRINUSE: 'Address in use (os error 98)',
  };
  return (e.code && codes[e.code]) ?? e.message;
};

function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const out: Json =
    target && typeof target === 'object' && !Array.isArray(target) ? { ...(target as Json) } : {};
  for (const [k, v] of Object.entries(patch as Json)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

/**
 * The state machine and handlers of one Firecracker process. Transport (HTTP on the Unix
 * socket), stdio and process exit are wired by the entry point.
 */
export class FirecrackerSimulator {
  readonly spec: FirecrackerSpec;
  private readonly validate: BodyValidator;
  state: SimPhase = 'Not started';
  private bootConfigured = false;
  private bootSource: Json | null = null;
  private machine: Json;
  private readonly drives = new Map<string, Json>();
  private readonly nics = new Map<string, Json>();
  private readonly pmem = new Map<string, Json>();
  private vsock: Json | null = null;
  private vsockServer: Server | null = null;
  private readonly vsockConnections = new Set<Socket>();
  private vsockLocalPort = VSOCK_FIRST_LOCAL_PORT;
  private guest: TickingGuest | null = null;
  private guestTimer: NodeJS.Timeout | null = null;
  private balloon: Json | null = null;
  private entropy: Json | null = null;
  private cpuConfig: Json | null = null;
  private serial: Json | null = null;
  private memoryHotplug: Json | null = null;
  private mmdsConfig: Json | null = null;
  private mmdsData: unknown = null;
  private logger: Json | null = null;
  private loggerFd: number | null = null;
  private loggerLevel: Level;
  private metrics: Json | null = null;
  private metricsFd: number | null = null;
  private metricsTimer: NodeJS.Timeout | null = null;
  private readonly counters: Record<string, Record<string, number>> = {};
  private pendingInput: string[] = [];
  private pendingReboot = false;
  private readonly startedAt = Date.now();
  private exiting = false;
  /** Set while `--config-file` is applied. */
  private fromConfigFile = false;

  constructor(readonly opts: SimulatorOptions) {
    this.spec = loadFirecrackerSpec(opts.version);
    this.validate = createBodyValidator(this.spec, { partial: ['MachineConfiguration'] });
    // Compile every body schema now (~50 ms), so request latency is the API's, not Ajv's.
    for (const op of this.spec.operations) if (op.bodyDefinition) this.validate(op.bodyDefinition, null);
    this.machine = this.defaultMachine();
    this.loggerLevel = versionAtLeast(opts.version, '1.7.0') ? 'Info' : 'Warning';
  }

  private at(min: string): boolean {
    return versionAtLeast(this.opts.version, min);
  }

  private defaultMachine(): Json {
    const m: Json = { vcpu_count: 1, mem_size_mib: 128, smt: false, track_dirty_pages: false };
    if (this.hasField('MachineConfiguration', 'huge_pages')) m.huge_pages = 'None';
    return m;
  }

  private hasField(definition: string, field: string): boolean {
    const props = this.spec.definitions[definition]?.properties as Json | undefined;
    return props !== undefined && field in props;
  }

  // ---- paths ---------------------------------------------------------------------------

  /** Maps an API path to the host path Firecracker would open (inside the chroot if jailed). */
  hostPath(p: string): string {
    if (!this.opts.root) return isAbsolute(p) ? p : resolve(this.opts.cwd, p);
    const inside = normalize(join(this.opts.root, p));
    const rel = relative(this.opts.root, inside);
    if (rel.startsWith('..')) throw new Fault(`Path ${p} escapes the jail.`);
    return inside;
  }

  /**
   * The name to bind a socket under. A jailed Firecracker binds its in-chroot path; unchrooted,
   * the simulator binds relative to its working folder (the chroot root), which keeps the name
   * as short as the real one.
   */
  socketName(host: string): string {
    return this.opts.root ? relative(this.opts.cwd, host) : host;
  }

  private existing(p: string, what: string): string {
    const host = this.hostPath(p);
    try {
      statSync(host);
    } catch (err) {
      throw new Fault(`${what} ${JSON.stringify(p)}: ${osError(err)}`);
    }
    return host;
  }

  private creatable(p: string, what: string): string {
    const host = this.hostPath(p);
    if (!existsSync(dirname(host))) {
      throw new Fault(`${what} ${JSON.stringify(p)}: No such file or directory (os error 2)`);
    }
    return host;
  }

  // ---- logging and metrics --------------------------------------------------------------

  log(level: Exclude<Level, 'Off'>, message: string): void {
    if (this.loggerFd === null) return;
    if (LEVELS.indexOf(level) > LEVELS.indexOf(this.loggerLevel)) return;
    const tag = { Error: 'ERROR', Warning: 'WARN', Info: 'INFO', Debug: 'DEBUG', Trace: 'TRACE' }[level];
    const line = `${new Date().toISOString()} [${this.opts.instanceId}:fc_api:${tag}] ${message}\n`;
    try {
      writeSync(this.loggerFd, line);
    } catch {
      // A full FIFO drops lines, as Firecracker does.
    }
  }

  /** Firecracker opens logger and metrics targets read-write, non-blocking, never creating them. */
  private openTarget(p: string, what: string): number {
    const host = this.hostPath(p);
    try {
      return openSync(host, constants.O_RDWR | constants.O_APPEND | constants.O_NONBLOCK);
    } catch (err) {
      throw new Fault(`${what}: ${osError(err)}`);
    }
  }

  configureLoggerFromCli(path: string, level?: string): void {
    this.loggerFd = this.openTarget(path, 'Failed to open the log file');
    if (level) this.loggerLevel = this.parseLevel(level);
    this.logger = { log_path: path, level: this.loggerLevel };
  }

  configureMetricsFromCli(path: string): void {
    this.metricsFd = this.openTarget(path, 'Failed to open the metrics file');
    this.metrics = { metrics_path: path };
    this.startMetricsTimer();
  }

  private parseLevel(level: string): Level {
    const found = LEVELS.find((l) => l.toLowerCase() === level.toLowerCase());
    if (!found) throw new Fault(`Invalid log level: ${level}`);
    return found;
  }

  private startMetricsTimer(): void {
    this.metricsTimer = setInterval(() => this.flushMetrics(), 60_000);
    this.metricsTimer.unref();
  }

  private count(group: string, name: string): void {
    this.counters[group] ??= {};
    const g = this.counters[group]!;
    g[name] = (g[name] ?? 0) + 1;
  }

  flushMetrics(): void {
    if (this.metricsFd === null) return;
    const line = {
      utc_timestamp_ms: Date.now(),
      api_server: { process_startup_time_us: (Date.now() - this.startedAt) * 1000 },
      ...this.counters,
      vmm: { state: this.state },
      sim: { version: this.opts.version, drives: this.drives.size, network_interfaces: this.nics.size },
    };
    try {
      writeSync(this.metricsFd, `${JSON.stringify(line)}\n`);
    } catch {
      // Lines written to a full pipe are lost.
    }
  }

  // ---- request entry ---------------------------------------------------------------------

  /**
   * Answers one API request as Firecracker does and journals it; `refused` is an answer the
   * HTTP layer already gave (the request is journaled, not routed).
   * @example sim.handle('PUT', '/actions', '{"action_type":"InstanceStart"}')
   */
  handle(method: string, path: string, rawBody: string, refused?: SimResponse): SimResponse {
    const phase = this.state;
    let body: unknown = null;
    let response: SimResponse;
    if (refused) response = refused;
    else
      try {
        if (rawBody.trim() !== '') {
          try {
            body = JSON.parse(rawBody);
          } catch (err) {
            body = rawBody;
            throw new Fault(
              `An error occurred when deserializing the json body of a request: ${(err as Error).message}.`,
            );
          }
        }
        response = this.route(method, path, body, rawBody.trim() === '');
      } catch (err) {
        if (!(err instanceof Fault)) throw err;
        response = { status: 400, body: { fault_message: err.message } };
      }
    const fault =
      response.status >= 400
        ? String((response.body as { fault_message?: string }).fault_message)
        : undefined;
    appendJournal(this.opts.journalPath, {
      kind: 'request',
      ts: Date.now(),
      pid: process.pid,
      instance: this.opts.instanceId,
      version: this.opts.version,
      method,
      path,
      body,
      phase,
      status: response.status,
      ...(fault ? { fault } : {}),
    });
    const verb = method.charAt(0) + method.slice(1).toLowerCase();
    this.log('Info', `The API server received a ${verb} request on "${path}".`);
    if (fault) this.log('Error', `Received Error. Status code: 400 Bad Request. Message: ${fault}`);
    return response;
  }

  /** Refusal of a body larger than the API's payload limit, by the HTTP layer (see `handle`). */
  payloadTooLarge(size: number): SimResponse {
    return {
      status: 400,
      body: {
        fault_message: `Request payload with size ${size} is larger than the limit of ${this.opts.payloadLimit} allowed by server.\nAll previous unanswered requests will be dropped.`,
      },
    };
  }

  private route(method: string, path: string, body: unknown, empty: boolean): SimResponse {
    const match = matchOperation(this.spec, method, path);
    if (!match) {
      if (!empty && this.namesResourceWithoutId(method, path)) throw new Fault(EMPTY_ID_FAULT);
      throw new Fault(`Invalid request method and/or path: ${method} ${path}.`);
    }
    const { op, params } = match;
    let key = `${method} ${op.template}`;
    if (op.bodyDefinition && empty && (op.bodyRequired || method === 'PUT')) {
      throw new Fault(`Empty ${method} request.`);
    }
    // Firecracker checks the path's resource id before it reads the body (its config file
    // builds the devices directly and checks no id).
    for (const id of this.fromConfigFile ? [] : Object.values(params)) {
      const fault = resourceIdFault(id);
      if (fault) throw new Fault(fault);
    }
    if (op.bodyDefinition && !empty) {
      const definition =
        key === 'PATCH /machine-config' ? 'MachineConfigurationPartial' : (op.bodyDefinition as string);
      const err = this.validate(definition, body);
      if (err) throw new Fault(err);
    }
    if (key === 'PUT /actions') key = `ACTION ${(body as Json).action_type as string}`;
    const started = this.state !== 'Not started';
    if (PRE_BOOT_ONLY.has(key) && started) {
      throw new Fault('The requested operation is not supported after starting the microVM.');
    }
    if (POST_BOOT_ONLY.has(key) && !started) {
      throw new Fault('The requested operation is not supported before starting the microVM.');
    }
    this.count(`${method.toLowerCase()}_api_requests`, `${op.template.split('/')[1] || 'root'}_count`);
    if (this.opts.panicOn?.request === key) this.panic(this.opts.panicOn.message);
    const b = (body ?? {}) as Json;
    const result = this.dispatch(key, params, b);
    if (PRE_BOOT_ONLY.has(key) && !LOAD_COMPATIBLE.has(key) && key !== 'PUT /snapshot/load') {
      this.bootConfigured = true;
    }
    return result ?? { status: method === 'GET' ? 200 : 204 };
  }

  /** `PUT /drives` or `/drives/`: a resource of the spec's `/drives/{drive_id}` named without its id. */
  private namesResourceWithoutId(method: string, path: string): boolean {
    const resource = path.replace(/\/+$/, '');
    return (
      resource !== '' &&
      this.spec.operations.some(
        (op) =>
          op.method === method &&
          op.template.startsWith(`${resource}/{`) &&
          !op.template.slice(resource.length + 1).includes('/'),
      )
    );
  }

  private dispatch(key: string, params: Record<string, string>, b: Json): SimResponse | undefined {
    switch (key) {
      case 'GET /':
        return {
          status: 200,
          body: {
            app_name: 'Firecracker',
            id: this.opts.instanceId,
            state: this.state,
            vmm_version: this.opts.version,
          },
        };
      case 'GET /version':
        return { status: 200, body: { firecracker_version: this.opts.version } };
      case 'GET /machine-config':
        return { status: 200, body: this.machine };
      case 'GET /vm/config':
        return { status: 200, body: this.vmConfig() };
      case 'PUT /boot-source':
        this.existing(b.kernel_image_path as string, 'The kernel file cannot be opened:');
        if (b.initrd_path !== undefined)
          this.existing(b.initrd_path as string, 'The initrd file cannot be opened:');
        this.bootSource = b;
        return;
      case 'PUT /machine-config':
        this.machine = this.checkMachine({ ...this.defaultMachine(), ...b });
        return;
      case 'PATCH /machine-config':
        this.machine = this.checkMachine({ ...this.machine, ...b });
        return;
      case 'PUT /drives/{drive_id}':
        return this.putDrive(params.drive_id!, b);
      case 'PATCH /drives/{drive_id}': {
        const d = this.drives.get(params.drive_id!);
        this.sameId(params.drive_id!, b.drive_id);
        if (!d) throw new Fault(`Invalid drive ID - not found: ${params.drive_id}`);
        if (b.path_on_host !== undefined)
          this.existing(b.path_on_host as string, 'Unable to patch the block device:');
        this.drives.set(params.drive_id!, { ...d, ...b });
        return;
      }
      case 'PUT /network-interfaces/{iface_id}':
        return this.putNic(params.iface_id!, b);
      case 'PATCH /network-interfaces/{iface_id}': {
        const n = this.nics.get(params.iface_id!);
        this.sameId(params.iface_id!, b.iface_id, 'nic');
        if (!n) throw new Fault(`Invalid interface ID - not found: ${params.iface_id}`);
        this.nics.set(params.iface_id!, { ...n, ...b });
        return;
      }
      case 'PUT /vsock':
        return this.putVsock(b);
      case 'PUT /logger':
        return this.putLogger(b);
      case 'PUT /metrics':
        if (this.metrics) throw new Fault('Reinitialization of metrics not allowed.');
        this.metricsFd = this.openTarget(b.metrics_path as string, 'Cannot open the metrics file');
        this.metrics = b;
        this.startMetricsTimer();
        return;
      case 'PUT /balloon':
        this.balloon = b;
        return;
      case 'PATCH /balloon':
        if (!this.balloon) throw new Fault('Invalid request: the balloon device is not configured.');
        this.balloon = { ...this.balloon, ...b };
        return;
      case 'GET /balloon':
        if (!this.balloon) throw new Fault('Invalid request: the balloon device is not configured.');
        return { status: 200, body: this.balloon };
      case 'GET /balloon/statistics':
      case 'PATCH /balloon/statistics':
        if (!this.balloon?.stats_polling_interval_s)
          throw new Fault('Statistics for the balloon device are not enabled');
        if (key.startsWith('GET')) {
          const mib = this.balloon.amount_mib as number;
          return {
            status: 200,
            body: { target_pages: mib * 256, actual_pages: mib * 256, target_mib: mib, actual_mib: mib },
          };
        }
        return;
      case 'PUT /entropy':
        this.entropy = b;
        return;
      case 'PUT /cpu-config':
        this.cpuConfig = b;
        return;
      case 'PUT /serial':
        if (b.serial_out_path !== undefined)
          this.creatable(b.serial_out_path as string, 'Cannot open serial output');
        this.serial = b;
        return;
      case 'PUT /hotplug/memory':
        this.memoryHotplug = b;
        return;
      case 'GET /hotplug/memory':
        if (!this.memoryHotplug) throw new Fault('Memory hotplug is not configured.');
        return { status: 200, body: { ...this.memoryHotplug, plugged_size_mib: 0, requested_size_mib: 0 } };
      case 'PUT /pmem/{id}':
        this.sameId(params.id!, b.id);
        this.existing(b.path_on_host as string, 'Unable to open the pmem backing file:');
        this.pmem.set(params.id!, b);
        return;
      case 'PUT /mmds/config':
        return this.putMmdsConfig(b);
      case 'PUT /mmds':
        this.checkMmdsSize(b);
        this.mmdsData = b;
        return;
      case 'PATCH /mmds': {
        if (this.mmdsData === null) throw new Fault('The MMDS data store is not initialized.');
        const next = mergePatch(this.mmdsData, b);
        this.checkMmdsSize(next);
        this.mmdsData = next;
        return;
      }
      case 'GET /mmds':
        return { status: 200, body: this.mmdsData ?? {} };
      case 'PATCH /vm':
        return this.patchVm(b.state as string);
      case 'PUT /snapshot/create':
        return this.createSnapshot(b);
      case 'PUT /snapshot/load':
        return this.loadSnapshot(b);
      case 'PATCH /pmem/{id}':
        this.sameId(params.id!, b.id);
        return;
      case 'ACTION InstanceStart':
        return this.instanceStart();
      case 'ACTION FlushMetrics':
        this.flushMetrics();
        return;
      case 'ACTION SendCtrlAltDel':
        if (this.state === 'Paused') {
          this.pendingReboot = true;
          return;
        }
        return { status: 204, after: () => this.guestReboot() };
      default:
        // Endpoints the simulator only records (balloon hinting, pmem and memory PATCH).
        return;
    }
  }

  private checkMachine(m: Json): Json {
    const vcpu = m.vcpu_count as number;
    if (m.smt === true && vcpu > 1 && vcpu % 2 !== 0) {
      throw new Fault(
        'The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.',
      );
    }
    if (typeof m.mem_size_mib !== 'number' || m.mem_size_mib < 1)
      throw new Fault('The memory size (MiB) is invalid.');
    if (m.huge_pages === '2M' && (m.mem_size_mib as number) % 2 !== 0) {
      throw new Fault('The memory size (MiB) must be a multiple of 2 when 2M huge pages are used.');
    }
    return m;
  }

  /** The body must name the resource of the path (from 1.2 the NIC answer quotes both ids). */
  private sameId(pathId: string, bodyId: unknown, kind: 'nic' | 'other' = 'other'): void {
    if (pathId === bodyId) return;
    throw new Fault(
      kind === 'nic' && this.at('1.2.0')
        ? `The id from the path [${pathId}] does not match the id from the body [${String(bodyId)}]!`
        : 'The id from the path does not match the id from the body!',
    );
  }

  private putDrive(id: string, b: Json): SimResponse | undefined {
    this.sameId(id, b.drive_id);
    if (b.socket !== undefined) {
      if (b.path_on_host !== undefined)
        throw new Fault('A drive is either virtio-block or vhost-user-block, not both.');
      this.existing(b.socket as string, 'Unable to connect to the vhost-user socket');
    } else {
      if (b.path_on_host === undefined) throw new Fault('A virtio-block drive needs path_on_host.');
      if (b.is_read_only === undefined) throw new Fault('A virtio-block drive needs is_read_only.');
      this.existing(
        b.path_on_host as string,
        'Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file:',
      );
    }
    if (b.is_root_device === true) {
      for (const [other, d] of this.drives) {
        if (other !== id && d.is_root_device === true) throw new Fault('A root block device already exists!');
      }
    }
    this.drives.set(id, b);
    return;
  }

  private putNic(id: string, b: Json): SimResponse | undefined {
    this.sameId(id, b.iface_id, 'nic');
    const tap = b.host_dev_name as string;
    if (tap.length === 0 || tap.length > 15) {
      throw new Fault(
        `Could not create the network device: Open tap device failed: Invalid interface name ${tap}`,
      );
    }
    const mac = b.guest_mac as string | undefined;
    if (mac !== undefined && !/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/.test(mac)) {
      throw new Fault(`Invalid MAC address: ${mac}`);
    }
    for (const [other, n] of this.nics) {
      if (other === id) continue;
      if (n.host_dev_name === tap) throw new Fault(`The host device name ${tap} is already in use.`);
      if (mac !== undefined && n.guest_mac === mac)
        throw new Fault(`The MAC address is already in use: ${mac}`);
    }
    this.nics.set(id, b);
    return;
  }

  private putVsock(b: Json): SimResponse | undefined {
    const host = this.creatable(b.uds_path as string, 'Cannot create backend for vsock device:');
    this.bindVsock(host);
    this.vsock = b;
    return;
  }

  /**
   * Firecracker binds the host side of vsock itself and fails if the path exists. A
   * host-initiated connection sends `CONNECT <port>\n`; once the guest accepts it Firecracker
   * answers `OK <hostport>\n` and the stream is the guest's; if nothing listens on that port it
   * closes the connection without a word.
   */
  private bindVsock(host: string): void {
    if (existsSync(host)) {
      throw new Fault(
        'Cannot create backend for vsock device: UnixBind(Os { code: 98, kind: AddrInUse, message: "Address in use" })',
      );
    }
    this.vsockServer?.close();
    const server = createServer({ allowHalfOpen: true }, (sock) => {
      this.vsockConnections.add(sock);
      sock.once('close', () => this.vsockConnections.delete(sock));
      sock.on('error', () => {});
      let buf = Buffer.alloc(0);
      const onData = (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        const nl = buf.indexOf(0x0a);
        if (nl < 0) {
          if (buf.length > VSOCK_MAX_COMMAND) sock.destroy();
          return;
        }
        sock.off('data', onData);
        sock.pause();
        const m = /^CONNECT (\d{1,10})$/.exec(buf.subarray(0, nl).toString('latin1'));
        const port = m ? Number(m[1]) : Number.NaN;
        if (!(port <= 0xffff_ffff)) {
          sock.destroy();
          return;
        }
        this.forwardVsock(sock, port, buf.subarray(nl + 1));
      };
      sock.on('data', onData);
    });
    server.listen(this.socketName(host));
    server.unref();
    this.vsockServer = server;
  }

  /** Connects a host connection to the guest's listener on `port` (see `guestVsockDir`). */
  private forwardVsock(host: Socket, port: number, early: Buffer): void {
    const hostPort = this.vsockLocalPort++;
    const dir = this.opts.guestVsockDir;
    if (!dir) {
      host.write(`OK ${hostPort}\n`);
      host.resume();
      return;
    }
    const guest = connect({ path: join(dir, `${port}.sock`), allowHalfOpen: true });
    this.vsockConnections.add(guest);
    guest.once('close', () => {
      this.vsockConnections.delete(guest);
      host.destroy();
    });
    host.once('close', () => guest.destroy());
    // Nobody listens on that port in the guest: the host connection is closed, no OK.
    guest.once('error', () => guest.destroy());
    guest.once('connect', () => {
      if (host.destroyed) return;
      host.write(`OK ${hostPort}\n`);
      if (early.length > 0) guest.write(early);
      host.pipe(guest);
      guest.pipe(host);
    });
  }

  /** Snapshot creation resets the vsock transport: the guest drops every open connection. */
  private resetVsockConnections(): void {
    for (const c of this.vsockConnections) c.destroy();
    this.vsockConnections.clear();
  }

  private putLogger(b: Json): SimResponse | undefined {
    if (this.logger && !this.at('1.7.0')) throw new Fault('Reinitialization of logger not allowed.');
    if (b.log_path !== undefined) {
      if (this.loggerFd !== null) closeSync(this.loggerFd);
      this.loggerFd = this.openTarget(b.log_path as string, 'Failed to open the log file');
    }
    if (b.level !== undefined) this.loggerLevel = this.parseLevel(b.level as string);
    this.logger = b;
    return;
  }

  private putMmdsConfig(b: Json): SimResponse | undefined {
    const ifaces = b.network_interfaces as string[];
    if (ifaces.length === 0) {
      throw new Fault('The list of network interface IDs that allow forwarding MMDS requests is empty.');
    }
    if (ifaces.some((i) => !this.nics.has(i))) {
      throw new Fault(
        'The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.',
      );
    }
    this.mmdsConfig = { version: 'V1', ipv4_address: '169.254.169.254', ...b };
    return;
  }

  private checkMmdsSize(data: unknown): void {
    const size = Buffer.byteLength(JSON.stringify(data));
    if (size > this.opts.mmdsSizeLimit) {
      throw new Fault(
        `The MMDS data store size ${size} exceeds the limit of ${this.opts.mmdsSizeLimit} bytes.`,
      );
    }
  }

  private vmConfig(): Json {
    const cfg: Json = {
      drives: [...this.drives.values()],
      'machine-config': this.machine,
      'network-interfaces': [...this.nics.values()],
    };
    const optional: [string, Json | null][] = [
      ['balloon', this.balloon],
      ['boot-source', this.bootSource],
      ['logger', this.logger],
      ['metrics', this.metrics],
      ['mmds-config', this.mmdsConfig],
      ['vsock', this.vsock],
      ['entropy', this.entropy],
      ['cpu-config', this.cpuConfig],
      ['memory-hotplug', this.memoryHotplug],
    ];
    for (const [k, v] of optional) if (v) cfg[k] = v;
    if (this.pmem.size > 0) cfg.pmem = [...this.pmem.values()];
    return cfg;
  }

  // ---- lifecycle ---------------------------------------------------------------------------

  private instanceStart(): SimResponse {
    if (!this.bootSource) throw new Fault('Cannot start microvm without kernel configuration.');
    const kernel = this.hostPath(this.bootSource.kernel_image_path as string);
    const magic = Buffer.alloc(4);
    try {
      const fd = openSync(kernel, 'r');
      readSync(fd, magic, 0, 4, 0);
      closeSync(fd);
    } catch (err) {
      throw new Fault(`Cannot load kernel: ${osError(err)}`);
    }
    // Firecracker on x86_64 loads an uncompressed ELF vmlinux only.
    if (!magic.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) {
      throw new Fault(
        'Cannot load kernel due to invalid memory configuration or invalid kernel image: Kernel Loader: failed to load ELF kernel image',
      );
    }
    this.state = 'Running';
    this.runGuest(TickingGuest.boot(new GuestMemory(this.memoryBytes(this.machine))));
    return { status: 204, after: () => this.guestBoot() };
  }

  private memoryBytes(machine: Json): number {
    return (machine.mem_size_mib as number) * 1024 * 1024;
  }

  /** The guest writes its memory while the VM runs (see TickingGuest); ticks show on the console now and then. */
  private runGuest(guest: TickingGuest): void {
    this.guest = guest;
    if (this.guestTimer) clearInterval(this.guestTimer);
    this.guestTimer = setInterval(() => {
      if (this.state !== 'Running' || this.exiting) return;
      const tick = guest.step();
      if (tick % CONSOLE_TICK_EVERY === 0) this.consoleOut(`nqvm-sim: guest tick ${tick}\n`);
    }, this.opts.guestTickMs ?? GUEST_TICK_MS);
    this.guestTimer.unref();
  }

  private consoleOut(text: string): void {
    const out = this.serial?.serial_out_path as string | undefined;
    if (out) writeFileSync(this.hostPath(out), text, { flag: 'a' });
    else this.opts.writeConsole(text);
  }

  private guestBoot(): void {
    const args = (this.bootSource?.boot_args as string | undefined) ?? '';
    const lines = [
      `[    0.000000] Linux version 6.1.0-sim (nqvm@firecracker-sim) #1 SMP PREEMPT_DYNAMIC`,
      `[    0.000000] Command line: ${args}`,
      `[    0.000000] BIOS-provided physical RAM map: ${this.machine.mem_size_mib} MiB`,
      `[    0.010000] smp: Brought up 1 node, ${this.machine.vcpu_count} CPUs`,
      ...[...this.drives.keys()].map(
        (id, i) => `[    0.100000] virtio_blk virtio${i}: [vd${'abcdefgh'[i]}] ${id}`,
      ),
      ...[...this.nics.keys()].map((id) => `[    0.110000] virtio_net: ${id} registered`),
      '[    0.150000] Run /init as init process',
      `nqvm-sim: guest booted (firecracker v${this.opts.version})`,
    ];
    this.consoleOut(`${lines.join('\n')}\n`);
    if (this.opts.bootTimer)
      this.log('Info', 'Guest-boot-time =   150000 us 150 ms,    15000 CPU us 15 CPU ms');
  }

  /** A line typed on the serial console: echoed back by the guest; "reboot"/"poweroff" end it. */
  consoleInput(line: string): void {
    if (!this.opts.serialInput || this.state === 'Not started') return;
    if (this.state === 'Paused') {
      this.pendingInput.push(line);
      return;
    }
    this.consoleOut(`${line}\n`);
    if (line.trim() === 'reboot' || line.trim() === 'poweroff') this.guestReboot();
  }

  private patchVm(state: string): SimResponse | undefined {
    if (state === 'Paused') {
      this.state = 'Paused';
      return;
    }
    this.state = 'Running';
    const queued = this.pendingInput;
    this.pendingInput = [];
    for (const line of queued) this.consoleInput(line);
    if (this.pendingReboot) return { status: 204, after: () => this.guestReboot() };
    return;
  }

  /** A guest reboot ends the Firecracker process: it never reboots a guest in place. */
  guestReboot(): void {
    if (this.exiting) return;
    this.exiting = true;
    this.consoleOut('reboot: Restarting system\n');
    this.log('Info', 'Vmm is stopping.');
    this.log('Info', 'Firecracker exiting successfully. exit_code=0');
    this.flushMetrics();
    setTimeout(() => this.opts.exit(0), 20);
  }

  private createSnapshot(b: Json): SimResponse | undefined {
    if (this.state !== 'Paused') {
      throw new Fault(
        'Cannot create snapshot: the microVM must be paused first (PATCH /vm {"state":"Paused"}).',
      );
    }
    const type = (b.snapshot_type as string | undefined) ?? 'Full';
    if (type === 'Diff' && !this.at('1.13.0') && this.machine.track_dirty_pages !== true) {
      throw new Fault('Diff snapshots are not enabled: the microVM was not booted with track_dirty_pages.');
    }
    const statePath = this.creatable(b.snapshot_path as string, 'Cannot create the snapshot file');
    const memPath = this.creatable(b.mem_file_path as string, 'Cannot create the memory file');
    const guest = this.guest!;
    const tracking = this.machine.track_dirty_pages === true;
    this.resetVsockConnections();
    const state = {
      magic: SNAPSHOT_MAGIC,
      format: snapshotFormat(this.opts.version),
      created_by: this.opts.version,
      type,
      machine: this.machine,
      drives: [...this.drives.values()],
      nics: [...this.nics.values()],
      vsock: this.vsock,
      balloon: this.balloon,
      entropy: this.entropy,
      mmds_config: this.mmdsConfig,
      guest: guest.state(),
    };
    writeFileSync(statePath, JSON.stringify(state));
    if (type === 'Full') guest.memory.dumpFull(memPath);
    else guest.memory.dumpDiff(memPath, tracking ? 'dirty-log' : 'resident');
    // Only a snapshot that was written resets the bitmap (Firecracker made Diffs transactional).
    if (tracking) guest.memory.resetDirtyLog();
    return;
  }

  private loadSnapshot(b: Json): SimResponse {
    if (this.bootConfigured) {
      throw new Fault('Loading a microVM snapshot not allowed after configuring boot-specific resources.');
    }
    const backend = b.mem_backend as Json | undefined;
    if (backend && b.mem_file_path !== undefined) {
      throw new Fault('Only one of `mem_backend` or `mem_file_path` may be given, not both.');
    }
    if (!backend && b.mem_file_path === undefined)
      throw new Fault('Missing `mem_backend` (or deprecated `mem_file_path`).');
    if (backend?.backend_type === 'Uffd')
      throw new Fault('The simulator serves only the File memory backend.');
    // From here on a failed load leaves Firecracker unusable: it answers and exits.
    try {
      this.applySnapshot(b, (backend?.backend_path ?? b.mem_file_path) as string);
    } catch (err) {
      if (!(err instanceof Fault)) throw err;
      const message = `Load snapshot error: ${err.message}`;
      return { status: 400, body: { fault_message: message }, after: () => this.fail(message) };
    }
    const resume = b.resume_vm === true;
    this.state = resume ? 'Running' : 'Paused';
    const tick = this.guest!.tick;
    return {
      status: 204,
      after: () => {
        if (resume) {
          this.consoleOut(
            `nqvm-sim: guest resumed from snapshot at tick ${tick} (firecracker v${this.opts.version})\n`,
          );
        }
      },
    };
  }

  private applySnapshot(b: Json, memPathApi: string): void {
    const statePath = this.existing(b.snapshot_path as string, 'Cannot open the snapshot file');
    const memPath = this.existing(memPathApi, 'Cannot open the memory file');
    let state: Json;
    try {
      state = JSON.parse(readFileSync(statePath, 'utf8')) as Json;
    } catch {
      throw new Fault('Cannot deserialize the microVM state: invalid snapshot file.');
    }
    if (state.magic !== SNAPSHOT_MAGIC)
      throw new Fault('Cannot deserialize the microVM state: invalid snapshot file.');
    if (state.format !== snapshotFormat(this.opts.version)) {
      throw new Fault(
        `Snapshot version mismatch: the snapshot has format ${String(state.format)}, this binary reads ${snapshotFormat(this.opts.version)}.`,
      );
    }
    const machine = state.machine as Json;
    const memSize = this.memoryBytes(machine);
    if (statSync(memPath).size !== memSize)
      throw new Fault('The memory file does not match the guest memory size.');
    if (!state.guest) throw new Fault('Cannot deserialize the microVM state: invalid snapshot file.');
    let guest: TickingGuest;
    try {
      guest = TickingGuest.fromSnapshot(memPath, memSize, state.guest as GuestState);
    } catch (err) {
      if (err instanceof GuestMemoryError) throw new Fault(err.message);
      throw err;
    }
    // Disks are not in the snapshot: they must be found at the recorded paths.
    for (const d of state.drives as Json[]) {
      if (d.path_on_host !== undefined)
        this.existing(d.path_on_host as string, 'Cannot restore block device');
    }
    const overrides = (b.network_overrides as Json[] | undefined) ?? [];
    const nics = (state.nics as Json[]).map((n) => ({ ...n }));
    for (const o of overrides) {
      const nic = nics.find((n) => n.iface_id === o.iface_id);
      if (!nic)
        throw new Fault(`Invalid network override: no interface ${String(o.iface_id)} in the snapshot.`);
      nic.host_dev_name = o.host_dev_name;
    }
    const vsock = state.vsock as Json | null;
    if (vsock) {
      const uds = (b.vsock_override as Json | undefined)?.uds_path ?? vsock.uds_path;
      this.bindVsock(this.creatable(uds as string, 'Cannot restore vsock device'));
      this.vsock = { ...vsock, uds_path: uds };
    }
    const track = b.track_dirty_pages === true || b.enable_diff_snapshots === true;
    this.machine = { ...machine, track_dirty_pages: track };
    for (const d of state.drives as Json[]) this.drives.set(d.drive_id as string, d);
    for (const n of nics) this.nics.set(n.iface_id as string, n);
    this.balloon = state.balloon as Json | null;
    this.entropy = state.entropy as Json | null;
    this.mmdsConfig = state.mmds_config as Json | null;
    // The MMDS data store is not part of a snapshot.
    this.mmdsData = null;
    this.bootSource = null;
    this.runGuest(guest);
  }

  /**
   * Firecracker's panic hook logs `Firecracker panicked at ...` (to the log file, or without one
   * to stdout from 1.5 and to stderr before), writes the metrics, and the process aborts.
   */
  private panic(message: string): void {
    this.exiting = true;
    const text = `Firecracker panicked at src/vmm/src/builder.rs:\n${message}`;
    if (this.loggerFd !== null) this.log('Error', text);
    else if (this.at('1.5.0')) this.opts.writeConsole(`${text}\n`);
    else this.opts.writeStderr(`${text}\n`);
    this.count('vmm', 'panic_count');
    this.flushMetrics();
    this.opts.abort();
  }

  private fail(message: string): void {
    if (this.exiting) return;
    this.exiting = true;
    this.log('Error', message);
    this.log('Error', 'Firecracker exiting with error. exit_code=1');
    setTimeout(() => this.opts.exit(1), 20);
  }

  /** Configures and starts from a `--config-file` (same shape as GET /vm/config). */
  applyConfigFile(config: Json): void {
    const put = (path: string, body: unknown) => {
      const res = this.handle('PUT', path, JSON.stringify(body));
      if (res.status >= 400) {
        throw new Fault((res.body as { fault_message: string }).fault_message);
      }
      res.after?.();
    };
    const single: [string, string][] = [
      ['logger', '/logger'],
      ['metrics', '/metrics'],
      ['machine-config', '/machine-config'],
      ['boot-source', '/boot-source'],
      ['balloon', '/balloon'],
      ['vsock', '/vsock'],
      ['entropy', '/entropy'],
      ['cpu-config', '/cpu-config'],
    ];
    this.fromConfigFile = true;
    try {
      for (const [k, path] of single) if (config[k]) put(path, config[k]);
      for (const d of (config.drives as Json[] | undefined) ?? []) put(`/drives/${d.drive_id as string}`, d);
      for (const n of (config['network-interfaces'] as Json[] | undefined) ?? []) {
        put(`/network-interfaces/${n.iface_id as string}`, n);
      }
      if (config['mmds-config']) put('/mmds/config', config['mmds-config']);
      put('/actions', { action_type: 'InstanceStart' });
    } finally {
      this.fromConfigFile = false;
    }
  }

  /** `--metadata`: the MMDS store at startup. */
  setMmdsData(data: unknown): void {
    this.mmdsData = data;
  }
}
