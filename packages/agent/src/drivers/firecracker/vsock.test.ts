/**
 * Host-initiated vsock through the simulator to a stand-in guest listener, and the handshake
 * helper's failures.
 */
import { mkdir } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { FIRECRACKER_SIM_VERSIONS, writeJailerBinary } from '@nqvm/testkit/firecracker-sim/index';
import { afterAll, describe, expect, it } from 'vitest';
import { FirecrackerFeatureUnavailableError } from './capabilities';
import { FirecrackerDriver } from './driver';
import { requestsOf, useSimFixtures } from './sim-fixture';
import type { FirecrackerRecordExtra } from './vm-paths';
import { connectFirecrackerVsock, FirecrackerVsockError } from './vsock';

const { failure, fixture, keep } = useSimFixtures('fc-vsock-');
const servers: Server[] = [];

afterAll(() => {
  for (const s of servers) s.close();
});

async function listen(path: string, onConnection: (s: Socket) => void): Promise<Server> {
  const server = createServer(onConnection);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return server;
}

/** The stand-in guest agent: echoes what it receives. */
const echo = (dir: string, port: number) => listen(join(dir, `${port}.sock`), (s) => s.pipe(s));

async function roundTrip(sock: Socket, text: string): Promise<string> {
  let got = '';
  const done = new Promise<string>((resolve, reject) => {
    sock.on('data', (d: Buffer) => {
      got += d.toString();
      if (got.length >= text.length) resolve(got);
    });
    sock.once('error', reject);
  });
  sock.write(text);
  return done;
}

const vsockOf = (h: { record: { extra?: Record<string, unknown> } }) =>
  (h.record.extra as unknown as FirecrackerRecordExtra).vsockPath!;

