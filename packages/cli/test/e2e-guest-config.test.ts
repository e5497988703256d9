/**
 * End to end on a real guest (QEMU under TCG): a VM created through the API with a user, a
 * password, a host name and an SSH key. The agent writes them into the VM's disk (the busybox
 * image has no cloud-init, so mode auto injects) and onto a config drive; the test logs in on
 * the serial console with those credentials and reads the drive from inside the guest.
 *
 * Console input: the API serves only the console's output, so once the login prompt shows,
 * the agent is stopped (VMs outlive it) and the test talks to the QEMU console socket in the
 * VM's folder, which QEMU serves to one client at a time.
 */
import fs from 'node:fs';
import { connect, type Socket } from 'node:net';
import path from 'node:path';
import { BOOT_MARKER } from '@nqvm/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestManager } from '../../manager/test/harness';
import { type AgentProcess, qemuPids, startAgent, startStack, stopAgent, waitFor } from './stack';

const PASSWORD = 'S3cret-pw';
const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKq2fP1n3h0bQxv4Xq3Jb6cWJx5yWnD0mVJ1oQ7rGZ2t test';

/** The serial console through QEMU's socket: everything it printed, carriage returns dropped. */
class SerialConsole {
  output = '';

  constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      this.output += d.replaceAll('\r', '');
    });
  }

  static async open(file: string): Promise<SerialConsole> {
    const socket = connect(file);
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    return new SerialConsole(socket);
  }

  /** Sends `text`; resolves with the output after it once `until` matches there. */
  async send(text: string, until: RegExp, timeoutMs = 20_000): Promise<string> {
    const from = this.output.length;
    this.socket.write(text);
    return waitFor(
      async () => (until.test(this.output.slice(from)) ? this.output.slice(from) : null),
      timeoutMs,
      () => `no ${until} on the console after ${JSON.stringify(text)}:\n${this.output.slice(from)}`,
    );
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Every file under `dir` (disk images included) that holds `needle`. */
function filesHolding(dir: string, needle: string): string[] {
  const hits: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    const file = path.join(entry.parentPath, entry.name);
    if (entry.isFile() && fs.readFileSync(file).includes(needle)) hits.push(file);
  }
  return hits;
}

/** Larger than the test guest's root image: the disk must be grown. */
const DISK_MIB = 192;

