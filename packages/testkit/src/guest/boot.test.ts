import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { access, copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BOOT_MARKER, ensureTestGuest, type TestGuest } from '.';
import { qemuArgsForTestGuest, TEST_GUEST_QEMU, type TestGuestQemuOptions } from './qemu-args';

const run = promisify(execFile);

async function waitForPath(path: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await access(path);
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(20);
    }
  }
}

/** Collects everything the guest prints; `waitFor` looks only at output after `from`. */
class SerialConsole {
  output = '';
  private waiters: Array<() => void> = [];

  constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.output += chunk.replaceAll('\r', '');
      for (const w of this.waiters) w();
    });
  }

  static async open(path: string): Promise<SerialConsole> {
    const socket = connect(path);
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    return new SerialConsole(socket);
  }

  waitFor(pattern: RegExp, timeoutMs: number, from = 0): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const m = pattern.exec(this.output.slice(from));
        if (!m) return;
        done();
        resolve(m);
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new Error(`no ${pattern} on the console within ${timeoutMs} ms; got:\n${this.output.slice(from)}`),
        );
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== check);
      };
      this.waiters.push(check);
      check();
    });
  }

  /** Types a line; returns the output offset before it, for `waitFor`. */
  type(line: string): number {
    const from = this.output.length;
    this.socket.write(`${line}\n`);
    return from;
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Just enough QMP: the greeting, capabilities negotiation, one command at a time. */
class Qmp {
  private buffer = '';
  private pending: Array<(msg: Record<string, unknown>) => void> = [];

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      let nl = this.buffer.indexOf('\n');
      while (nl >= 0) {
        const msg = JSON.parse(this.buffer.slice(0, nl)) as Record<string, unknown>;
        this.buffer = this.buffer.slice(nl + 1);
        if (!('event' in msg)) this.pending.shift()?.(msg);
        nl = this.buffer.indexOf('\n');
      }
    });
  }

  static async open(path: string): Promise<Qmp> {
    const socket = connect(path);
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const qmp = new Qmp(socket);
    await new Promise<void>((resolve) => qmp.pending.push(() => resolve())); // greeting
    await qmp.execute('qmp_capabilities');
    return qmp;
  }

  execute(command: string): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      this.pending.push((msg) => ('error' in msg ? reject(new Error(JSON.stringify(msg))) : resolve(msg)));
      this.socket.write(`${JSON.stringify({ execute: command })}\n`);
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

interface RunningGuest {
  qemu: ChildProcess;
  exited: Promise<number | null>;
  console: SerialConsole;
  qmp: Qmp;
  startedAt: number;
  stderr: () => string;
}

const running: RunningGuest[] = [];
let guest: TestGuest;
let scratch: string;

