/**
 * Signed HTTP client for the agents' API. Every request carries an Ed25519 signature over
 * method, path, time and body digest; agents accept nothing else.
 */

import http from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import {
  type AgentExec,
  AgentExecResult,
  AgentHostPort,
  AgentSnapshot,
  type AgentSnapshotCreate,
  type AgentVmCommand,
  type AgentVmReport,
  AgentVmStats,
  type ErrorCode,
  httpStatusOf,
  isErrorCode,
  NqvmError,
  signManagerRequest,
  VmMetrics,
} from '@nqvm/api';
import { VmUsageHistory, type VmUsageQuery } from '@nqvm/api/vm-usage';
import { WebSocket } from 'ws';
import type { ManagerKey } from './manager-key';

export class AgentClient {
  constructor(
    private readonly key: ManagerKey,
    private readonly timeoutMs = 10_000,
  ) {}

  /** `timeoutMs` overrides the client's timeout for one call (snapshots take minutes). */
  async request(
    address: string,
    method: string,
    pathAndQuery: string,
    body?: unknown,
    opts: { timeoutMs?: number } = {},
  ): Promise<Response> {
    const payload = body === undefined ? '' : JSON.stringify(body);
    const headers = signManagerRequest(this.key.privateKey, method, pathAndQuery, payload);
    if (payload) headers['content-type'] = 'application/json';
    try {
      return await fetch(new URL(pathAndQuery, address), {
        method,
        headers,
        body: payload || undefined,
        signal: AbortSignal.timeout(opts.timeoutMs ?? this.timeoutMs),
      });
    } catch (err) {
      throw new NqvmError(
        'HOST_UNAVAILABLE',
        `host agent at ${address} did not answer: ${(err as Error).message}`,
      );
    }
  }

  private async expectOk(res: Response, what: string): Promise<Response> {
    if (res.ok) return res;
    let message = `${res.status}`;
    try {
      const b = (await res.json()) as { error?: { code?: string; message?: string } };
      message = `${b.error?.code ?? res.status}: ${b.error?.message ?? ''}`;
    } catch {
      // keep the status
    }
    if (res.status === 404) throw new NqvmError('NOT_FOUND', `${what}: ${message}`);
    throw new NqvmError('HOST_UNAVAILABLE', `${what} failed on the host: ${message}`);
  }

  async putVm(address: string, vmId: string, cmd: AgentVmCommand): Promise<AgentVmReport> {
    const res = await this.expectOk(await this.request(address, 'PUT', `/v1/vms/${vmId}`, cmd), 'VM command');
    return (await res.json()) as AgentVmReport;
  }

  async deleteVm(address: string, vmId: string): Promise<void> {
    await this.expectOk(await this.request(address, 'DELETE', `/v1/vms/${vmId}`), 'VM delete');
  }

  /** Removes a volume's file from its host (an absent file counts as removed). */
  async deleteVolume(address: string, volumeId: string): Promise<void> {
    const res = await this.request(address, 'DELETE', `/v1/volumes/${volumeId}`);
    if (res.status === 409 || res.status === 404) await res.body?.cancel();
    if (res.status === 409)
      throw new NqvmError('VOLUME_IN_USE', `a VM on the host still uses volume ${volumeId}`, {
        volume_id: volumeId,
      });
    // 404 here means an agent without the volume route: the file may be there, so keep the record.
    if (res.status === 404)
      throw new NqvmError('HOST_UNAVAILABLE', 'the host agent cannot delete volumes; upgrade it');
    await this.expectOk(res, 'volume delete');
  }

  /**
   * Takes a snapshot of a VM on its host and answers it once the files are written (the agent
   * answers an existing one as it is). The agent's refusals keep their codes: 409
   * VM_INVALID_STATE (no running VMM there), 400 SNAPSHOT_TYPE_UNSUPPORTED.
   */
  async putSnapshot(
    address: string,
    vmId: string,
    snapshotId: string,
    body: AgentSnapshotCreate,
    timeoutMs: number,
  ): Promise<AgentSnapshot> {
    const res = await this.request(address, 'PUT', `/v1/vms/${vmId}/snapshots/${snapshotId}`, body, {
      timeoutMs,
    });
    if (res.status === 400 || res.status === 409) throw await agentRefusal(res, 'snapshot');
    await this.expectOk(res, 'snapshot');
    return AgentSnapshot.parse(await res.json());
  }

