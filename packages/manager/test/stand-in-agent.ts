/**
 * A host agent stand-in for manager tests: an HTTP server that accepts only requests signed
 * with the manager's key, runs VMs as records (a command's desired state is reached at once),
 * takes snapshots as records, answers volume and snapshot deletes as a test tells it, and
 * heartbeats like an agent (reporting `deleted` VMs until the manager has seen them). Container
 * VMs report their process as a test drives it, keep log lines a test adds (served and
 * followed like the agent's logs route), and answer exec (by default: stdout is the stdin, or
 * the argv), stats and the exec WebSocket (it echoes). It records every request in order.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import {
  type AgentExec,
  type AgentExecResult,
  type AgentSnapshot,
  type AgentSnapshotCreate,
  type AgentVmCommand,
  type AgentVmReport,
  type AgentVmStats,
  type DriverReport,
  type ExecServerMessage,
  type HostInterface,
  ReplayGuard,
  verifyManagerSignature,
} from '@nqvm/api';
import { WebSocketServer } from 'ws';
import type { z } from 'zod';

export interface AgentCall {
  method: string;
  path: string;
  // biome-ignore lint/suspicious/noExplicitAny: JSON bodies of tests
  body: any;
}

/** How the stand-in answers `DELETE /v1/volumes/{id}` and `DELETE /v1/snapshots/{id}`. */
export type VolumeDeleteMode = 'removed' | 'in-use' | 'down';

/** The sizes every snapshot the stand-in takes reports. */
export const SNAPSHOT_SIZES = { state_bytes: 65_536, memory_bytes: 268_435_456, disk_bytes: 104_857_600 };

/** How the stand-in answers a PUT of a snapshot it does not have yet. */
export interface SnapshotAnswer {
  status: 'ready' | 'failed';
  error: string | null;
  guest_agent: boolean;
}

const QEMU_ONLY: Array<z.input<typeof DriverReport>> = [
  { kind: 'qemu', available: true, version: '8.2.2', kvm: false, features: [] },
];

/** The interfaces a stand-in reports unless a test says otherwise. */
const STAND_IN_INTERFACES: HostInterface[] = [{ name: 'eth0', kind: 'ether', up: true }];

export type ContainerReport = NonNullable<AgentVmReport['container']>;
export type ContainerExit = NonNullable<ContainerReport['exit']>;

/** How a container VM's process starts when the VM boots: it runs, it cannot start (127), or it waits for the test. */
export type ContainerStart = 'runs' | 'unstartable' | 'held';

export interface LogLine {
  ts: number;
  stream: 'stdout' | 'stderr';
  line: string;
}

/** What every stats request is answered with. */
export const STAND_IN_STATS: AgentVmStats = {
  host: { pid: 4242, rss_bytes: 104_857_600, cpu_seconds: 1.25 },
  guest: {
    mem_total_bytes: 268_435_456,
    mem_available_bytes: 201_326_592,
    load_1m: 0.05,
    uptime_s: 12,
    processes: 3,
  },
};

/** One exec WebSocket the stand-in served: its query, the input it got and the control messages. */
export interface ExecSession {
  vmId: string;
  query: URLSearchParams;
  input: Buffer[];
  messages: unknown[];
}

/** The default exec answer: stdout is the stdin, else the argv joined; stderr names the user. */
export function echoExec(body: AgentExec): [number, AgentExecResult] {
  const stdin = body.stdin_b64 === null ? null : Buffer.from(body.stdin_b64, 'base64');
  return [
    200,
    {
      exit_code: 0,
      signal: null,
      stdout_b64: (stdin ?? Buffer.from(body.argv.join(' '))).toString('base64'),
      stderr_b64: Buffer.from(`as ${body.user ?? 'root'}`).toString('base64'),
      truncated: false,
      timed_out: false,
      duration_ms: 7,
    },
  ];
}

const REPORTED: Record<AgentVmCommand['desired'], AgentVmReport['state']> = {
  running: 'running',
  paused: 'paused',
  stopped: 'stopped',
};

