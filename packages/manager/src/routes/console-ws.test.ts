/**
 * The manager's console WebSocket end to end against a real agent (fake VMM driver, real
 * ConsoleHubs on echoing console sockets), reached through a TCP proxy the test can cut: auth on
 * the upgrade, the relay, roles, agent restarts and cuts, slow clients, VM stop.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Agent, createAgent, loadAgentConfig } from '@nqvm/agent';
import { FakeDriver } from '@nqvm/agent/agent/fake-driver';
import { silentLogger, waitFor } from '@nqvm/agent/agent/testing';
import { ConsoleTestClient, FakeVmmConsoles } from '@nqvm/agent/console/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ADMIN_PASSWORD,
  client,
  DATASTORES,
  startManager,
  type TestManager,
  userWithRole,
} from '../../test/harness';
import { login } from '../../test/helpers';
import { registerPathImage } from '../images/images';

/** A TCP relay in front of the agent: `cut()` breaks every connection as a dead host would. */
class TcpProxy {
  target = 0;
  private readonly sockets = new Set<net.Socket>();
  private server = net.createServer((inbound) => {
    const outbound = net.connect(this.target, '127.0.0.1');
    for (const s of [inbound, outbound]) {
      this.sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        this.sockets.delete(s);
        inbound.destroy();
        outbound.destroy();
      });
    }
    inbound.pipe(outbound).pipe(inbound);
  });

  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.server.address() as net.AddressInfo).port}`;
  }

  cut(): void {
    for (const s of this.sockets) s.resetAndDestroy();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

describe.each(DATASTORES)('console WebSocket through the manager (%s)', (kind) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-console-ws-'));
  const stateDir = path.join(dir, 'agent');
  const driver = new FakeDriver('qemu');
  const consoles = new FakeVmmConsoles(fs.mkdtempSync(path.join(dir, 'consoles-')));
  const proxy = new TcpProxy();
  const clients: ConsoleTestClient[] = [];
  let t: TestManager;
  let api: ReturnType<typeof client>;
  let agent: Agent;
  let proxyUrl: string;
  let wsBase: string;
  let operatorToken: string;
  let viewerToken: string;

  const startAgent = async (joinToken?: string) => {
    agent = await createAgent(
      loadAgentConfig({
        MANAGER_BASE: t.url,
        AGENT_BIND: '127.0.0.1:0',
        FC_RUN_DIR: stateDir,
        NQVM_AGENT_NAME: `console-${kind}`,
        NQVM_AGENT_ADVERTISE_URL: proxyUrl,
        NQVM_HEARTBEAT_INTERVAL_S: '1',
        ...(joinToken ? { NQVM_JOIN_TOKEN: joinToken } : {}),
      }),
      { drivers: [driver], logger: silentLogger, openConsole: consoles.opener },
    );
    proxy.target = Number(new URL(agent.url).port);
  };

  const connect = async (vmId: string, headers: Record<string, string>, route = 'console') => {
    const c = await ConsoleTestClient.connect(`${wsBase}/api/v1/vms/${vmId}/${route}/ws`, headers);
    clients.push(c);
    return c;
  };
  const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

  const runningVm = async (name: string): Promise<string> => {
    const res = await api.post('/api/v1/vms', { name, vcpu: 1, mem_mib: 128 });
    expect(res.status, res.text).toBe(202);
    const id: string = res.body.vm.id;
    await waitFor(
      `${name} running`,
      async () => (await api.get(`/api/v1/vms/${id}`)).body.state === 'running',
      15_000,
    );
    await waitFor(`${name}'s console`, () => consoles.get(id));
    return id;
  };

  beforeAll(async () => {
    t = await startManager(kind, { NQVM_HEARTBEAT_INTERVAL_S: '1' });
    api = client(t.url, t.adminToken);
    wsBase = t.url.replace(/^http/, 'ws');
    const kernel = path.join(dir, 'vmlinuz');
    fs.writeFileSync(kernel, Buffer.alloc(4096, 1));
    const rootfs = path.join(dir, 'rootfs.ext4');
    execFileSync('mkfs.ext4', ['-q', '-F', rootfs, '16M'], { stdio: 'ignore' });
    const store = t.manager.services.store;
    await registerPathImage(store, { name: 'kernel', kind: 'kernel', path: kernel, isDefault: true });
    await registerPathImage(store, { name: 'rootfs', kind: 'rootfs', path: rootfs, isDefault: true });
    proxyUrl = await proxy.listen();
    const jt = await api.post('/api/v1/join-tokens', { ttl_s: 600 });
    await startAgent(jt.body.token);
    operatorToken = await userWithRole(t, 'operator');
    viewerToken = await userWithRole(t, 'viewer');
  }, 60_000);

  afterAll(async () => {
    for (const c of clients) c.ws.terminate();
    await agent?.close();
    await proxy.close();
    await consoles.close();
    await t?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('checks auth on the upgrade: credentials, the origin of a cookie session, the VM', async () => {
    const id = await runningVm('auth-vm');
    const url = `${wsBase}/api/v1/vms/${id}/console/ws`;
    await expect(ConsoleTestClient.connect(url)).rejects.toThrow(/HTTP 401.*UNAUTHENTICATED/);
    await expect(ConsoleTestClient.connect(url, bearer('nqvm_tok_forged'))).rejects.toThrow(/HTTP 401/);
    // A refused upgrade's connection is closed, not left open.
    const sock = net.connect(Number(new URL(t.url).port), '127.0.0.1');
    let answer = '';
    sock.on('data', (d) => {
      answer += d.toString('latin1');
    });
    sock.write(
      `GET /api/v1/vms/${id}/console/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
        'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
    );
    await waitFor('the manager to close the refused upgrade', () => sock.destroyed || sock.readableEnded);
    expect(answer).toMatch(/^HTTP\/1.1 401/);
    sock.destroy();

    const session = await login(t.url, 'admin', ADMIN_PASSWORD);
    await expect(ConsoleTestClient.connect(url, { cookie: session.cookie })).rejects.toThrow(
      /HTTP 403.*CSRF_FAILED/,
    );
    await expect(
      ConsoleTestClient.connect(url, { cookie: session.cookie, origin: 'http://evil.example' }),
    ).rejects.toThrow(/HTTP 403.*cross-origin/);
    const viaCookie = await connect(id, { cookie: session.cookie, origin: t.url });
    expect(await viaCookie.waitForMessage('hello')).toMatchObject({ role: 'writer', writer: 'admin' });

    await expect(connect(crypto.randomUUID(), bearer(t.adminToken))).rejects.toThrow(
      /HTTP 404.*VM_NOT_FOUND/,
    );
    const stopped = await api.post('/api/v1/vms', { name: 'never-placed', start: false });
    await expect(connect(stopped.body.vm.id, bearer(t.adminToken))).rejects.toThrow(
      /HTTP 409.*not been placed/,
    );
    const plain = await api.get(`/api/v1/vms/${id}/console/ws`);
    expect(plain.status).toBe(426);
    expect(plain.body.error.code).toBe('UPGRADE_REQUIRED');

    // Documented in the OpenAPI description, alias included.
    const spec = (await api.get('/api/v1/openapi.json')).body;
    expect(spec.paths['/api/v1/vms/{id}/console/ws'].get.description).toMatch(/4000/);
    expect(spec.paths['/api/v1/vms/{id}/shell/ws'].get).toBeDefined();
  });

  it('relays the scrollback and live output to every client; roles decide who writes', async () => {
    const id = await runningVm('roles-vm');
    const vmm = consoles.get(id)!;
    vmm.output('NQVM boot marker\r\n');
    const admin = await connect(id, bearer(t.adminToken));
    const operator = await connect(id, bearer(operatorToken), 'shell');
    const viewer = await connect(id, bearer(viewerToken));
    for (const c of [admin, operator, viewer]) await c.waitForOutput('NQVM boot marker\r\n');
    expect(admin.messages[0]).toMatchObject({ type: 'hello', role: 'writer', can_write: true });
    expect(operator.messages[0]).toMatchObject({ type: 'hello', role: 'viewer', can_write: true });
    expect(viewer.messages[0]).toMatchObject({ type: 'hello', role: 'viewer', can_write: false });

    admin.type('echo one\r');
    for (const c of [admin, operator, viewer]) await c.waitForOutput('echo one\r');

    // A viewer token watches; its input is dropped and it is told so, once.
    viewer.type('reboot\r');
    viewer.type('halt\r');
    expect(await viewer.waitForMessage('denied')).toMatchObject({ what: 'input', message: /read-only/ });
    viewer.control({ type: 'take' });
    await viewer.waitForMessage('denied', (m) => m.what === 'take');
    expect(viewer.messages.filter((m) => m.type === 'denied' && m.what === 'input')).toHaveLength(1);

    // The operator takes over; the admin is told and watches.
    operator.control({ type: 'take' });
    await operator.waitForMessage('writer', (m) => m.you);
    expect(await admin.waitForMessage('writer', (m) => !m.you)).toMatchObject({ writer: expect.any(String) });
    operator.control({ type: 'resize', cols: 100, rows: 30 });
    expect(await viewer.waitForMessage('resize')).toEqual({ type: 'resize', cols: 100, rows: 30 });
    operator.type('echo two\r');
    await viewer.waitForOutput('echo two\r');
    expect(Buffer.concat(vmm.input).toString()).toBe('echo one\recho two\r');
    expect(new Set([admin.output, operator.output, viewer.output]).size).toBe(1);

    const audit = await api.get('/api/v1/audit?limit=200');
    expect(
      audit.body.items.filter((e: { action: string }) => e.action === 'vm.console').length,
    ).toBeGreaterThan(0);
  });

  it('drops a client that never reads while another keeps receiving and the VM keeps running', async () => {
    const id = await runningVm('slow-vm');
    const vmm = consoles.get(id)!;
    const stuck = await connect(id, bearer(viewerToken));
    const fine = await connect(id, bearer(t.adminToken));
    await stuck.waitForMessage('hello');
    await fine.waitForMessage('hello');
    stuck.ws.pause();
    const chunk = Buffer.alloc(256 * 1024, 0x62);
    let sent = 0;
    for (let i = 0; i < 128; i++) {
      vmm.output(chunk);
      sent += chunk.length;
      await waitFor('the reading client to keep up', () => fine.output.length >= sent + 0, 10_000);
    }
    fine.type('echo alive\r');
    await fine.waitForOutput('echo alive\r');
    expect((await api.get(`/api/v1/vms/${id}`)).body.state).toBe('running');
    stuck.ws.resume();
    const closed = await Promise.race([stuck.closed, sleep(10_000).then(() => ({ code: -1 }))]);
    expect([1006, 4001]).toContain(closed.code);
    expect(stuck.output.length).toBeLessThan(sent);
  }, 90_000);

  it('says vm-stopped with a normal close when the VM is stopped', async () => {
    const id = await runningVm('stop-vm');
    const c = await connect(id, bearer(operatorToken));
    await c.waitForMessage('hello');
    expect((await api.post(`/api/v1/vms/${id}/stop`, { force: true })).status).toBe(202);
    expect(await c.waitForMessage('closed', () => true, 15_000)).toMatchObject({ reason: 'vm-stopped' });
    expect((await c.closed).code).toBe(1000);
  });

  it('after an agent restart, clients are told to reconnect and get the scrollback again', async () => {
    const id = await runningVm('restart-vm');
    consoles.get(id)!.output('before the agent restart\r\n');
    const c = await connect(id, bearer(t.adminToken));
    await c.waitForOutput('before the agent restart');
    await agent.close();
    expect(await c.waitForMessage('closed')).toMatchObject({ reason: 'agent-restart' });
    expect((await c.closed).code).toBe(4000);
    await startAgent();
    await waitFor('the host ready again', async () => {
      const hosts = await api.get('/api/v1/hosts');
      return hosts.body.items.every((h: { status: string }) => h.status === 'ready');
    });
    const again = await connect(id, bearer(t.adminToken));
    await again.waitForOutput('before the agent restart');
    again.type('echo back\r');
    await again.waitForOutput('echo back\r');
  }, 60_000);

  it('when the connection to the agent breaks, the manager says agent-restart and close 4000', async () => {
    const id = await runningVm('cut-vm');
    const c = await connect(id, bearer(t.adminToken));
    await c.waitForMessage('hello');
    proxy.cut();
    expect(await c.waitForMessage('closed')).toMatchObject({
      reason: 'agent-restart',
      message: /connection to the host agent broke/,
    });
    expect((await c.closed).code).toBe(4000);
    // The reconnect finds the scrollback again.
    const again = await connect(id, bearer(t.adminToken));
    await again.waitForMessage('hello');
  });
});