async function boot(name: string, o: TestGuestQemuOptions, extraArgs: string[] = []): Promise<RunningGuest> {
  const serialSocket = join(scratch, `${name}.serial`);
  const qmpSocket = join(scratch, `${name}.qmp`);
  const startedAt = performance.now();
  const qemu = spawn(
    TEST_GUEST_QEMU,
    [...qemuArgsForTestGuest(guest, { ...o, serialSocket, qmpSocket }), ...extraArgs],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  let stderr = '';
  qemu.stderr?.on('data', (d) => {
    stderr += d;
  });
  const exited = new Promise<number | null>((resolve) => qemu.once('exit', (code) => resolve(code)));
  await Promise.race([
    Promise.all([waitForPath(serialSocket, 10_000), waitForPath(qmpSocket, 10_000)]),
    exited.then((code) => {
      throw new Error(`qemu exited with ${code}: ${stderr}`);
    }),
  ]);
  const g: RunningGuest = {
    qemu,
    exited,
    console: await SerialConsole.open(serialSocket),
    qmp: await Qmp.open(qmpSocket),
    startedAt,
    stderr: () => stderr,
  };
  running.push(g);
  return g;
}

/** Presses the ACPI power button and resolves with QEMU's exit code once it quits by itself. */
async function powerButton(g: RunningGuest, timeoutMs: number): Promise<number | null> {
  await g.qmp.execute('system_powerdown');
  const timeout = sleep(timeoutMs).then(() => {
    throw new Error(`guest still running ${timeoutMs} ms after system_powerdown:\n${g.console.output}`);
  });
  return Promise.race([g.exited, timeout]);
}

beforeAll(async () => {
  guest = await ensureTestGuest();
  scratch = await mkdtemp(join(tmpdir(), 'nqvm-boot-'));
}, 300_000);

afterAll(async () => {
  for (const g of running) {
    g.console.close();
    g.qmp.close();
    if (g.qemu.exitCode === null && g.qemu.signalCode === null) {
      g.qemu.kill('SIGKILL');
      await g.exited;
    }
  }
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

describe('test guest under QEMU/TCG', () => {
  it('boots from the root disk, runs console commands and stops cleanly on the power button', async () => {
    const disk = join(scratch, 'root.ext4');
    await copyFile(guest.rootfs, disk);
    const g = await boot('disk', { rootDisk: disk });

    const marker = await g.console.waitFor(
      new RegExp(`${BOOT_MARKER} .*root=(\\w+) uptime=(\\S+)\\n`),
      60_000,
    );
    const hostSeconds = ((performance.now() - g.startedAt) / 1000).toFixed(2);
    console.log(`boot to ${BOOT_MARKER} (root disk): ${hostSeconds} s, guest uptime ${marker[2]} s`);
    expect(marker[1]).toBe('disk');

    const from = g.console.type('echo $((6*7))');
    await g.console.waitFor(/\n42\n/, 20_000, from);

    const code = await powerButton(g, 30_000);
    expect(code).toBe(0);
    expect(g.console.output).toContain('nqvm: power button');
    expect(g.console.output).not.toMatch(/umount: /);
    // Shut down through busybox init: the file system was left clean, no journal to replay.
    await run('e2fsck', ['-fn', disk]);
    const { stdout } = await run('dumpe2fs', ['-h', disk]);
    expect(stdout).toMatch(/Filesystem state:\s+clean/);
    expect(stdout).not.toContain('needs_recovery');
  }, 120_000);

  it('asks for a login once an account has a password, applies /etc/hostname, mounts a CIDATA drive', async () => {
    const disk = join(scratch, 'login.ext4');
    await copyFile(guest.rootfs, disk);
    // busybox mkpasswd -m sha512 -S abcdefgh S3cret-pw
    const hash =
      '$6$abcdefgh$l5Rv6.qDmLOjiCGNTWfV3njd1blJysIMTWYBMlKPb8Q/5GULHVOHSoixqE0C/RG3kz23RqbGDouGTQSz0MyXl/';
    const files = {
      hostname: 'login-test\n',
      passwd: `${(await run('debugfs', ['-R', 'cat /etc/passwd', disk])).stdout}carol:x:1000:1000::/home/carol:/bin/sh\n`,
      shadow: `${(await run('debugfs', ['-R', 'cat /etc/shadow', disk])).stdout}carol:${hash}:19000:0:99999:7:::\n`,
    };
    const cmds: string[] = ['mkdir /home/carol', 'set_inode_field /home/carol uid 1000'];
    for (const [name, text] of Object.entries(files)) {
      await writeFile(join(scratch, name), text);
      cmds.push(`rm /etc/${name}`, `write ${join(scratch, name)} /etc/${name}`);
      cmds.push(`set_inode_field /etc/${name} mode 0100${name === 'shadow' ? '600' : '644'}`);
    }
    await writeFile(join(scratch, 'login.debugfs'), `${cmds.join('\n')}\n`);
    await run('debugfs', ['-w', '-f', join(scratch, 'login.debugfs'), disk]);
    const cidata = join(scratch, 'cidata.img');
    await run('mkfs.vfat', ['-n', 'CIDATA', '-C', cidata, '1024']);
    await writeFile(join(scratch, 'meta-data'), 'instance-id: i-login\n');
    await run('mcopy', ['-i', cidata, join(scratch, 'meta-data'), '::/meta-data']);

    const g = await boot('login', { rootDisk: disk }, [
      '-drive',
      `id=cidata,file=${cidata},format=raw,if=none,readonly=on`,
      '-device',
      'virtio-blk-device,drive=cidata',
    ]);
    await g.console.waitFor(new RegExp(`${BOOT_MARKER} hostname=login-test root=disk`), 60_000);
    expect(g.console.output).toContain('nqvm: config drive /dev/vdb at /run/cidata');
    await g.console.waitFor(/login-test login: $/, 20_000);
    let from = g.console.type('carol');
    await g.console.waitFor(/Password: $/, 20_000, from);
    from = g.console.type('S3cret-pw');
    await g.console.waitFor(/login-test:~\$ /, 20_000, from);
    from = g.console.type('echo U=$(id -un) HOME=$HOME; cat /run/cidata/meta-data');
    await g.console.waitFor(/U=carol HOME=\/home\/carol\ninstance-id: i-login\n/, 20_000, from);
  }, 120_000);

  it('stays in the initramfs without a disk, applies nqvm.* settings and stops on the power button', async () => {
    const g = await boot(
      'initramfs',
      {
        rootDisk: false,
        append: 'nqvm.ip=10.0.2.15/24 nqvm.gw=10.0.2.2 nqvm.dns=10.0.2.3 nqvm.hostname=probe',
      },
      ['-netdev', 'user,id=n0', '-device', 'virtio-net-device,netdev=n0'],
    );
    const marker = await g.console.waitFor(
      new RegExp(`${BOOT_MARKER} hostname=(\\S+) root=(\\w+) uptime=(\\S+)\\n`),
      60_000,
    );
    const hostSeconds = ((performance.now() - g.startedAt) / 1000).toFixed(2);
    console.log(`boot to ${BOOT_MARKER} (initramfs): ${hostSeconds} s, guest uptime ${marker[3]} s`);
    expect(marker.slice(1, 3)).toEqual(['probe', 'initramfs']);

    let from = g.console.type('ip -o -4 addr show eth0; ip route; cat /etc/resolv.conf; echo DONE=$((1+1))');
    await g.console.waitFor(/DONE=2\n/, 20_000, from);
    const out = g.console.output.slice(from);
    expect(out).toMatch(/eth0\s+inet 10\.0\.2\.15\/24/);
    expect(out).toContain('default via 10.0.2.2 dev eth0');
    expect(out).toContain('nameserver 10.0.2.3');

    from = g.console.type('busybox ping -c 1 -W 5 10.0.2.2 >/dev/null && echo PING=$((40+2))');
    await g.console.waitFor(/PING=42\n/, 20_000, from);

    expect(await powerButton(g, 30_000)).toBe(0);
  }, 120_000);
});