export class StandInAgent {
  readonly calls: AgentCall[] = [];
  readonly vms = new Map<string, AgentVmReport>();
  /** The last spec each VM was commanded with. */
  readonly specs = new Map<string, AgentVmCommand['spec']>();
  /** Every command each VM got, in order (resends included). */
  readonly commands = new Map<string, AgentVmCommand[]>();
  /** The snapshots this host keeps, by id. */
  readonly snapshots = new Map<string, AgentSnapshot>();
  volumeDeletes: VolumeDeleteMode = 'removed';
  /** Ports a program on this host listens on, as `tcp/8080`, as `GET /v1/host/ports` answers. */
  listening = new Set<string>();
  snapshotDeletes: VolumeDeleteMode = 'removed';
  snapshotAnswer: SnapshotAnswer = { status: 'ready', error: null, guest_agent: false };
  /** How the process of a container VM that boots starts. */
  containerStart: ContainerStart = 'runs';
  /** Each container VM's output. */
  readonly logs = new Map<string, LogLine[]>();
  /** Followed log responses that ended because the manager closed them (its client left). */
  followsAbandoned = 0;
  /** How `POST /v1/vms/{id}/exec` is answered (status, body). */
  execAnswer: (body: AgentExec) => [number, unknown] = echoExec;
  /** The boot steps a VM commanded to run (or pause) reports, as a real agent times its boot. */
  bootSteps: NonNullable<AgentVmReport['boot_steps']> | null = null;
  readonly execSessions: ExecSession[] = [];
  hostId = '';
  private readonly followers = new Map<
    string,
    Set<{ res: http.ServerResponse; write: (l: LogLine) => void }>
  >();
  private readonly wss = new WebSocketServer({ noServer: true });
  private readonly replays = new ReplayGuard();
  private credential = '';
  private timer?: NodeJS.Timeout;
  private snapshotGate: Promise<void> | null = null;
  private beating = true;
  private lastBeat: Promise<void> = Promise.resolve();

  private constructor(
    private readonly server: http.Server,
    private readonly managerUrl: string,
    private readonly managerKey: KeyObject,
    /** What the heartbeats report; a test may change its drivers (and interfaces: reportInterfaces). */
    readonly capacity: {
      drivers: Array<z.input<typeof DriverReport>>;
      interfaces: HostInterface[];
    } & Record<string, unknown>,
  ) {}

  /** Starts the stand-in, joins the manager as host `name`, and heartbeats every 500 ms. */
  static async join(
    managerUrl: string,
    adminToken: string,
    managerPublicKeyPem: string,
    name: string,
    memMib = 16_384,
    drivers = QEMU_ONLY,
  ): Promise<StandInAgent> {
    const capacity = {
      vcpu: 8,
      mem_mib: memMib,
      disk_mib: 100_000,
      kvm: false,
      drivers: drivers.map((d) => ({ ...d })),
      interfaces: STAND_IN_INTERFACES.map((i) => ({ ...i })),
    };
    const server = http.createServer();
    const agent = new StandInAgent(server, managerUrl, createPublicKey(managerPublicKeyPem), capacity);
    server.on('request', (req, res) => void agent.handle(req, res));
    server.on('upgrade', (req, socket, head) => agent.upgrade(req, socket as Socket, head));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const jt = await agent.post('/api/v1/join-tokens', adminToken, { description: `for ${name}` });
    const reg = await agent.post('/api/v1/agent/register', jt.token, {
      name,
      address,
      agent_version: '0.1.0',
      capacity,
    });
    agent.hostId = reg.host_id;
    agent.credential = reg.credential;
    const beat = () => {
      agent.timer = setTimeout(() => {
        agent.lastBeat = agent.beating ? agent.heartbeat() : Promise.resolve();
        void agent.lastBeat.finally(beat);
      }, 500);
    };
    beat();
    return agent;
  }

