import { rmSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { qemuVmPaths } from '../drivers/qemu/qemu-args';
import type { RunRecord } from '../drivers/types';
import { GuestLink } from './guest-link';
import { tempDir } from './testing';

describe('GuestLink', () => {
  const dirs: string[] = [];
  const servers: net.Server[] = [];
  afterEach(() => {
    for (const s of servers.splice(0)) s.close();
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  /** A QEMU VM whose guest agent channel accepts connections but whose guest never answers. */
  async function silentGuest(): Promise<RunRecord> {
    const vmDir = tempDir();
    dirs.push(vmDir);
    const server = net.createServer(() => {});
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(qemuVmPaths(vmDir).agentSocket, resolve));
    return {
      vmId: 'vm',
      generation: 1,
      kind: 'qemu',
      pid: process.pid,
      pidStartTime: 1,
      vmDir,
      controlSocket: path.join(vmDir, 'qmp.sock'),
      consoleSocket: path.join(vmDir, 'console.sock'),
    };
  }

  it('a caller that joins a connection being made waits no longer than its own timeout', async () => {
    const record = await silentGuest();
    const link = new GuestLink(
      () => record,
      async () => 'a'.repeat(64),
    );
    const long = link.get(3_000);
    long.catch(() => {});
    const t = performance.now();
    await expect(link.get(200)).rejects.toMatchObject({ code: 'TIMEOUT' });
    const waited = performance.now() - t;
    expect(waited).toBeGreaterThanOrEqual(190);
    expect(waited).toBeLessThan(2_000);
    link.reset();
    await expect(long).rejects.toThrow();
  });
});