describe.each(FIRECRACKER_SIM_VERSIONS)('vsock to a guest listener through simulator v%s', (version) => {
  it('reaches the guest port of a driver-booted VM, refuses a port nobody listens on, and works again after a restore', async () => {
    const fx = await fixture(version, 'direct');
    const guestDir = join(fx.dir, 'guest-vsock');
    await mkdir(guestDir, { recursive: true });
    await echo(guestDir, 1024);
    const driver = new FirecrackerDriver({ firecrackerBin: fx.bin, socketTimeoutMs: 20_000 });
    const spec = await fx.spec('vsock', { vsockCid: 3 });
    // The driver hands its environment to the VMM: that is how the simulator finds the guest.
    process.env.NQVM_FC_SIM_GUEST_VSOCK_DIR = guestDir;
    try {
      const vm = keep(await driver.boot(spec));
      expect(vsockOf(vm)).toBe(join(spec.vmDir, 'vsock.sock'));
      const sock = await connectFirecrackerVsock(vsockOf(vm), 1024, 2000);
      expect(await roundTrip(sock, 'hello guest')).toBe('hello guest');
      const refused = await connectFirecrackerVsock(vsockOf(vm), 1025, 2000).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(FirecrackerVsockError);
      expect(refused).toMatchObject({ reason: 'refused', code: 'FIRECRACKER_VSOCK' });
      expect((refused as Error).message).toMatch(/closed the connection without OK/);

      // A snapshot resets the vsock transport: open connections end, the listener stays.
      const closed = new Promise((r) => sock.once('close', r));
      const snap = await driver.snapshot(vm, join(fx.dir, 'snap'), 'Full');
      await closed;
      await driver.shutdown(vm, { graceful: false, timeoutMs: 0 });

      const restored = keep(await driver.restore(spec, snap));
      expect(vsockOf(restored)).toBe(vsockOf(vm));
      const again = await connectFirecrackerVsock(vsockOf(restored), 1024, 2000);
      expect(await roundTrip(again, 'after restore')).toBe('after restore');
      again.destroy();
      await driver.shutdown(restored, { graceful: false, timeoutMs: 0 });

      // Restored into another VM folder, the socket moves only where the version can move it.
      const moved = { ...spec, vmDir: join(fx.dir, 'vms', 'vsock-moved') };
      if (version === '1.16.1') {
        const h = keep(await driver.restore(moved, snap));
        const load = (await requestsOf(fx.journal, h.record.pid)).find((r) => r.path === '/snapshot/load')!;
        expect(load.body).toMatchObject({ vsock_override: { uds_path: join(moved.vmDir, 'vsock.sock') } });
        const s = await connectFirecrackerVsock(vsockOf(h), 1024, 2000);
        expect(await roundTrip(s, 'moved')).toBe('moved');
        s.destroy();
        await driver.shutdown(h, { graceful: false, timeoutMs: 0 });
      } else {
        const err = await failure(driver.restore(moved, snap));
        expect((err as { cause?: unknown }).cause).toBeInstanceOf(FirecrackerFeatureUnavailableError);
        expect((err as Error).message).toMatch(/vsock socket was at .* cannot move it/);
      }
    } finally {
      delete process.env.NQVM_FC_SIM_GUEST_VSOCK_DIR;
    }
  });

  it('reaches the guest from the VM record under the jailer (a socket path past sun_path)', async () => {
    const fx = await fixture(version, 'jailed');
    const guestDir = join(fx.dir, 'guest-vsock');
    await mkdir(guestDir, { recursive: true });
    await echo(guestDir, 1024);
    const jailerBin = await writeJailerBinary(join(fx.dir, 'bin'), version, { journal: fx.journal });
    const driver = new FirecrackerDriver({
      firecrackerBin: fx.bin,
      jailerBin,
      chrootBaseDir: join(fx.dir, 'a-rather-long-chroot-base-directory-name'),
      jailIds: { first: 42_000, count: 100 },
      cgroupRoot: join(fx.dir, 'cgroup'),
      socketTimeoutMs: 20_000,
    });
    process.env.NQVM_FC_SIM_GUEST_VSOCK_DIR = guestDir;
    try {
      const spec = await fx.spec('jvsock');
      const vm = keep(await driver.boot(spec));
      expect(Buffer.byteLength(vsockOf(vm))).toBeGreaterThan(107);
      const sock = await connectFirecrackerVsock(vsockOf(vm), 1024, 2000);
      expect(await roundTrip(sock, 'jailed hello')).toBe('jailed hello');
      sock.destroy();
      await driver.shutdown(vm, { graceful: false, timeoutMs: 0 });
    } finally {
      delete process.env.NQVM_FC_SIM_GUEST_VSOCK_DIR;
    }
  });
});

describe('connectFirecrackerVsock', () => {
  it('keeps the bytes the guest sends with the OK line, and says why a connection did not open', async () => {
    const fx = await fixture('1.16.1', 'helper');
    const at = (name: string) => join(fx.dir, name);
    await listen(at('eager.sock'), (s) => s.once('data', () => s.write('OK 1073741824\nguest first')));
    const eager = await connectFirecrackerVsock(at('eager.sock'), 52, 2000);
    expect(await roundTrip(eager, '')).toBe('guest first');
    eager.destroy();

    await expect(connectFirecrackerVsock(at('none.sock'), 52, 2000)).rejects.toMatchObject({
      reason: 'unreachable',
    });
    await listen(at('silent.sock'), () => {});
    await expect(connectFirecrackerVsock(at('silent.sock'), 52, 100)).rejects.toMatchObject({
      reason: 'timeout',
      message: expect.stringMatching(/no answer to CONNECT within 100 ms/),
    });
    await listen(at('other.sock'), (s) => s.once('data', () => s.write('HTTP/1.1 400 Bad Request\r\n')));
    await expect(connectFirecrackerVsock(at('other.sock'), 52, 2000)).rejects.toMatchObject({
      reason: 'protocol',
    });
    await expect(connectFirecrackerVsock(at('other.sock'), -1, 2000)).rejects.toThrow(RangeError);
  });
});