  /** Sends one heartbeat; `deleted` reports are dropped once the manager took them. */
  async heartbeat(): Promise<void> {
    const reports = [...this.vms.values()];
    try {
      await this.post('/api/v1/agent/heartbeat', this.credential, { capacity: this.capacity, vms: reports });
    } catch {
      return; // the manager is closing; the next beat retries
    }
    for (const r of reports) if (r.state === 'deleted' && this.vms.get(r.id) === r) this.vms.delete(r.id);
  }

  /** From now on this host reports these interfaces; resolves once a heartbeat said so. */
  async reportInterfaces(interfaces: HostInterface[]): Promise<void> {
    this.capacity.interfaces = interfaces;
    await this.lastBeat;
    await this.heartbeat();
  }

  /**
   * Stops heartbeating (once the one in flight has landed), so the manager keeps the VM states
   * it last heard; answers the function that resumes.
   */
  async silence(): Promise<() => void> {
    this.beating = false;
    await this.lastBeat;
    return () => {
      this.beating = true;
    };
  }

  /** Snapshot PUTs wait (the manager sees `creating`) until the returned function is called. */
  holdSnapshots(): () => void {
    let release!: () => void;
    this.snapshotGate = new Promise<void>((r) => {
      release = r;
    });
    return () => {
      this.snapshotGate = null;
      release();
    };
  }

  /** The process of a container VM started (held starts). */
  processStarted(vmId: string): void {
    this.setContainer(vmId, (c) => ({
      ...c,
      running: true,
      exit: null,
      started_at: new Date().toISOString(),
      finished_at: null,
    }));
  }

  /** The process exited: its VM powers off (the restart policy is the test's to apply). */
  processExited(vmId: string, exit: ContainerExit): void {
    this.setContainer(vmId, (c) => ({ ...c, running: false, exit, finished_at: new Date().toISOString() }), {
      state: 'stopped',
      pid: null,
    });
    this.endLogs(vmId);
  }

  /** The restart policy brought the process back in a new VM run. */
  restartedByPolicy(vmId: string): void {
    this.setContainer(
      vmId,
      (c) => ({
        ...c,
        running: true,
        exit: null,
        started_at: new Date().toISOString(),
        finished_at: null,
        restarts: c.restarts + 1,
      }),
      { state: 'running', pid: 4243 },
    );
  }

  /**
   * The VM changed on this host by itself (its VMM died, its restart policy brought it back, the
   * agent restarted and lost it): from the next heartbeat on, its report is this.
   */
  changeReport(vmId: string, change: Partial<Omit<AgentVmReport, 'id' | 'generation'>>): void {
    const r = this.vms.get(vmId);
    if (!r) throw new Error(`VM ${vmId} is not on this host`);
    this.vms.set(vmId, { ...r, ...change });
  }

  /** Adds a line of output; followers get it at once. */
  addLog(vmId: string, stream: LogLine['stream'], line: string): void {
    const l = { ts: Date.now(), stream, line };
    this.logs.set(vmId, [...(this.logs.get(vmId) ?? []), l]);
    for (const f of this.followers.get(vmId) ?? []) f.write(l);
  }

  /** How many follow the log of a VM now. */
  following(vmId: string): number {
    return this.followers.get(vmId)?.size ?? 0;
  }

  /** Ends the followed log streams of a VM, as the agent does when the container's VM is down. */
  endLogs(vmId: string): void {
    for (const f of this.followers.get(vmId) ?? []) f.res.end();
    this.followers.delete(vmId);
  }

