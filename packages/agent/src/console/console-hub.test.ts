import { appendFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  bytesAfterAnchor,
  ConsoleHub,
  type ConsoleViewerCloseReason,
  suffixPrefixOverlap,
} from './console-hub';
import { receivedLogPath, rotatedLogPath } from './console-log';
import { FakeVmmConsole } from './testing';

async function until(check: () => boolean, timeoutMs = 3_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(5);
  }
}

describe('ConsoleHub', () => {
  let dir: string;
  let fake: FakeVmmConsole;
  const hubs: ConsoleHub[] = [];

  const newHub = (opts: Partial<ConstructorParameters<typeof ConsoleHub>[0]> = {}) => {
    const hub = new ConsoleHub({
      socketPath: fake.socketPath,
      logPath: fake.logPath,
      attachSettleMs: 10,
      reconnectMinMs: 10,
      ...opts,
    });
    hubs.push(hub);
    return hub;
  };

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nqvm-console-hub-'));
    fake = new FakeVmmConsole(join(dir, 'console.sock'), join(dir, 'console.log'));
    await fake.listen();
  });

  afterEach(async () => {
    await Promise.all(hubs.splice(0).map((h) => h.close()));
    await fake.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('fans live output out to every viewer and keeps it for tail()', async () => {
    const hub = newHub();
    await hub.attach();
    const a: string[] = [];
    const b: string[] = [];
    hub.subscribe((c) => a.push(c.toString()));
    hub.subscribe({ onData: (c) => b.push(c.toString()) });
    expect(hub.viewerCount).toBe(2);
    fake.output('hello ');
    fake.output('world');
    await until(() => a.join('') === 'hello world' && b.join('') === 'hello world');
    expect(hub.tail().toString()).toBe('hello world');
    expect(hub.tail(5).toString()).toBe('world');
  });

  it('bounds the in-memory buffer', async () => {
    const hub = newHub({ bufferBytes: 16 });
    await hub.attach();
    fake.output('0123456789abcdefghij');
    await until(() => hub.totalBytes === 20);
    expect(hub.tail().toString()).toBe('456789abcdefghij');
  });

  it('replays scrollback to a new viewer before live output', async () => {
    const hub = newHub();
    await hub.attach();
    fake.output('line one\n');
    await until(() => hub.totalBytes === 9);
    const seen: string[] = [];
    hub.subscribe((c) => seen.push(c.toString()), { replayBytes: 5 });
    fake.output('two\n');
    await until(() => seen.join('') === ' one\ntwo\n');
  });

  it('drops a slow viewer without stalling the others', async () => {
    const hub = newHub({ maxViewerPendingBytes: 1_000 });
    await hub.attach();
    let backlog = 0;
    const closed: ConsoleViewerCloseReason[] = [];
    hub.subscribe({
      onData: (c) => {
        backlog += c.length; // Never drains: a viewer behind a stuck connection.
      },
      pendingBytes: () => backlog,
      onClose: (reason) => closed.push(reason),
    });
    let fast = 0;
    hub.subscribe((c) => {
      fast += c.length;
    });
    for (let i = 1; i <= 10; i++) {
      fake.output(Buffer.alloc(500, 0x61));
      await until(() => fast === i * 500);
    }
    expect(closed).toEqual(['slow']);
    expect(hub.viewerCount).toBe(1);
    expect(backlog).toBeLessThanOrEqual(1_500);
  });

  it('drops a viewer that throws, and keeps serving the others', async () => {
    const hub = newHub();
    await hub.attach();
    const closed: ConsoleViewerCloseReason[] = [];
    hub.subscribe({
      onData: () => {
        throw new Error('socket gone');
      },
      onClose: (r) => closed.push(r),
    });
    const good: string[] = [];
    hub.subscribe((c) => good.push(c.toString()));
    fake.output('x');
    fake.output('y');
    await until(() => good.join('') === 'xy');
    expect(closed).toEqual(['error']);
  });

  it('forwards input to the console', async () => {
    const hub = newHub();
    expect(hub.write('too early')).toBe(false);
    await hub.attach();
    expect(hub.write('ls\n')).toBe(true);
    await until(() => Buffer.concat(fake.input).toString() === 'ls\n');
  });

  it('seeds scrollback from the log on attach (an agent restart)', async () => {
    fake.output('written while no agent was attached\n');
    const hub = newHub();
    await hub.attach();
    expect(hub.tail().toString()).toBe('written while no agent was attached\n');
    fake.output('live\n');
    await until(() => hub.tail().toString().endsWith('attached\nlive\n'));
  });

  it('seeds an agent restart with the bytes the guest wrote, once, though the log repeats some', async () => {
    const boot = 'smpboot: CPU0: AMD EPYC processor\r\nACPI: Core revision 20230628\r\n';
    const first = newHub();
    await first.attach();
    // The hub lagged: QEMU's socket refused two bytes once, and its log holds them twice.
    fake.output(boot, [boot.indexOf('ssor') + 1, boot.indexOf('I:')]);
    await until(() => first.totalBytes === boot.length);
    expect(first.tail().toString()).toBe(boot);
    expect(await readFile(fake.logPath, 'utf8')).toContain('processsor');
    await first.close();
    fake.output('written while the agent was down\r\n');

    const second = newHub();
    await second.attach();
    expect(second.tail().toString()).toBe(`${boot}written while the agent was down\r\n`);
    fake.output('# ');
    await until(() => second.tail().toString().endsWith('down\r\n# '));
    await second.close();
    const third = newHub();
    await third.attach();
    expect(third.tail().toString()).toBe(`${boot}written while the agent was down\r\n# `);
    expect(await readFile(receivedLogPath(fake.logPath), 'utf8')).toBe(third.tail().toString());
  });

  it('seeds from the rotated generation too', async () => {
    appendFileSync(rotatedLogPath(fake.logPath), 'older ');
    appendFileSync(fake.logPath, 'newer');
    const hub = newHub();
    await hub.attach();
    expect(hub.tail().toString()).toBe('older newer');
  });

  it('does not deliver twice what arrived live while the log was being read', async () => {
    // A re-attach (the log holds earlier output): the hub lets the log settle, and output that
    // arrives meanwhile reaches it both live and through the log.
    fake.output('before the agent restarted\n');
    const hub = newHub({ attachSettleMs: 100 });
    const attaching = hub.attach();
    await until(() => fake.client !== null);
    fake.output('during attach\n');
    await attaching;
    expect(hub.tail().toString()).toBe('before the agent restarted\nduring attach\n');
  });

  it('does not wait for the log to settle when attaching to a VMM started just now', async () => {
    fake.output('the previous run of this VM\n');
    const hub = newHub({ attachSettleMs: 2_000 });
    const started = Date.now();
    await hub.attach({ freshVmm: true });
    expect(Date.now() - started).toBeLessThan(1_000);
    fake.output('first words\n');
    await until(() => hub.tail().toString() === 'the previous run of this VM\nfirst words\n');
  });

  it('reconnects after the connection drops and catches up from the log', async () => {
    const hub = newHub();
    await hub.attach();
    const seen: string[] = [];
    hub.subscribe((c) => seen.push(c.toString()));
    fake.output('before\n');
    await until(() => seen.join('') === 'before\n');
    fake.kick();
    await until(() => !hub.connected);
    fake.output('while disconnected\n');
    await until(() => hub.connected && fake.client !== null);
    fake.output('after\n');
    await until(() => seen.join('') === 'before\nwhile disconnected\nafter\n');
    expect(hub.tail().toString()).toBe('before\nwhile disconnected\nafter\n');
  });

  it('rotates the log once it outgrows its limit', async () => {
    const hub = newHub({ maxLogBytes: 100 * 1024 });
    await hub.attach();
    const line = `${'z'.repeat(1023)}\n`;
    for (let i = 0; i < 200; i++) fake.output(line);
    await until(() => hub.totalBytes === 200 * 1024);
    await hub.close();
    const current = (await stat(fake.logPath)).size;
    const older = (await stat(rotatedLogPath(fake.logPath))).size;
    expect(older).toBeGreaterThan(0);
    expect(older).toBeLessThanOrEqual(100 * 1024 + 64 * 1024);
    expect(current).toBeLessThanOrEqual(100 * 1024);
    // The hub's own log goes the same way (checked as output comes, and at each attach).
    await newHub({ maxLogBytes: 100 * 1024 }).attach();
    expect((await stat(receivedLogPath(fake.logPath))).size).toBeLessThanOrEqual(100 * 1024);
    expect((await stat(rotatedLogPath(receivedLogPath(fake.logPath)))).size).toBeGreaterThan(0);
    // Nothing was lost or duplicated between the two generations.
    const all =
      (await readFile(rotatedLogPath(fake.logPath), 'utf8')) + (await readFile(fake.logPath, 'utf8'));
    expect(all.length % 1024).toBe(0);
    expect(
      all
        .split('\n')
        .filter(Boolean)
        .every((l) => l === line.trim()),
    ).toBe(true);
  });

  it('drops every viewer on close and refuses new ones', async () => {
    const hub = newHub();
    await hub.attach();
    const closed: ConsoleViewerCloseReason[] = [];
    hub.subscribe({ onData: () => {}, onClose: (r) => closed.push(r) });
    await hub.close();
    expect(closed).toEqual(['hub-closed']);
    hub.subscribe({ onData: () => {}, onClose: (r) => closed.push(r) });
    expect(closed).toEqual(['hub-closed', 'hub-closed']);
    expect(hub.write('x')).toBe(false);
  });

  it('gives up attaching to a socket nobody serves', async () => {
    const hub = newHub({ socketPath: join(dir, 'nobody.sock') });
    await expect(hub.attach({ timeoutMs: 100 })).rejects.toThrow(/cannot attach/);
  });
});

