import { randomUUID } from 'node:crypto';
import { rmSync } from 'node:fs';
import {
  type ErrorCode,
  httpStatusOf,
  NONCE_HEADER,
  SIGNATURE_HEADER,
  signManagerRequest,
  TIMESTAMP_HEADER,
} from '@nqvm/api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Agent } from './agent';
import { FakeDriver } from './fake-driver';
import {
  fakeImages,
  managerKeys,
  SignedAgentClient,
  startStandaloneAgent,
  tempDir,
  vmCommand,
} from './testing';

describe('manager signatures on the agent API', () => {
  const keys = managerKeys();
  const otherKeys = managerKeys();
  const dir = tempDir();
  let agent: Agent;
  let client: SignedAgentClient;
  let images: ReturnType<typeof fakeImages>;

  beforeAll(async () => {
    images = fakeImages(dir);
    ({ agent } = await startStandaloneAgent({
      stateDir: `${dir}/state`,
      drivers: [new FakeDriver('qemu')],
      publicKeyPem: keys.publicKeyPem,
    }));
    client = new SignedAgentClient(agent.url, keys.privateKey);
  });

  afterAll(async () => {
    await agent?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function expect401(res: Response): Promise<void> {
    expect(res.status).toBe(401);
    const body = (await res.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('UNAUTHENTICATED');
    expect(typeof body.error.message).toBe('string');
  }

  it('serves healthz without a signature', async () => {
    const res = await fetch(`${agent.url}/v1/healthz`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: 'ok' });
  });

  it('accepts a valid signature', async () => {
    const res = await client.list();
    expect(res.status).toBe(200);
    expect(res.json).toEqual({ items: [] });
  });

  it('refuses an unsigned request', async () => {
    await expect401(await fetch(`${agent.url}/v1/vms`));
    const id = randomUUID();
    await expect401(
      await fetch(`${agent.url}/v1/vms/${id}`, {
        method: 'PUT',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(vmCommand(1, 'running', images)),
      }),
    );
    expect(agent.vms()).toEqual([]);
  });

  it('refuses a tampered body', async () => {
    const id = randomUUID();
    const signed = JSON.stringify(vmCommand(1, 'stopped', images));
    const sent = JSON.stringify(vmCommand(1, 'running', images));
    const headers = signManagerRequest(keys.privateKey, 'PUT', `/v1/vms/${id}`, signed);
    await expect401(
      await fetch(`${agent.url}/v1/vms/${id}`, {
        method: 'PUT',
        headers: { ...headers, 'content-type': 'application/json' },
        body: sent,
      }),
    );
    expect(agent.vms()).toEqual([]);
  });

  it('refuses a signature over another path or method', async () => {
    const headers = signManagerRequest(keys.privateKey, 'GET', '/v1/vms?x=1');
    await expect401(await fetch(`${agent.url}/v1/vms`, { headers }));
    const del = signManagerRequest(keys.privateKey, 'GET', `/v1/vms/${randomUUID()}`);
    await expect401(await fetch(`${agent.url}/v1/vms/${randomUUID()}`, { method: 'DELETE', headers: del }));
  });

  it('refuses a signature by another key', async () => {
    const other = new SignedAgentClient(agent.url, otherKeys.privateKey);
    expect((await other.list()).status).toBe(401);
  });

  it('refuses a stale or future timestamp', async () => {
    expect((await client.call('GET', '/v1/vms', undefined, Date.now() - 61_000)).status).toBe(401);
    expect((await client.call('GET', '/v1/vms', undefined, Date.now() + 61_000)).status).toBe(401);
    expect((await client.call('GET', '/v1/vms', undefined, Date.now() - 30_000)).status).toBe(200);
  });

  it('accepts a signed request once: a replay of the same bytes is refused', async () => {
    const id = randomUUID();
    const body = JSON.stringify(vmCommand(1, 'stopped', images));
    const headers = {
      ...signManagerRequest(keys.privateKey, 'PUT', `/v1/vms/${id}`, body),
      'content-type': 'application/json',
    };
    const send = () => fetch(`${agent.url}/v1/vms/${id}`, { method: 'PUT', headers, body });
    expect((await send()).status).toBeLessThan(300);
    const replayed = await send();
    await expect401(replayed.clone());
    expect(((await replayed.json()) as { error: { message: string } }).error.message).toContain('replayed');
    // Two requests with the same method, path, body and millisecond are still two requests.
    const at = Date.now();
    for (let i = 0; i < 2; i++) expect((await client.call('GET', '/v1/vms', undefined, at)).status).toBe(200);
  });

  it('refuses a request without a nonce', async () => {
    const headers = signManagerRequest(keys.privateKey, 'GET', '/v1/vms');
    delete headers[NONCE_HEADER];
    await expect401(await fetch(`${agent.url}/v1/vms`, { headers }));
  });

  it('refuses garbage headers', async () => {
    await expect401(
      await fetch(`${agent.url}/v1/vms`, {
        headers: { [TIMESTAMP_HEADER]: 'yesterday', [SIGNATURE_HEADER]: 'AAAA' },
      }),
    );
    await expect401(
      await fetch(`${agent.url}/v1/vms`, {
        headers: { [TIMESTAMP_HEADER]: String(Date.now()), [SIGNATURE_HEADER]: 'not base64 at all!' },
      }),
    );
  });

  it('refuses unknown routes without a signature the same way', async () => {
    await expect401(await fetch(`${agent.url}/v1/nothing-here`));
    const res = await client.call('GET', '/v1/nothing-here');
    expect(res.status).toBe(404);
  });

  it("answers Fastify's own refusals with the catalogue's codes, at their statuses", async () => {
    const answers: Array<[number, string | undefined]> = [];
    const note = async (res: Response) => {
      const body = (await res.json()) as { error?: { code?: string } };
      answers.push([res.status, body.error?.code]);
    };
    const id = randomUUID();
    const signed = (method: string, path: string, body = '') =>
      signManagerRequest(keys.privateKey, method, path, body);
    await note(await fetch(`${agent.url}/v1/nothing-here`, { headers: signed('GET', '/v1/nothing-here') }));
    // The body limit holds before the signature over the body is checked.
    await note(
      await fetch(`${agent.url}/v1/vms/${id}`, {
        method: 'PUT',
        headers: { ...signed('PUT', `/v1/vms/${id}`, '{}'), 'content-type': 'application/json' },
        body: 'x'.repeat(2 * 1024 * 1024),
      }),
    );
    await note(
      await fetch(`${agent.url}/v1/vms/${id}`, {
        method: 'PUT',
        headers: { ...signed('PUT', `/v1/vms/${id}`, '{}'), 'content-type': 'not a media type' },
        body: '{}',
      }),
    );
    await note(await fetch(`${agent.url}/v1/vms/%E0%A4%A`));
    expect(answers).toEqual([
      [404, 'ROUTE_NOT_FOUND'],
      [413, 'BODY_TOO_LARGE'],
      [415, 'UNSUPPORTED_MEDIA_TYPE'],
      [400, 'VALIDATION_FAILED'],
    ]);
    for (const [status, code] of answers) expect(httpStatusOf(code as ErrorCode)).toBe(status);
  });

  it('validates signed bodies after the signature', async () => {
    const id = randomUUID();
    const res = await client.call('PUT', `/v1/vms/${id}`, { generation: 0 });
    expect(res.status).toBe(400);
    expect(res.json.error.code).toBe('VALIDATION_FAILED');
    const bad = await client.call('PUT', '/v1/vms/not-a-uuid', vmCommand(1, 'running', images));
    expect(bad.status).toBe(400);
  });

  it('answers the console of an unknown VM with 404', async () => {
    const res = await client.call('GET', `/v1/vms/${randomUUID()}/console?tail=10`);
    expect(res.status).toBe(404);
    expect(res.json.error.code).toBe('VM_NOT_FOUND');
  });
});