  async close(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    for (const c of this.wss.clients) c.terminate();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  // biome-ignore lint/suspicious/noExplicitAny: JSON bodies of tests
  private async post(p: string, token: string, body: unknown): Promise<any> {
    const res = await fetch(`${this.managerUrl}${p}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${p}: ${res.status} ${text}`);
    return JSON.parse(text);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks);
    const method = req.method ?? 'GET';
    const url = req.url ?? '/';
    const send = (status: number, body?: unknown) => {
      res.writeHead(status, body === undefined ? {} : { 'content-type': 'application/json' });
      res.end(body === undefined ? undefined : JSON.stringify(body));
    };
    try {
      verifyManagerSignature(
        {
          method,
          url,
          timestamp: req.headers['x-nqvm-timestamp'] as string | undefined,
          nonce: req.headers['x-nqvm-nonce'] as string | undefined,
          signature: req.headers['x-nqvm-signature'] as string | undefined,
          body: raw,
        },
        this.managerKey,
        this.replays,
      );
    } catch {
      return send(401, { error: { code: 'UNAUTHENTICATED', message: 'bad signature' } });
    }
    const body = raw.length ? JSON.parse(raw.toString('utf8')) : undefined;
    this.calls.push({ method, path: url, body });
    const [, , kind, id] = url.split('/');
    if (kind === 'vms' && id && method === 'PUT' && url.split('/').length === 4) {
      const cmd = body as AgentVmCommand;
      const prev = this.vms.get(id);
      // Like a real agent, addresses it saw on the VM's NICs outlive a new command.
      const nics = prev?.nics;
      const report: AgentVmReport = {
        id,
        generation: cmd.generation,
        state: REPORTED[cmd.desired],
        error: null,
        vmm: cmd.spec.vmm ?? 'qemu',
        pid: cmd.desired === 'stopped' ? null : 4242,
        ...(nics ? { nics } : {}),
        ...(this.bootSteps && cmd.desired !== 'stopped' ? { boot_steps: this.bootSteps } : {}),
      };
      if (cmd.spec.container) this.runContainer(report, prev, cmd);
      this.vms.set(id, report);
      this.specs.set(id, cmd.spec);
      this.commands.set(id, [...(this.commands.get(id) ?? []), cmd]);
      return send(200, report);
    }
    if (kind === 'vms' && id && method === 'PUT' && url.split('/')[4] === 'snapshots') {
      return send(...(await this.takeSnapshot(id, url.split('/')[5] ?? '', body as AgentSnapshotCreate)));
    }
    if (kind === 'snapshots' && !id && method === 'GET')
      return send(200, { items: [...this.snapshots.values()] });
    if (kind === 'snapshots' && id && method === 'DELETE') {
      if (this.snapshotDeletes === 'down') {
        req.socket.destroy();
        return;
      }
      if (this.snapshotDeletes === 'in-use')
        return send(409, {
          error: {
            code: 'SNAPSHOT_IN_USE',
            message: `a VM here restored from snapshot ${id} maps its memory`,
            details: { vm_id: '00000000-0000-4000-8000-0000000000aa' },
          },
        });
      this.snapshots.delete(id);
      return send(204);
    }
    const sub = url.split('?')[0]!.split('/')[4];
    if (kind === 'vms' && id && (sub === 'logs' || sub === 'exec' || sub === 'stats')) {
      const vm = this.vms.get(id);
      if (!vm || vm.state === 'deleted')
        return send(404, { error: { code: 'VM_NOT_FOUND', message: `VM ${id} not found` } });
      if (sub === 'logs') return this.serveLogs(id, new URL(url, 'http://x').searchParams, req, res, send);
      if (sub === 'stats') return send(200, STAND_IN_STATS);
      if (vm.state !== 'running')
        return send(409, {
          error: {
            code: 'VM_INVALID_STATE',
            message: `the VM is ${vm.state}: commands run in running VMs only`,
          },
        });
      return send(...this.execAnswer(body as AgentExec));
    }
    if (kind === 'vms' && id && method === 'DELETE') {
      const report: AgentVmReport = {
        id,
        generation: this.vms.get(id)?.generation ?? 0,
        state: 'deleted',
        error: null,
        vmm: null,
        pid: null,
      };
      this.vms.set(id, report);
      this.endLogs(id);
      return send(202, report);
    }
    if (kind === 'volumes' && id && method === 'DELETE') {
      if (this.volumeDeletes === 'down') {
        req.socket.destroy();
        return;
      }
      if (this.volumeDeletes === 'in-use')
        return send(409, { error: { code: 'VOLUME_IN_USE', message: `a VM here uses volume ${id}` } });
      return send(204);
    }
    if (kind === 'host' && id === 'ports' && method === 'GET') {
      const [proto, port] = url.split('/').slice(4);
      return send(200, { proto, port: Number(port), listening: this.listening.has(`${proto}/${port}`) });
    }
    send(404, { error: { code: 'ROUTE_NOT_FOUND', message: `no route ${method} ${url}` } });
  }