describe('guest configuration on a real guest', () => {
  let t: TestManager;
  let api: Awaited<ReturnType<typeof startStack>>['api'];
  let agent: AgentProcess;
  let con: SerialConsole | undefined;
  const created: string[] = [];

  beforeAll(async () => {
    const s = await startStack();
    t = s.t;
    api = s.api;
    agent = await startAgent(t, 'e2e-guest-config');
    await agent.hostId();
  }, 120_000);

  afterAll(async () => {
    con?.close();
    // The agent is stopped by the test: end its VMM directly.
    for (const id of created) for (const pid of qemuPids(id)) process.kill(pid, 'SIGKILL');
    if (agent) await stopAgent(agent);
    await t?.close();
    if (agent) fs.rmSync(agent.stateDir, { recursive: true, force: true });
  }, 60_000);

  it('logs in with the configured user and password, sees the host name and keys, and reads the config drive', async () => {
    const started = Date.now();
    const res = await api.post('/api/v1/vms', {
      name: 'guest-config',
      mem_mib: 128,
      disk_size_mib: DISK_MIB,
      guest_config: {
        username: 'alice',
        password: PASSWORD,
        hostname: 'cfg-test',
        ssh_authorized_keys: [KEY],
      },
    });
    expect(res.status).toBe(202);
    const id: string = res.body.vm.id;
    created.push(id);
    expect(res.body.vm.guest_config).toEqual({
      mode: 'auto',
      username: 'alice',
      has_password: true,
      ssh_authorized_keys: [KEY],
      hostname: 'cfg-test',
      has_user_data: false,
    });
    expect((await api.get(`/api/v1/operations/${res.body.operation.id}?wait=60`)).body.status).toBe(
      'succeeded',
    );
    expect((await api.get(`/api/v1/vms/${id}`)).body.state).toBe('running');

    // Neither the API nor any stored row holds the plaintext; the VM row holds its crypt hash.
    expect(JSON.stringify((await api.get(`/api/v1/vms/${id}`)).body)).not.toContain(PASSWORD);
    const db = t.manager.services.store.db;
    for (const table of await db.introspection.getTables()) {
      const rows = await db
        .selectFrom(table.name as never)
        .selectAll()
        .execute();
      expect(JSON.stringify(rows), `table ${table.name}`).not.toContain(PASSWORD);
    }
    const row = await db.selectFrom('vms').select('spec').where('id', '=', id).executeTakeFirstOrThrow();
    const hash: string = JSON.parse(row.spec).guest_config.password_hash;
    expect(hash).toMatch(/^\$6\$[./0-9A-Za-z]+\$[./0-9A-Za-z]{86}$/);

    // QEMU got a raw root disk (debugfs cannot edit a qcow2) recorded as QEMU's, and the drive.
    const vmDir = path.join(agent.stateDir, 'vms', id);
    expect(JSON.parse(fs.readFileSync(path.join(vmDir, 'disk.json'), 'utf8'))).toEqual({
      vmm: 'qemu',
      format: 'raw',
    });
    expect(fs.readdirSync(vmDir)).toEqual(
      expect.arrayContaining(['root.raw', 'cidata.img', 'guest-config.json']),
    );

    const consoleTail = async () =>
      (
        await fetch(`${t.url}/api/v1/vms/${id}/console?tail=65536`, {
          headers: { authorization: `Bearer ${t.adminToken}` },
        })
      ).text();
    const boot = await waitFor(
      async () => {
        const text = await consoleTail();
        return /cfg-test login: $/m.test(text) ? text : null;
      },
      60_000,
      () => 'no login prompt on the console',
    );
    expect(boot).toMatch(new RegExp(`${BOOT_MARKER} hostname=cfg-test root=disk`));
    expect(boot).toContain('nqvm: config drive /dev/vdb at /run/cidata');
    console.log(`create to login prompt: ${((Date.now() - started) / 1000).toFixed(1)} s`);

    await stopAgent(agent);
    con = await SerialConsole.open(path.join(vmDir, 'console.sock'));
    await con.send('alice\n', /Password: $/);
    expect(await con.send('not-the-password\n', /login: $/, 30_000)).toContain('Login incorrect');
    await con.send('alice\n', /Password: $/);
    await con.send(`${PASSWORD}\n`, /cfg-test:~\$ /);

    const out = await con.send(
      'echo H=$(hostname) U=$(id -un) HOME=$HOME; cat ~/.ssh/authorized_keys; grep cidata /proc/mounts; cat /run/cidata/meta-data /run/cidata/user-data; echo SECTORS=$(cat /sys/block/vda/size); df -k / | tail -n 1; echo END=$((6*7))\n',
      /END=42\n/,
    );
    expect(out).toContain('H=cfg-test U=alice HOME=/home/alice\n');
    expect(out).toContain(`\n${KEY}\n`);
    expect(out).toMatch(/\n\/dev\/vdb \/run\/cidata vfat ro[,\s]/);
    expect(out).toContain('local-hostname: cfg-test\n');
    expect(out).toContain(`instance-id: ${id}\n`);
    expect(out).toContain('hostname: cfg-test\n');
    expect(out).toContain(`passwd: ${hash}\n`);
    // The root disk was grown to disk_size_mib before boot, its ext4 with it (offline resize2fs).
    expect(out).toContain(`SECTORS=${(DISK_MIB * 1024 * 1024) / 512}\n`);
    const df = /\n\S+\s+(\d+)\s+\d+\s+\d+\s+\d+%\s+\/\n/.exec(out);
    expect(df, 'df -k / output').not.toBeNull();
    expect(Number(df?.[1])).toBeGreaterThan((DISK_MIB - 24) * 1024);
    expect(con.output).not.toContain(PASSWORD);
    expect(filesHolding(agent.stateDir, PASSWORD)).toEqual([]);
    expect(filesHolding(t.dataDir, PASSWORD)).toEqual([]);
    console.log(`create to commands done: ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }, 90_000);
});
