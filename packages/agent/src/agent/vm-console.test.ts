/**
 * A Firecracker console as the console WebSocket sees it: a FIFO held read-write by "Firecracker"
 * (this test) for input, and an appended log file for output.
 */
import { appendFileSync, closeSync, constants, openSync, readSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createConsoleFifo, openFirecrackerConsole } from '../drivers/firecracker/console';
import { tempDir, waitFor } from './testing';
import { firecrackerVmConsole } from './vm-console';

describe('Firecracker console for the console WebSocket', () => {
  const dir = tempDir('nqvm-fc-console-');
  const fifo = path.join(dir, 'console.in');
  const log = path.join(dir, 'console.log');

  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('sends the scrollback, then live output, takes input, and drops a viewer that falls behind', async () => {
    await createConsoleFifo(fifo);
    // Firecracker's end of the FIFO: read-write, so it never sees EOF.
    const vmmFd = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
    writeFileSync(log, 'booted before anyone looked\n');
    const con = firecrackerVmConsole(
      openFirecrackerConsole({
        vmId: 'fc',
        generation: 1,
        kind: 'firecracker',
        pid: process.pid,
        pidStartTime: 0,
        vmDir: dir,
        controlSocket: path.join(dir, 'api.sock'),
        consoleSocket: fifo,
        extra: { consoleLog: log },
      }),
    );
    try {
      let seen = '';
      const off = con.subscribe!({ onData: (c) => (seen += c.toString()) }, { replayBytes: 1024 });
      await waitFor('the scrollback', () => seen === 'booted before anyone looked\n');
      appendFileSync(log, 'login: ');
      await waitFor('live output', () => seen.endsWith('login: '));

      expect(con.write!(Buffer.from('root\n'))).toBe(true);
      const buf = Buffer.alloc(64);
      const got = await waitFor('input on the FIFO', () => {
        try {
          return readSync(vmmFd, buf, 0, buf.length, null);
        } catch {
          return 0;
        }
      });
      expect(buf.subarray(0, got).toString()).toBe('root\n');

      let backlog = 2 * 1024 * 1024;
      const closed: string[] = [];
      con.subscribe!(
        { onData: () => {}, pendingBytes: () => backlog, onClose: (r) => closed.push(r) },
        { replayBytes: 16 },
      );
      await waitFor('the slow viewer to be dropped', () => closed.length > 0);
      expect(closed).toEqual(['slow']);
      backlog = 0;
      appendFileSync(log, 'more\n');
      await waitFor('the first viewer to go on', () => seen.endsWith('more\n'));
      off();
    } finally {
      await con.close();
      closeSync(vmmFd);
    }
  });
});