  /**
   * A container VM's process across commands: a boot (or a reboot) starts a new one as
   * `containerStart` says, a stop ends a running one by SIGTERM, anything else keeps it.
   */
  private runContainer(report: AgentVmReport, prev: AgentVmReport | undefined, cmd: AgentVmCommand): void {
    const last: ContainerReport = prev?.container ?? {
      running: false,
      exit: null,
      started_at: null,
      finished_at: null,
      restarts: 0,
    };
    const now = new Date().toISOString();
    const booting =
      cmd.desired === 'running' && (cmd.reboot || prev?.state !== 'running') && prev?.state !== 'paused';
    if (cmd.desired === 'stopped' && last.running) {
      report.container = { ...last, running: false, exit: { kind: 'signal', value: 15 }, finished_at: now };
      this.endLogs(report.id);
    } else if (booting && this.containerStart === 'runs') {
      report.container = { ...last, running: true, exit: null, started_at: now, finished_at: null };
    } else if (booting && this.containerStart === 'unstartable') {
      report.state = 'stopped';
      report.pid = null;
      report.container = {
        ...last,
        running: false,
        exit: { kind: 'unstartable', value: 127 },
        finished_at: now,
      };
      this.addLog(report.id, 'stderr', 'nqvm: exec /bin/tool: no such file or directory');
    } else {
      report.container = booting ? { ...last, running: false } : last;
    }
  }

  private setContainer(
    vmId: string,
    change: (c: ContainerReport) => ContainerReport,
    vm: Partial<Pick<AgentVmReport, 'state' | 'pid'>> = {},
  ): void {
    const r = this.vms.get(vmId);
    if (!r?.container) throw new Error(`VM ${vmId} is no container VM here`);
    this.vms.set(vmId, { ...r, ...vm, container: change(r.container) });
  }

  /** The agent's logs route: `<time> <stream> <text>` lines (the text alone without timestamps). */
  private serveLogs(
    vmId: string,
    q: URLSearchParams,
    req: http.IncomingMessage,
    res: http.ServerResponse,
    send: (status: number, body?: unknown) => void,
  ) {
    if (!this.specs.get(vmId)?.container)
      return send(409, {
        error: { code: 'VM_INVALID_STATE', message: 'this VM runs no container: it has no logs' },
      });
    const stamp = q.get('timestamps') !== '0';
    const stream = q.get('stream') ?? 'all';
    const wanted = (l: LogLine) => stream === 'all' || l.stream === stream;
    const format = (l: LogLine) =>
      stamp ? `${new Date(l.ts).toISOString()} ${l.stream} ${l.line}\n` : `${l.line}\n`;
    const lines = (this.logs.get(vmId) ?? []).filter(wanted);
    const tail = q.get('tail');
    const picked = tail === null ? lines : Number(tail) === 0 ? [] : lines.slice(-Number(tail));
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
    for (const l of picked) res.write(format(l));
    const vm = this.vms.get(vmId);
    if (q.get('follow') !== '1' || vm?.state !== 'running') {
      res.end();
      return;
    }
    res.flushHeaders();
    const follower = { res, write: (l: LogLine) => wanted(l) && res.write(format(l)) };
    const set = this.followers.get(vmId) ?? new Set();
    set.add(follower);
    this.followers.set(vmId, set);
    req.socket.once('close', () => {
      if (!set.delete(follower)) return;
      this.followsAbandoned++;
    });
  }