  /** Removes a snapshot's files (absent ones count as removed); 409 SNAPSHOT_IN_USE while a VM or Diff needs them. */
  async deleteSnapshot(address: string, snapshotId: string): Promise<void> {
    const res = await this.request(address, 'DELETE', `/v1/snapshots/${snapshotId}`);
    if (res.status === 409) throw await agentRefusal(res, 'snapshot delete');
    // 404 here means an agent without the snapshot routes: the files may be there, so keep the record.
    if (res.status === 404) {
      await res.body?.cancel();
      throw new NqvmError('HOST_UNAVAILABLE', 'the host agent cannot delete snapshots; upgrade it');
    }
    await this.expectOk(res, 'snapshot delete');
  }

  /**
   * Runs a command in a running VM's guest through its guest agent and answers once it ended
   * (within `timeoutMs`: the command's own timeout plus a margin). The agent's refusals keep
   * their codes: 400 EXEC_FAILED (it cannot start), 409 VM_INVALID_STATE, GUEST_AGENT_UNAVAILABLE;
   * a host that does not hold the VM is a 409 VM_INVALID_STATE.
   */
  async exec(address: string, vmId: string, body: AgentExec, timeoutMs: number): Promise<AgentExecResult> {
    const res = await this.request(address, 'POST', `/v1/vms/${vmId}/exec`, body, { timeoutMs });
    await this.refuseOn4xx(res, 'exec');
    await this.expectOk(res, 'exec');
    return AgentExecResult.parse(await res.json());
  }

