/**
 * The console half of "the guest is up": a login prompt or cloud-init's closing line, in the
 * output of the current boot only.
 */

import { describe, expect, it } from 'vitest';
import type { ConsoleViewer } from '../console/console-hub';
import type { RoomConsole } from '../console/console-room';
import { consoleSaysReady, watchConsoleReady } from './guest-ready';

const GETTY = '\r\nDebian GNU/Linux 12 web1 ttyS0\r\n\r\nweb1 login: ';
const CLOUD_INIT =
  'Cloud-init v. 22.4.2 finished at Mon, 07 Dec 2026 10:00:00 +0000. Datasource DataSourceNoCloud.  Up 71.80 seconds\n';

/** A console whose scrollback and live output the test gives. */
function fakeConsole(scrollback: string) {
  let viewer: ConsoleViewer | null = null;
  const con: RoomConsole = {
    tail: async () => Buffer.from(scrollback),
    subscribe(v, opts) {
      viewer = v;
      if (opts.replayBytes) v.onData(Buffer.from(scrollback.slice(-opts.replayBytes)));
      return () => {
        viewer = null;
      };
    },
  };
  return { con, emit: (text: string) => viewer?.onData(Buffer.from(text)), watching: () => viewer !== null };
}

describe('consoleSaysReady', () => {
  it('knows a waiting login prompt and cloud-init finishing, and nothing else', () => {
    expect(consoleSaysReady(GETTY)).toBe(true);
    expect(consoleSaysReady(`[  OK  ] Reached target cloud-init.target\r\n${CLOUD_INIT}`)).toBe(true);
    expect(consoleSaysReady('[    0.000000] Linux version 6.1.0-28-cloud-amd64\n')).toBe(false);
    // A prompt that got an answer is not waiting any more.
    expect(consoleSaysReady(`${GETTY}root\r\nPassword: `)).toBe(false);
    expect(consoleSaysReady("Cloud-init v. 22.4.2 running 'modules:final'")).toBe(false);
  });
});

describe('watchConsoleReady', () => {
  it('watches a fresh boot from now on: an earlier boot’s prompt in the scrollback does not count', () => {
    const { con, emit, watching } = fakeConsole(`[0.0] Linux version 6.1\n${GETTY}`);
    let ready = 0;
    watchConsoleReady(con, false, () => ready++);
    expect(ready).toBe(0);
    emit('[    0.000000] Linux version 6.1.0\r\n[    1.2] EXT4-fs (vda): mounted\r\n');
    emit('\r\nDebian GNU/Linux 12 web1 ttyS0\r\n\r\nweb1 log');
    expect(ready).toBe(0);
    // The prompt split across two chunks is found, once; then the watch lets go.
    emit('in: ');
    expect(ready).toBe(1);
    expect(watching()).toBe(false);
  });

  it('reads an adopted VM’s scrollback, from its last kernel banner on', () => {
    const adopted = fakeConsole(`[0.0] Linux version 6.1\n${CLOUD_INIT}`);
    let ready = 0;
    watchConsoleReady(adopted.con, true, () => ready++);
    expect(ready).toBe(1);
    // A prompt of the boot before the last banner is history.
    const rebooted = fakeConsole(`${GETTY}\r\n[0.0] Linux version 6.1\r\n[1.0] Run /init\r\n`);
    let again = 0;
    watchConsoleReady(rebooted.con, true, () => again++);
    expect(again).toBe(0);
  });
});