  /** The agent's exec WebSocket: `started`, input echoed back, `eof` or `signal` end it with `exit`. */
  private upgrade(req: http.IncomingMessage, socket: Socket, head: Buffer) {
    const url = req.url ?? '/';
    const refuse = (status: number, code: string, message: string) => {
      const text = JSON.stringify({ error: { code, message } });
      socket.end(
        `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\ncontent-type: application/json\r\n` +
          `content-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`,
      );
    };
    try {
      verifyManagerSignature(
        {
          method: 'GET',
          url,
          timestamp: req.headers['x-nqvm-timestamp'] as string | undefined,
          nonce: req.headers['x-nqvm-nonce'] as string | undefined,
          signature: req.headers['x-nqvm-signature'] as string | undefined,
          body: Buffer.alloc(0),
        },
        this.managerKey,
        this.replays,
      );
    } catch {
      return refuse(401, 'UNAUTHENTICATED', 'bad signature');
    }
    this.calls.push({ method: 'GET', path: url, body: undefined });
    const parsed = new URL(url, 'http://x');
    const [, , kind, id, sub, ws] = parsed.pathname.split('/');
    if (kind !== 'vms' || !id || sub !== 'exec' || ws !== 'ws')
      return refuse(404, 'ROUTE_NOT_FOUND', 'no route');
    if (!this.vms.get(id)) return refuse(404, 'VM_NOT_FOUND', `VM ${id} not found`);
    this.wss.handleUpgrade(req, socket, head, (client) => {
      const session: ExecSession = { vmId: id, query: parsed.searchParams, input: [], messages: [] };
      this.execSessions.push(session);
      const say = (m: ExecServerMessage) => client.send(JSON.stringify(m));
      say({ type: 'started', pid: 77 });
      client.on('message', (data, binary) => {
        const bytes = Buffer.isBuffer(data) ? data : Buffer.from(data as ArrayBuffer);
        if (binary) {
          session.input.push(bytes);
          client.send(bytes, { binary: true });
          return;
        }
        const m = JSON.parse(bytes.toString('utf8')) as { type: string; signal?: number };
        session.messages.push(m);
        if (m.type === 'eof') {
          say({ type: 'exit', exit_code: 0, signal: null });
          client.close(1000, 'exited');
        } else if (m.type === 'signal') {
          say({ type: 'exit', exit_code: null, signal: m.signal ?? null });
          client.close(1000, 'exited');
        }
      });
    });
  }

  /** A snapshot as a record: of a running or paused VM, a Diff builds on the VM's latest one. */
  private async takeSnapshot(
    vmId: string,
    snapshotId: string,
    req: AgentSnapshotCreate,
  ): Promise<[number, unknown]> {
    const existing = this.snapshots.get(snapshotId);
    if (existing) return [200, existing];
    const vm = this.vms.get(vmId);
    const spec = this.specs.get(vmId);
    if (!vm || !spec || (vm.state !== 'running' && vm.state !== 'paused'))
      return [409, { error: { code: 'VM_INVALID_STATE', message: `VM ${vmId} has no running VMM here` } }];
    await this.snapshotGate;
    const latest = [...this.snapshots.values()]
      .filter((x) => x.vm_id === vmId && x.status === 'ready')
      .at(-1);
    const a = this.snapshotAnswer;
    const snap: AgentSnapshot = {
      id: snapshotId,
      vm_id: vmId,
      status: a.status,
      type: req.type,
      parent_id: req.type === 'Diff' ? (latest?.id ?? null) : null,
      vmm: vm.vmm ?? 'qemu',
      vcpu: spec.vcpu,
      mem_mib: spec.mem_mib,
      size_bytes: SNAPSHOT_SIZES.state_bytes + SNAPSHOT_SIZES.memory_bytes + SNAPSHOT_SIZES.disk_bytes,
      sizes: SNAPSHOT_SIZES,
      guest_agent: a.guest_agent,
      error: a.error,
      created_at: new Date().toISOString(),
    };
    this.snapshots.set(snapshotId, snap);
    return [200, snap];
  }
}