  /**
   * A container's output as the agent's text stream (lines `<RFC 3339 time> <stream> <text>`, or
   * the text alone). Only the wait for the response head is bounded by the client's timeout: a
   * followed stream lasts as long as the container's VM runs, or until `signal` aborts it (the API
   * client went away). Node's http client, not fetch, whose body timeout would cut a quiet
   * stream. The agent's 4xx refusals keep their codes.
   *
   * @example
   * const lines = await agents.logs(host.address, vm.id, { tail: 100, follow: true, timestamps: true, stream: 'all' }, ac.signal);
   * lines.pipe(reply.raw);
   */
  async logs(
    address: string,
    vmId: string,
    q: { tail?: number; follow: boolean; timestamps: boolean; stream: 'all' | 'stdout' | 'stderr' },
    signal: AbortSignal,
  ): Promise<Readable> {
    const query = new URLSearchParams({
      ...(q.tail !== undefined ? { tail: String(q.tail) } : {}),
      follow: q.follow ? '1' : '0',
      timestamps: q.timestamps ? '1' : '0',
      stream: q.stream,
    });
    const pathAndQuery = `/v1/vms/${vmId}/logs?${query}`;
    const url = new URL(pathAndQuery, address);
    const headers = signManagerRequest(this.key.privateKey, 'GET', pathAndQuery, '');
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const req = (url.protocol === 'https:' ? https : http).request(url, { method: 'GET', headers, signal });
      const timer = setTimeout(
        () => req.destroy(new Error(`no answer within ${this.timeoutMs} ms`)),
        this.timeoutMs,
      );
      req.once('response', (r) => {
        clearTimeout(timer);
        resolve(r);
      });
      req.on('error', (err) => {
        clearTimeout(timer);
        if (signal.aborted) return reject(signal.reason ?? err);
        reject(new NqvmError('HOST_UNAVAILABLE', `host agent at ${address} did not answer: ${err.message}`));
      });
      req.end();
    });
    const status = res.statusCode ?? 0;
    if (status >= 200 && status < 300) return res;
    const chunks: Buffer[] = [];
    for await (const c of res) chunks.push(c as Buffer);
    const answer = new Response(Buffer.concat(chunks), { status });
    await this.refuseOn4xx(answer, 'logs');
    await this.expectOk(answer, 'logs');
    throw new NqvmError('HOST_UNAVAILABLE', `logs: the host answered ${status}`);
  }

  /** Whether a program on the host listens on the port (a forward of it would shadow it). */
  async listensOn(address: string, proto: 'tcp' | 'udp', port: number): Promise<boolean> {
    const res = await this.expectOk(
      await this.request(address, 'GET', `/v1/host/ports/${proto}/${port}`, undefined, { timeoutMs: 3_000 }),
      'port check',
    );
    return AgentHostPort.parse(await res.json()).listening;
  }

  /** The VMM process's and the guest's figures for a VM on its host. */
  async stats(address: string, vmId: string): Promise<AgentVmStats> {
    const res = await this.request(address, 'GET', `/v1/vms/${vmId}/stats`);
    await this.refuseOn4xx(res, 'stats');
    await this.expectOk(res, 'stats');
    return AgentVmStats.parse(await res.json());
  }

  /** Throws an agent's 4xx as the API's error (404: the host does not hold the VM). */
  private async refuseOn4xx(res: Response, what: string): Promise<void> {
    if (res.status === 404) {
      await res.body?.cancel();
      throw new NqvmError('VM_INVALID_STATE', `the host does not hold this VM (yet): ${what} refused`);
    }
    if (res.status >= 400 && res.status < 500) throw await agentRefusal(res, what);
  }

  async metrics(address: string, vmId: string): Promise<VmMetrics> {
    const res = await this.expectOk(await this.request(address, 'GET', `/v1/vms/${vmId}/metrics`), 'metrics');
    return VmMetrics.parse(await res.json());
  }

  /** A VM's usage history as its host keeps it. */
  async usage(
    address: string,
    vmId: string,
    resolution: VmUsageQuery['resolution'],
  ): Promise<VmUsageHistory> {
    const res = await this.expectOk(
      await this.request(address, 'GET', `/v1/vms/${vmId}/usage?resolution=${resolution}`),
      'usage',
    );
    return VmUsageHistory.parse(await res.json());
  }

  /** The agent's Prometheus text (`GET /metrics`), as it answered it. */
  async scrapeMetrics(address: string): Promise<{ contentType: string; body: string }> {
    const res = await this.expectOk(await this.request(address, 'GET', '/metrics'), 'metrics scrape');
    return {
      contentType: res.headers.get('content-type') ?? 'text/plain; version=0.0.4',
      body: await res.text(),
    };
  }

  async consoleTail(address: string, vmId: string, bytes: number): Promise<Buffer> {
    const res = await this.expectOk(
      await this.request(address, 'GET', `/v1/vms/${vmId}/console?tail=${bytes}`),
      'console',
    );
    return Buffer.from(await res.arrayBuffer());
  }

  /**
   * Opens the agent's console WebSocket for one client, signed like every agent request; the
   * signed query carries the client's write permission and display name. Attach listeners to
   * `socket` at once (the agent sends `hello` and the scrollback as soon as it is open), then
   * await `opened`, which rejects with the reason when the agent refuses or cannot be reached.
   *
   * @example
   * const { socket, opened } = agents.connectConsole(host.address, vm.id, { write: true, user: 'alice', scrollback: 65536 });
   * socket.on('message', relay);
   * await opened;
   */
  connectConsole(
    address: string,
    vmId: string,
    q: { write: boolean; user: string; scrollback: number },
  ): AgentWsConnection {
    return this.connectWebSocket(
      address,
      `/v1/vms/${vmId}/console/ws?scrollback=${q.scrollback}&write=${q.write ? 1 : 0}&user=${encodeURIComponent(q.user)}`,
      'console',
      (status, body) => consoleRefusal(address, status, body),
    );
  }

  /**
   * Opens the agent's exec WebSocket: one command in the VM's guest (protocol: @nqvm/api exec).
   * Used as connectConsole is; a refusal keeps the agent's 4xx code (404: the host does not hold
   * the VM, a 409 VM_INVALID_STATE).
   *
   * @example
   * const { socket, opened } = agents.connectExec(host.address, vm.id, { argv: ['/bin/sh'], tty: true, rows: 24, cols: 80 });
   */
  connectExec(
    address: string,
    vmId: string,
    q: { argv: string[]; tty: boolean; rows: number; cols: number; user?: string; working_dir?: string },
  ): AgentWsConnection {
    const query = new URLSearchParams({
      command: JSON.stringify(q.argv),
      tty: q.tty ? '1' : '0',
      rows: String(q.rows),
      cols: String(q.cols),
      ...(q.user ? { user: q.user } : {}),
      ...(q.working_dir ? { working_dir: q.working_dir } : {}),
    });
    return this.connectWebSocket(address, `/v1/vms/${vmId}/exec/ws?${query}`, 'exec', (status, body) =>
      execRefusal(address, status, body),
    );
  }

  /** A signed WebSocket to the agent; `opened` rejects with `refusal`'s error on a non-101 answer. */
  private connectWebSocket(
    address: string,
    pathAndQuery: string,
    what: string,
    refusal: (status: number, body: Buffer) => NqvmError,
  ): AgentWsConnection {
    const url = new URL(pathAndQuery, address);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const headers = signManagerRequest(this.key.privateKey, 'GET', `${url.pathname}${url.search}`);
    const socket = new WebSocket(url, {
      headers,
      handshakeTimeout: this.timeoutMs,
      perMessageDeflate: false,
    });
    // 'close' follows every error; the relay acts on that.
    socket.on('error', () => {});
    const opened = new Promise<void>((resolve, reject) => {
      const unavailable = (why: string) =>
        reject(new NqvmError('HOST_UNAVAILABLE', `host agent at ${address} ${why}`));
      socket.once('open', () => resolve());
      socket.once('unexpected-response', (req, res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          req.destroy();
          reject(refusal(res.statusCode ?? 0, Buffer.concat(chunks)));
        });
        res.on('error', () => unavailable(`answered ${res.statusCode} to the ${what} upgrade`));
      });
      socket.once('error', (err) => unavailable(`did not answer: ${err.message}`));
      socket.once('close', () => unavailable(`closed the ${what} connection`));
    });
    return { socket, opened };
  }
}

