/**
 * Signed HTTP client for the agents' API. Every request carries an Ed25519 signature over
 * method, path, time and body digest; agents accept nothing else.
 */
import {
  type AgentVmCommand,
  type AgentVmReport,
  NqvmError,
  ServiceUnavailableError,
  signManagerRequest,
  VmMetrics,
} from '@nqvm/api';
import type { ManagerKey } from './manager-key';

export class AgentClient {
  constructor(
    private readonly key: ManagerKey,
    private readonly timeoutMs = 10_000,
  ) {}

  async request(address: string, method: string, pathAndQuery: string, body?: unknown): Promise<Response> {
    const payload = body === undefined ? '' : JSON.stringify(body);
    const headers = signManagerRequest(this.key.privateKey, method, pathAndQuery, payload);
    if (payload) headers['content-type'] = 'application/json';
    try {
      return await fetch(new URL(pathAndQuery, address), {
        method,
        headers,
        body: payload || undefined,
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (err) {
      throw new ServiceUnavailableError(
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
    throw new ServiceUnavailableError('HOST_UNAVAILABLE', `${what} failed on the host: ${message}`);
  }

  async putVm(address: string, vmId: string, cmd: AgentVmCommand): Promise<AgentVmReport> {
    const res = await this.expectOk(await this.request(address, 'PUT', `/v1/vms/${vmId}`, cmd), 'VM command');
    return (await res.json()) as AgentVmReport;
  }

  async deleteVm(address: string, vmId: string): Promise<void> {
    await this.expectOk(await this.request(address, 'DELETE', `/v1/vms/${vmId}`), 'VM delete');
  }

  async metrics(address: string, vmId: string): Promise<VmMetrics> {
    const res = await this.expectOk(await this.request(address, 'GET', `/v1/vms/${vmId}/metrics`), 'metrics');
    return VmMetrics.parse(await res.json());
  }

  async consoleTail(address: string, vmId: string, bytes: number): Promise<Buffer> {
    const res = await this.expectOk(
      await this.request(address, 'GET', `/v1/vms/${vmId}/console?tail=${bytes}`),
      'console',
    );
    return Buffer.from(await res.arrayBuffer());
  }
}
