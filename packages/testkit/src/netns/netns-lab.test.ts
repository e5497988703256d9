import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { execIn, httpGet, NetnsLab, runIn, sweepStaleNamespaces } from './netns-lab';

function namespaces(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(Boolean);
}

/** Running and not a zombie waiting for its reaper. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

describe('NetnsLab', () => {
  let lab: NetnsLab | null = null;
  afterEach(async () => {
    await lab?.cleanup();
  });

  it('joins two namespaces with a veth pair, runs commands and servers inside, and removes it all', async () => {
    lab = new NetnsLab();
    const a = await lab.namespace('a');
    const b = await lab.namespace('b');
    await lab.veth(
      { ns: a, name: 'va', address: '10.200.0.1/24' },
      { ns: b, name: 'vb', address: '10.200.0.2/24' },
    );
    expect((await runIn(a, 'busybox', ['ping', '-c', '1', '-W', '2', '10.200.0.2'])).code).toBe(0);
    // The namespace holds only what the lab put there: no route to anywhere else.
    expect(await execIn(a, 'ip', ['-4', 'route', 'show'])).toBe(
      '10.200.0.0/24 dev va proto kernel scope link src 10.200.0.1 \n',
    );
    const server = await lab.serveHttp(b, 8080, { 'index.html': 'hello from b\n' });
    expect(await httpGet(a, 'http://10.200.0.2:8080/')).toBe('hello from b\n');
    // Each namespace has its own loopback: in a, nothing listens on 8080.
    expect(await httpGet(a, 'http://127.0.0.1:8080/', 1_000)).toBeNull();

    // A daemon that leaves the lab's process tree (httpd without -f forks away) is ended too.
    await execIn(b, 'busybox', ['httpd', '-p', '9001', '-h', '/']);
    const inB = execFileSync('ip', ['netns', 'pids', b], { encoding: 'utf8' }).split('\n').filter(Boolean);
    const daemonPid = inB.map(Number).find((p) => p !== server.pid);
    expect(daemonPid).toBeDefined();
    await lab.cleanup();
    expect(namespaces()).not.toContain(a);
    expect(namespaces()).not.toContain(b);
    await new Promise((r) => setTimeout(r, 200));
    expect(server.signalCode).toBe('SIGKILL');
    expect(alive(daemonPid!)).toBe(false);
    lab = null;
  });

  it('sweeps namespaces left by a test process that died', () => {
    const stale = 'nqvmt-999999999-0-leftover';
    execFileSync('ip', ['netns', 'add', stale]);
    try {
      expect(sweepStaleNamespaces()).toContain(stale);
      expect(namespaces()).not.toContain(stale);
    } finally {
      if (namespaces().includes(stale)) execFileSync('ip', ['netns', 'del', stale]);
    }
  });
});