/** A WebSocket to an agent (console, exec) and the promise of its opening. */
export interface AgentWsConnection {
  socket: WebSocket;
  opened: Promise<void>;
}

/**
 * The code of an agent's refusal as the API answers it: the agent's own when the catalogue has it
 * with that status; otherwise (an agent of another version) VALIDATION_FAILED for a 400 and
 * CONFLICT, the host refusing the work, for any other status.
 */
function relayedCode(code: unknown, status: number): ErrorCode {
  if (isErrorCode(code) && httpStatusOf(code) === status) return code;
  return status === 400 ? 'VALIDATION_FAILED' : 'CONFLICT';
}

/**
 * An agent's 4xx refusal as the same domain error, so its code and reason reach the API client.
 * Codes the manager does not know become CONFLICT (409) or VALIDATION_FAILED (400).
 */
async function agentRefusal(res: Response, what: string): Promise<NqvmError> {
  let body: { error?: { code?: string; message?: string; details?: Record<string, unknown> } } = {};
  try {
    body = (await res.json()) as typeof body;
  } catch {
    // keep the status
  }
  return new NqvmError(
    relayedCode(body.error?.code, res.status),
    `${what} refused by the host: ${body.error?.message || res.status}`,
    body.error?.details,
  );
}

/** An exec upgrade the agent refused: its 4xx as the API's error, anything else as the host's trouble. */
function execRefusal(address: string, status: number, body: Buffer): NqvmError {
  let b: { error?: { code?: string; message?: string; details?: Record<string, unknown> } } = {};
  try {
    b = JSON.parse(body.toString('utf8'));
  } catch {
    // keep the status
  }
  const message = b.error?.message || String(status);
  if (status === 404)
    return new NqvmError('VM_INVALID_STATE', `the host does not hold this VM (yet): ${message}`);
  if (status >= 400 && status < 500) {
    return new NqvmError(
      relayedCode(b.error?.code, status),
      `exec refused by the host: ${message}`,
      b.error?.details,
    );
  }
  return new NqvmError('HOST_UNAVAILABLE', `host agent at ${address} refused the exec: ${message}`);
}

function consoleRefusal(address: string, status: number, body: Buffer): NqvmError {
  let message = `${status}`;
  try {
    const b = JSON.parse(body.toString('utf8')) as { error?: { code?: string; message?: string } };
    message = `${b.error?.code ?? status}: ${b.error?.message ?? ''}`;
  } catch {
    // keep the status
  }
  if (status === 404)
    return new NqvmError('VM_INVALID_STATE', `the host does not hold this VM (yet): ${message}`);
  return new NqvmError('HOST_UNAVAILABLE', `host agent at ${address} refused the console: ${message}`);
}
