/**
 * The agent's console WebSocket against a real agent (fake VMM driver) whose consoles are real
 * ConsoleHubs attached to echoing VMM-style console sockets.
 */
import type { KeyObject } from 'node:crypto';
import { rmSync } from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { signManagerRequest } from '@nqvm/api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConsoleTestClient, FakeVmmConsoles } from '../console/testing';
import type { Agent } from './agent';
import { FakeDriver } from './fake-driver';
import {
  fakeImages,
  managerKeys,
  SignedAgentClient,
  startStandaloneAgent,
  tempDir,
  vmCommand,
  waitFor,
  waitForState,
} from './testing';

describe('agent console WebSocket', () => {
  const stateDir = tempDir();
  const consoleDir = tempDir('nqvm-consoles-');
  const driver = new FakeDriver();
  const consoles = new FakeVmmConsoles(consoleDir);
  const keys = managerKeys();
  const images = fakeImages(tempDir('nqvm-images-'));
  let agent: Agent;
  let api: SignedAgentClient;
  let generation = 0;
  const clients: ConsoleTestClient[] = [];

  const startAgent = async () => {
    const started = await startStandaloneAgent({
      stateDir,
      drivers: [driver],
      publicKeyPem: keys.publicKeyPem,
      options: { openConsole: consoles.opener },
    });
    agent = started.agent;
    api = new SignedAgentClient(agent.url, keys.privateKey);
  };

  const wsPath = (id: string, q = 'write=1&user=alice') => `/v1/vms/${id}/console/ws?${q}`;

  const connect = async (id: string, q?: string, key: KeyObject = keys.privateKey) => {
    const path = wsPath(id, q);
    const c = await ConsoleTestClient.connect(
      `${agent.url.replace('http', 'ws')}${path}`,
      signManagerRequest(key, 'GET', path),
    );
    clients.push(c);
    return c;
  };

  const bootVm = async (): Promise<string> => {
    const id = crypto.randomUUID();
    generation++;
    expect((await api.put(id, vmCommand(generation, 'running', images))).status).toBe(202);
    await waitForState(agent, id, 'running');
    await waitFor('the console', () => consoles.get(id));
    return id;
  };

  beforeAll(startAgent);

  afterAll(async () => {
    for (const c of clients) c.ws.terminate();
    await agent?.close();
    await consoles.close();
    rmSync(stateDir, { recursive: true, force: true });
    rmSync(consoleDir, { recursive: true, force: true });
  });

  it('refuses an unsigned or wrongly signed upgrade, an unknown VM, and a plain GET', async () => {
    const id = await bootVm();
    const url = `${agent.url.replace('http', 'ws')}${wsPath(id)}`;
    await expect(ConsoleTestClient.connect(url)).rejects.toThrow(/HTTP 401/);
    // Signed for write=0, sent with write=1: the signature covers the query.
    const readOnly = signManagerRequest(keys.privateKey, 'GET', wsPath(id, 'write=0&user=alice'));
    await expect(ConsoleTestClient.connect(url, readOnly)).rejects.toThrow(/HTTP 401.*bad request signature/);
    const other = managerKeys();
    await expect(connect(id, undefined, other.privateKey)).rejects.toThrow(/HTTP 401/);
    await expect(connect(crypto.randomUUID())).rejects.toThrow(/HTTP 404.*VM_NOT_FOUND/);
    const plain = await api.call('GET', wsPath(id));
    expect(plain.status).toBe(426);
    expect(plain.json.error.code).toBe('UPGRADE_REQUIRED');
  });

  it('closes the connection of a refused upgrade (a leftover socket would keep the agent from stopping)', async () => {
    const { port } = new URL(agent.url);
    const sock = net.connect(Number(port), '127.0.0.1');
    let answer = '';
    sock.on('data', (d) => {
      answer += d.toString('latin1');
    });
    const ended = new Promise<void>((resolve) => sock.on('close', () => resolve()));
    sock.write(
      `GET ${wsPath(crypto.randomUUID())} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
        'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
    );
    await waitFor('the agent to close the refused upgrade', async () => {
      await Promise.race([ended, new Promise((r) => setTimeout(r, 100))]);
      return sock.destroyed;
    });
    expect(answer).toMatch(/^HTTP\/1.1 401/);
  });

  it('holds a client that connects while the VM boots until its console is there', async () => {
    const id = crypto.randomUUID();
    generation++;
    driver.bootDelayMs = 300;
    try {
      expect((await api.put(id, vmCommand(generation, 'running', images))).status).toBe(202);
      await waitForState(agent, id, 'starting');
      const early = await connect(id);
      expect(early.messages).toEqual([]);
      await waitForState(agent, id, 'running');
      expect(await early.waitForMessage('hello')).toMatchObject({ role: 'writer' });
      await waitFor('the console', () => consoles.get(id));
      consoles.get(id)!.output('first boot line\r\n');
      await early.waitForOutput('first boot line');
    } finally {
      driver.bootDelayMs = 0;
    }
  });

  it('sends hello and the scrollback first, then the same live bytes to every client', async () => {
    const id = await bootVm();
    const vmm = consoles.get(id)!;
    vmm.output('boot marker NQVM-1\r\n');
    await waitFor('the hub to see the boot output', async () => {
      const tail = await api.call('GET', `/v1/vms/${id}/console`);
      return tail.bytes.toString().includes('NQVM-1');
    });
    const a = await connect(id, 'write=1&user=alice');
    const b = await connect(id, 'write=0&user=victor');
    const c = await connect(id, 'write=1&user=olga');
    for (const x of [a, b, c]) await x.waitForOutput('boot marker NQVM-1\r\n');
    expect(a.messages[0]).toEqual({
      type: 'hello',
      role: 'writer',
      can_write: true,
      writer: 'alice',
      size: null,
    });
    expect(b.messages[0]).toEqual({
      type: 'hello',
      role: 'viewer',
      can_write: false,
      writer: 'alice',
      size: null,
    });
    expect(c.messages[0]).toMatchObject({ type: 'hello', role: 'viewer', can_write: true, writer: 'alice' });
    // hello comes before any output: the first message preceded the scrollback.
    vmm.output('live line\r\n');
    for (const x of [a, b, c]) await x.waitForOutput('live line\r\n');
    expect(new Set([a.output, b.output, c.output]).size).toBe(1);
    a.type('ls\r');
    for (const x of [a, b, c]) await x.waitForOutput('ls\r');
    expect(Buffer.concat(vmm.input).toString()).toBe('ls\r');

    a.control({ type: 'ping' });
    await a.waitForMessage('pong');
  });

  it('hands the writer role over on take; viewers are refused and their input dropped', async () => {
    const id = await bootVm();
    const vmm = consoles.get(id)!;
    const alice = await connect(id, 'write=1&user=alice');
    const olga = await connect(id, 'write=1&user=olga');
    const victor = await connect(id, 'write=0&user=victor');
    await victor.waitForMessage('hello');

    olga.type('x');
    const denied = await olga.waitForMessage('denied');
    expect(denied.message).toMatch(/alice is typing/);
    olga.type('y');
    olga.control({ type: 'take' });
    await olga.waitForMessage('writer', (m) => m.you);
    const told = await alice.waitForMessage('writer', (m) => !m.you);
    expect(told.writer).toBe('olga');
    await victor.waitForMessage('writer', (m) => m.writer === 'olga' && !m.you);
    // Only one denied message for two dropped keystrokes.
    expect(olga.messages.filter((m) => m.type === 'denied')).toHaveLength(1);

    olga.type('whoami\r');
    await alice.waitForOutput('whoami\r');
    alice.type('z');
    await alice.waitForMessage('denied');

    victor.control({ type: 'take' });
    const refused = await victor.waitForMessage('denied', (m) => m.what === 'take');
    expect(refused.message).toMatch(/read-only/);
    victor.type('rm -rf /\r');
    await victor.waitForMessage('denied', (m) => m.what === 'input');
    olga.type('\r');
    await victor.waitForOutput('whoami\r\r');
    expect(Buffer.concat(vmm.input).toString()).toBe('whoami\r\r');

    // The writer leaves: nobody writes; the next keystroke of a client that may write claims it.
    olga.close();
    await alice.waitForMessage('writer', (m) => m.writer === null);
    alice.type('date\r');
    await alice.waitForMessage('writer', (m) => m.you);
    await alice.waitForOutput('date\r');
    expect(Buffer.concat(vmm.input).toString()).toBe('whoami\r\rdate\r');
  });

  it('keeps the writer size and tells it to the others; other sizes are ignored', async () => {
    const id = await bootVm();
    const w = await connect(id, 'write=1&user=alice');
    const v = await connect(id, 'write=0&user=victor');
    await v.waitForMessage('hello');
    v.control({ type: 'resize', cols: 20, rows: 5 });
    w.control({ type: 'resize', cols: 132, rows: 43 });
    expect(await v.waitForMessage('resize')).toEqual({ type: 'resize', cols: 132, rows: 43 });
    const later = await connect(id, 'write=0&user=vera');
    expect(await later.waitForMessage('hello')).toMatchObject({ size: { cols: 132, rows: 43 } });
    expect(w.messages.some((m) => m.type === 'resize')).toBe(false);
  });

  it('closes on a malformed control message and ignores unknown types', async () => {
    const id = await bootVm();
    const c = await connect(id);
    c.control({ type: 'future-feature' });
    c.control({ type: 'ping' });
    await c.waitForMessage('pong');
    c.control({ type: 'resize', cols: -1, rows: 'x' });
    expect((await c.closed).code).toBe(1008);
    expect(c.messages.at(-1)).toMatchObject({ type: 'closed', reason: 'protocol-error' });
  });

  it('drops a client that never reads, while another keeps receiving and the VM keeps running', async () => {
    const id = await bootVm();
    const vmm = consoles.get(id)!;
    const stuck = await connect(id, 'write=0&user=stuck');
    const fine = await connect(id, 'write=1&user=fine');
    await stuck.waitForMessage('hello');
    await fine.waitForMessage('hello');
    stuck.ws.pause();
    const chunk = Buffer.alloc(256 * 1024, 0x61);
    let sent = 0;
    // Past the kernel's socket buffers and the 1 MiB limit.
    for (let i = 0; i < 128; i++) {
      vmm.output(chunk);
      sent += chunk.length;
      await waitFor('the reading client to keep up', () => fine.output.length >= sent, 5_000);
    }
    vmm.output('still here\r\n');
    await fine.waitForOutput('still here\r\n');
    fine.type('echo ok\r');
    await fine.waitForOutput('echo ok\r');
    expect(agent.vms().find((v) => v.id === id)?.state).toBe('running');
    stuck.ws.resume();
    const { code } = await Promise.race([stuck.closed, sleep(10_000).then(() => ({ code: -1 }))]);
    expect([1006, 4001]).toContain(code);
    expect(stuck.output.length).toBeLessThan(sent);
  }, 60_000);

  it('tells every client when the VM stops, and a late client gets the last run scrollback', async () => {
    const id = await bootVm();
    consoles.get(id)!.output('last words\r\n');
    const c = await connect(id);
    await c.waitForOutput('last words');
    generation++;
    expect((await api.put(id, vmCommand(generation, 'stopped', images))).status).toBe(202);
    expect(await c.waitForMessage('closed')).toEqual({
      type: 'closed',
      reason: 'vm-stopped',
      message: 'the VM was stopped',
    });
    expect((await c.closed).code).toBe(1000);

    const late = await connect(id);
    await late.waitForOutput('last words');
    expect(await late.waitForMessage('closed')).toMatchObject({ reason: 'vm-stopped' });
    expect(late.messages[0]).toMatchObject({ type: 'hello', role: 'viewer' });
    expect((await late.closed).code).toBe(1000);
  });

  it('tells clients about a crash and a delete', async () => {
    const crashing = await bootVm();
    const a = await connect(crashing);
    await a.waitForMessage('hello');
    driver.exit(crashing, { reason: 'crashed', code: 1, signal: null, message: 'boom' });
    expect(await a.waitForMessage('closed')).toMatchObject({
      reason: 'vm-stopped',
      message: /crashed: boom/,
    });

    const deleted = await bootVm();
    const b = await connect(deleted);
    await b.waitForMessage('hello');
    expect((await api.del(deleted)).status).toBe(202);
    expect(await b.waitForMessage('closed')).toMatchObject({ reason: 'vm-deleted' });
    expect((await b.closed).code).toBe(1000);
  });

  it('says agent-restart when the agent stops; after it restarts the scrollback comes again', async () => {
    const id = await bootVm();
    const vmm = consoles.get(id)!;
    vmm.output('before the restart\r\n');
    const c = await connect(id);
    await c.waitForOutput('before the restart');
    await agent.close();
    expect(await c.waitForMessage('closed')).toMatchObject({ reason: 'agent-restart' });
    expect((await c.closed).code).toBe(4000);
    vmm.output('while the agent was away\r\n');

    await startAgent();
    await waitForState(agent, id, 'running');
    const again = await connect(id);
    await again.waitForOutput('before the restart\r\nwhile the agent was away\r\n');
    again.type('uptime\r');
    await again.waitForOutput('uptime\r');
  });
});