describe('attach overlap helpers', () => {
  it('finds where the hub left off in the log', () => {
    expect(bytesAfterAnchor(Buffer.from('abcdef'), Buffer.from('cd')).toString()).toBe('ef');
    expect(bytesAfterAnchor(Buffer.from('abcdef'), Buffer.alloc(0)).toString()).toBe('abcdef');
    expect(bytesAfterAnchor(Buffer.from('abcdef'), Buffer.from('zz')).toString()).toBe('abcdef');
  });

  it('finds it where the log repeats bytes the hub got once', () => {
    const after = (log: string, anchor: string) =>
      bytesAfterAnchor(Buffer.from(log), Buffer.from(anchor)).toString();
    expect(after('a processsor, ACPII: ok\nnew', 'processor, ACPI: ok\n')).toBe('new');
    // The last one: the anchor's count of its last byte, the rest of that run is new.
    expect(after('xaaa', 'xa')).toBe('aa');
    expect(after('xyz xyz', 'xyz')).toBe('');
    expect(after('xyz xyz!', 'yz')).toBe('!');
    // A byte the log lacks is no match.
    expect(after('processr new', 'processor')).toBe('processr new');
  });

  it('measures how much live output the log already holds', () => {
    expect(suffixPrefixOverlap(Buffer.from('hello wor'), Buffer.from('world'))).toBe(3);
    expect(suffixPrefixOverlap(Buffer.from('hello'), Buffer.from('next'))).toBe(0);
    expect(suffixPrefixOverlap(Buffer.from('aaaa'), Buffer.from('aa'))).toBe(2);
    expect(suffixPrefixOverlap(Buffer.alloc(0), Buffer.from('x'))).toBe(0);
  });
});
