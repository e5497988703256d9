import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeSimulatorBinary } from './binary';
import { fcRequest } from './client';
import { journalRequests, readJournal } from './journal';
import { writeTinyElfKernel } from './kernel-fixture';
import { type LaunchedSim, launchSimulator } from './launch';
import { EMPTY_ID_FAULT, INVALID_ID_FAULT } from './resource-id';
import { FirecrackerSimulator, type SimResponse } from './simulator';
import {
  createBodyValidator,
  FIRECRACKER_SIM_VERSIONS,
  type FirecrackerSimVersion,
  loadFirecrackerSpec,
} from './spec';

const running: LaunchedSim[] = [];
let root: string;
let counter = 0;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'fc-sim-test-'));
});

afterAll(async () => {
  await Promise.all(running.map((s) => s.kill()));
  await rm(root, { recursive: true, force: true });
});

async function waitFor(cond: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe.each(FIRECRACKER_SIM_VERSIONS)('firecracker simulator v%s', (version: FirecrackerSimVersion) => {
  let bin: string;
  let journal: string;
  let kernel: string;
  let disk: string;
  const validate = createBodyValidator(loadFirecrackerSpec(version));

  beforeAll(async () => {
    const dir = join(root, version);
    bin = await writeSimulatorBinary(join(dir, 'bin'), version);
    journal = join(dir, 'journal.jsonl');
    kernel = await writeTinyElfKernel(join(dir, 'vmlinux'));
    disk = join(dir, 'rootfs.ext4');
    await writeFile(disk, Buffer.alloc(4096));
  });

  async function start(stdin: 'fifo' | 'null' = 'fifo', args: string[] = []) {
    const dir = join(root, version, `vm${++counter}`);
    await import('node:fs/promises').then((fs) => fs.mkdir(dir, { recursive: true }));
    const sim = await launchSimulator({ bin, dir, stdin, args, env: { FC_SIM_JOURNAL: journal } });
    running.push(sim);
    const api = (method: string, path: string, body?: unknown) => fcRequest(sim.socket, method, path, body);
    return { sim, dir, api };
  }

  async function configure(api: (m: string, p: string, b?: unknown) => Promise<{ status: number }>) {
    const reqs: [string, string, unknown][] = [
      ['PUT', '/boot-source', { kernel_image_path: kernel, boot_args: 'console=ttyS0' }],
      ['PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 16 }],
      [
        'PUT',
        '/drives/root',
        { drive_id: 'root', path_on_host: disk, is_root_device: true, is_read_only: false },
      ],
      [
        'PUT',
        '/network-interfaces/eth0',
        { iface_id: 'eth0', host_dev_name: 'tap-sim0', guest_mac: '02:00:00:00:00:01' },
      ],
      [
        'PUT',
        '/mmds/config',
        { network_interfaces: ['eth0'], version: 'V2', ipv4_address: '169.254.169.254' },
      ],
    ];
    for (const [m, p, b] of reqs) expect((await api(m, p, b)).status, `${m} ${p}`).toBe(204);
  }

  const faultOf = (r: { status: number; body: unknown }) => {
    expect(r.status).toBe(400);
    const msg = (r.body as { fault_message?: unknown }).fault_message;
    expect(typeof msg).toBe('string');
    return msg as string;
  };

  it('answers GETs in the shapes of the spec', async () => {
    const { api } = await start();
    const info = await api('GET', '/');
    expect(info.status).toBe(200);
    expect(validate('InstanceInfo', info.body)).toBeNull();
    expect(info.body).toMatchObject({ state: 'Not started', vmm_version: version, app_name: 'Firecracker' });
    const ver = await api('GET', '/version');
    expect(validate('FirecrackerVersion', ver.body)).toBeNull();
    const mc = await api('GET', '/machine-config');
    expect(validate('MachineConfiguration', mc.body)).toBeNull();
    expect(mc.body).toMatchObject({ vcpu_count: 1, mem_size_mib: 128 });
    await configure(api);
    const cfg = await api('GET', '/vm/config');
    expect(cfg.status).toBe(200);
    expect(validate('FullVmConfiguration', cfg.body)).toBeNull();
    expect(cfg.body).toMatchObject({
      'boot-source': { kernel_image_path: kernel },
      drives: [{ drive_id: 'root' }],
    });
    const mmds = await api('GET', '/mmds');
    expect(mmds).toEqual({ status: 200, body: {} });
  });

  it('rejects unknown fields, wrong types, unknown paths and bad ids with 400', async () => {
    const { api } = await start();
    expect(
      faultOf(await api('PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 64, bogus: 1 })),
    ).toMatch(/unknown field `bogus`/);
    expect(faultOf(await api('PUT', '/machine-config', { vcpu_count: '1', mem_size_mib: 64 }))).toMatch(
      /invalid type/,
    );
    expect(faultOf(await api('PUT', '/machine-config', { vcpu_count: 33, mem_size_mib: 64 }))).toMatch(
      /invalid/,
    );
    expect(faultOf(await api('PUT', '/boot-source', '{"kernel_image_path": '))).toMatch(/deserializing/);
    expect(faultOf(await api('GET', '/nope'))).toBe('Invalid request method and/or path: GET /nope.');
    expect(faultOf(await api('DELETE', '/drives/root'))).toMatch(/Invalid request method and\/or path/);
    expect(faultOf(await api('PUT', '/actions'))).toBe('Empty PUT request.');
    expect(
      faultOf(
        await api('PUT', '/drives/a', {
          drive_id: 'b',
          path_on_host: disk,
          is_root_device: false,
          is_read_only: true,
        }),
      ),
    ).toMatch(/does not match/);
    expect(
      faultOf(await api('PUT', '/mmds/config', { network_interfaces: ['eth0'], ipv4_address: '10.0.0.1' })),
    ).toMatch(/format/);
    expect(faultOf(await api('PUT', '/boot-source', { kernel_image_path: '/does/not/exist' }))).toMatch(
      /No such file/,
    );
    expect(faultOf(await api('PATCH', '/vm', { state: 'Paused' }))).toMatch(/not supported before starting/);
    expect(faultOf(await api('PUT', '/actions', { action_type: 'InstanceStart' }))).toMatch(
      /without kernel configuration/,
    );
    expect(faultOf(await api('PUT', '/mmds', 'x'.repeat(60_000)))).toMatch(/larger than the limit of 51200/);
  });

  it('gates endpoints on the version spec (/entropy from 1.4, /serial only where the spec has it)', async () => {
    const { api } = await start();
    const entropy = await api('PUT', '/entropy', {});
    if (version === '1.1.0')
      expect(faultOf(entropy)).toBe('Invalid request method and/or path: PUT /entropy.');
    else expect(entropy.status).toBe(204);
    const serial = await api('PUT', '/serial', {});
    if (version === '1.16.1') expect(serial.status).toBe(204);
    else expect(faultOf(serial)).toBe('Invalid request method and/or path: PUT /serial.');
    const nic = { iface_id: 'eth0', host_dev_name: 'tap-x', mtu: 1400 };
    const put = await api('PUT', '/network-interfaces/eth0', nic);
    if (version === '1.16.1') expect(put.status).toBe(204);
    else expect(faultOf(put)).toMatch(/unknown field `mtu`/);
  });

  it('enforces the boot phases and snapshot rules', async () => {
    const { api, dir } = await start();
    await configure(api);
    expect((await api('PUT', '/actions', { action_type: 'InstanceStart' })).status).toBe(204);
    expect(faultOf(await api('PUT', '/actions', { action_type: 'InstanceStart' }))).toBe(
      'The requested operation is not supported after starting the microVM.',
    );
    expect(
      faultOf(await api('PUT', '/mmds/config', { network_interfaces: ['eth0'], version: 'V2' })),
    ).toMatch(/not supported after starting/);
    expect(faultOf(await api('PUT', '/boot-source', { kernel_image_path: kernel }))).toMatch(
      /after starting/,
    );
    const snap = { snapshot_path: join(dir, 'vm.state'), mem_file_path: join(dir, 'vm.mem') };
    expect(faultOf(await api('PUT', '/snapshot/create', snap))).toMatch(/must be paused/);
    expect(faultOf(await api('PUT', '/snapshot/load', { ...snap, mem_file_path: undefined }))).toMatch(
      /after starting/,
    );
    expect((await api('PUT', '/mmds', { latest: { 'meta-data': { id: 'x' } } })).status).toBe(204);
    expect((await api('PATCH', '/mmds', { latest: { 'meta-data': { n: 1 } } })).status).toBe(204);
    expect((await api('GET', '/mmds')).body).toEqual({ latest: { 'meta-data': { id: 'x', n: 1 } } });
    expect((await api('PATCH', '/vm', { state: 'Paused' })).status).toBe(204);
    expect((await api('GET', '/')).body).toMatchObject({ state: 'Paused' });
    const diff = await api('PUT', '/snapshot/create', { ...snap, snapshot_type: 'Diff' });
    // Diff needs track_dirty_pages before 1.13 (mincore-based diffs came with 1.13).
    if (version === '1.1.0') expect(faultOf(diff)).toMatch(/track_dirty_pages/);
    else expect(diff.status).toBe(204);
    expect((await api('PUT', '/snapshot/create', { ...snap, snapshot_type: 'Full' })).status).toBe(204);
    expect((await stat(snap.mem_file_path)).size).toBe(16 * 1024 * 1024);
    expect(JSON.parse(await readFile(snap.snapshot_path, 'utf8'))).toMatchObject({ created_by: version });
  });

  it('loads a snapshot only into a fresh process, never starts it again, and forgets MMDS data', async () => {
    const first = await start();
    await configure(first.api);
    await first.api('PUT', '/actions', { action_type: 'InstanceStart' });
    await first.api('PUT', '/mmds', { a: 1 });
    await first.api('PATCH', '/vm', { state: 'Paused' });
    const snap = { snapshot_path: join(first.dir, 'vm.state'), mem_file_path: join(first.dir, 'vm.mem') };
    expect((await first.api('PUT', '/snapshot/create', snap)).status).toBe(204);
    await first.sim.kill();
    const load = {
      snapshot_path: snap.snapshot_path,
      mem_backend: { backend_type: 'File', backend_path: snap.mem_file_path },
      resume_vm: true,
    };

    const configured = await start();
    expect((await configured.api('PUT', '/boot-source', { kernel_image_path: kernel })).status).toBe(204);
    expect(faultOf(await configured.api('PUT', '/snapshot/load', load))).toBe(
      'Loading a microVM snapshot not allowed after configuring boot-specific resources.',
    );

    const fresh = await start();
    const log = join(fresh.dir, 'fc.log');
    await writeFile(log, '');
    expect((await fresh.api('PUT', '/logger', { log_path: log, level: 'Warning' })).status).toBe(204);
    expect(
      faultOf(await fresh.api('PUT', '/snapshot/load', { ...load, mem_file_path: snap.mem_file_path })),
    ).toMatch(/not both/);
    expect((await fresh.api('PUT', '/snapshot/load', load)).status).toBe(204);
    expect((await fresh.api('GET', '/')).body).toMatchObject({ state: 'Running' });
    expect(faultOf(await fresh.api('PUT', '/actions', { action_type: 'InstanceStart' }))).toMatch(
      /after starting/,
    );
    expect((await fresh.api('GET', '/mmds')).body).toEqual({});
    const cfg = (await fresh.api('GET', '/vm/config')).body as Record<string, unknown>;
    expect(cfg['boot-source']).toBeUndefined();
    expect(cfg['mmds-config']).toMatchObject({ version: 'V2' });
  });

  it('refuses a snapshot of another version and exits after a failed load', async () => {
    const { api, dir, sim } = await start();
    const state = join(dir, 'foreign.state');
    const mem = join(dir, 'foreign.mem');
    await writeFile(state, JSON.stringify({ magic: 'NQVM-FC-SIM-SNAPSHOT', format: '0.9', machine: {} }));
    await writeFile(mem, '');
    const r = await api('PUT', '/snapshot/load', {
      snapshot_path: state,
      mem_backend: { backend_type: 'File', backend_path: mem },
    });
    expect(faultOf(r)).toMatch(/version mismatch/);
    expect((await sim.exited).code).toBe(1);
  });

  it('boots to a console that echoes FIFO input, and exits on SendCtrlAltDel', async () => {
    const { api, dir, sim } = await start('fifo');
    await configure(api);
    await api('PUT', '/actions', { action_type: 'InstanceStart' });
    const consoleLog = join(dir, 'console.log');
    await waitFor(async () => (await readFile(consoleLog, 'utf8')).includes('nqvm-sim: guest booted'));
    await writeFile(join(dir, 'console.in'), 'echo-me-please\n');
    await waitFor(async () => (await readFile(consoleLog, 'utf8')).includes('echo-me-please'));
    expect((await api('PUT', '/actions', { action_type: 'SendCtrlAltDel' })).status).toBe(204);
    expect(await sim.exited).toEqual({ code: 0, signal: null });
    expect(await readFile(consoleLog, 'utf8')).toContain('reboot: Restarting system');
  });

  it('wires serial input only from a TTY or FIFO from 1.5 on', async () => {
    const { sim } = await start('null');
    const events = (await readJournal(journal)).filter(
      (e) => e.kind === 'event' && e.pid === sim.pid && e.event === 'serial-input',
    );
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ detail: { stdin: 'char-device', wired: version === '1.1.0' } });
  });

  it('refuses to start on an existing socket path and dies by SIGTERM', async () => {
    const { sim, dir } = await start();
    expect(existsSync(join(dir, 'api.sock'))).toBe(true);
    sim.child.kill('SIGTERM');
    expect((await sim.exited).signal).toBe('SIGTERM');
    // The socket file stays behind, as with Firecracker: the next start must remove it.
    const again = spawn(bin, ['--api-sock', join(dir, 'api.sock')], { stdio: 'ignore' });
    const code = await new Promise((resolve) => again.once('exit', resolve));
    expect(code).toBe(1);
  });

  it('journals every request with its phase and status', async () => {
    const entries = journalRequests(await readJournal(journal));
    expect(entries.length).toBeGreaterThan(20);
    for (const e of entries) {
      expect(e.version).toBe(version);
      expect(['Not started', 'Running', 'Paused']).toContain(e.phase);
      expect(e.status === 400).toBe(e.fault !== undefined);
    }
  });

  it('starts from --config-file and writes metrics on FlushMetrics', async () => {
    const dir = join(root, version, `cfg${++counter}`);
    await import('node:fs/promises').then((fs) => fs.mkdir(dir, { recursive: true }));
    const metrics = join(dir, 'metrics.json');
    await writeFile(metrics, '');
    const config = join(dir, 'vm.json');
    await writeFile(
      config,
      JSON.stringify({
        'boot-source': { kernel_image_path: kernel, boot_args: 'console=ttyS0' },
        'machine-config': { vcpu_count: 2, mem_size_mib: 32 },
        // The config file builds the devices directly: Firecracker checks no id there.
        drives: [{ drive_id: 'root-1', path_on_host: disk, is_root_device: true, is_read_only: true }],
        metrics: { metrics_path: metrics },
      }),
    );
    const sim = await launchSimulator({
      bin,
      dir,
      args: ['--config-file', config],
      env: { FC_SIM_JOURNAL: journal },
    });
    running.push(sim);
    expect((await fcRequest(sim.socket, 'GET', '/')).body).toMatchObject({ state: 'Running' });
    expect((await fcRequest(sim.socket, 'PUT', '/actions', { action_type: 'FlushMetrics' })).status).toBe(
      204,
    );
    const lines = (await readFile(metrics, 'utf8')).trim().split('\n');
    expect(JSON.parse(lines.at(-1)!)).toHaveProperty('utc_timestamp_ms');
    expect((await fcRequest(sim.socket, 'GET', '/vm/config')).body).toMatchObject({
      drives: [{ drive_id: 'root-1' }],
    });
  });

  it('refuses a resource id with a dash over HTTP, as Firecracker answers PUT /drives/vol-0a1b', async () => {
    const { api } = await start();
    const drive = { drive_id: 'vol-0a1b', path_on_host: disk, is_root_device: false, is_read_only: true };
    expect(await api('PUT', '/drives/vol-0a1b', drive)).toEqual({
      status: 400,
      body: { fault_message: 'API Resource IDs can only contain alphanumeric characters and underscores.' },
    });
    // Not percent-decoded: the `%` is refused as well.
    expect(faultOf(await api('PUT', '/drives/vol%5F0a1b', { ...drive, drive_id: 'vol_0a1b' }))).toBe(
      INVALID_ID_FAULT,
    );
    expect((await api('PUT', '/drives/vol_0a1b', { ...drive, drive_id: 'vol_0a1b' })).status).toBe(204);
    expect(faultOf(await api('PUT', '/drives/', drive))).toBe(EMPTY_ID_FAULT);
  });

  it('panics on the request it is told to: logs the panic and dies by SIGABRT without answering', async () => {
    const dir = join(root, version, `panic${++counter}`);
    await import('node:fs/promises').then((fs) => fs.mkdir(dir, { recursive: true }));
    const panicking = await writeSimulatorBinary(join(dir, 'bin'), version, {
      panicOn: {
        request: 'ACTION InstanceStart',
        message: 'Cannot create the KVM object: Permission denied',
      },
    });
    const sim = await launchSimulator({ bin: panicking, dir, env: { FC_SIM_JOURNAL: journal } });
    running.push(sim);
    const api = (method: string, path: string, body?: unknown) => fcRequest(sim.socket, method, path, body);
    await configure(api);
    const log = join(dir, 'fc.log');
    await writeFile(log, '');
    expect((await api('PUT', '/logger', { log_path: log, level: 'Info' })).status).toBe(204);
    await expect(api('PUT', '/actions', { action_type: 'InstanceStart' })).rejects.toThrow(
      /socket hang up|ECONNRESET/,
    );
    expect(await sim.exited).toEqual({ code: null, signal: 'SIGABRT' });
    const text = await readFile(log, 'utf8');
    expect(text).toMatch(/Firecracker panicked at .*\nCannot create the KVM object: Permission denied/);
    expect(existsSync(join(dir, 'core'))).toBe(false);

    // Without a logger the panic goes to stderr before 1.5 and to stdout from then on: here both
    // land in console.log.
    const quiet = join(dir, 'quiet');
    await import('node:fs/promises').then((fs) => fs.mkdir(quiet));
    const early = await launchSimulator({
      bin: panicking,
      dir: quiet,
      env: { NQVM_FC_SIM_PANIC_ON: 'PUT /drives/{drive_id}', NQVM_FC_SIM_PANIC_MESSAGE: 'drive panic' },
    });
    running.push(early);
    await expect(
      fcRequest(early.socket, 'PUT', '/drives/root', {
        drive_id: 'root',
        path_on_host: disk,
        is_root_device: true,
        is_read_only: false,
      }),
    ).rejects.toThrow(/socket hang up|ECONNRESET/);
    expect((await early.exited).signal).toBe('SIGABRT');
    expect(await readFile(join(quiet, 'console.log'), 'utf8')).toContain('drive panic');
  });
});

describe.each(FIRECRACKER_SIM_VERSIONS)('Firecracker resource ids, simulator v%s', (version) => {
  let dir: string;
  let sim: FirecrackerSimulator;
  const put = (path: string, body: unknown) => sim.handle('PUT', path, JSON.stringify(body));
  const fault = (r: SimResponse) =>
    r.status === 400 ? (r.body as { fault_message: string }).fault_message : null;

  beforeAll(async () => {
    dir = join(root, `ids-${version}`);
    await import('node:fs/promises').then((fs) => fs.mkdir(dir, { recursive: true }));
    await writeFile(join(dir, 'disk'), Buffer.alloc(4096));
    sim = new FirecrackerSimulator({
      version,
      instanceId: 'ids',
      cwd: dir,
      payloadLimit: 51_200,
      mmdsSizeLimit: 51_200,
      bootTimer: false,
      serialInput: false,
      writeConsole: () => {},
      writeStderr: () => {},
      exit: () => {},
      abort: () => {},
    });
  });

  const drive = (id: string) => ({
    drive_id: id,
    path_on_host: 'disk',
    is_root_device: false,
    is_read_only: true,
  });
  const nic = (id: string, n: number) => ({ iface_id: id, host_dev_name: `tap-ids${n}` });

  it('takes `_` and alphanumerics (Unicode too, at any length) in every path id', () => {
    const ok = ['vol_0a1b', 'A9', '_', 'dísk', '١٢', 'x'.repeat(200)];
    ok.forEach((id, i) => {
      expect(fault(put(`/drives/${id}`, drive(id))), id).toBeNull();
      expect(fault(put(`/network-interfaces/${id}`, nic(id, i))), id).toBeNull();
    });
    const cfg = sim.handle('GET', '/vm/config', '').body as { drives: { drive_id: string }[] };
    expect(cfg.drives.map((d) => d.drive_id)).toEqual(ok);
  });

  it('refuses any other character, an empty id, and checks the id before the body', () => {
    for (const id of ['vol-0a1b', 'a.b', 'a b', 'a%2Db', 'a:b', 'ä-']) {
      expect(fault(put(`/drives/${id}`, drive(id))), id).toBe(INVALID_ID_FAULT);
      expect(fault(put(`/network-interfaces/${id}`, nic(id, 9))), id).toBe(INVALID_ID_FAULT);
      expect(fault(sim.handle('PATCH', `/drives/${id}`, JSON.stringify({ drive_id: id }))), id).toBe(
        INVALID_ID_FAULT,
      );
      expect(
        fault(sim.handle('PATCH', `/network-interfaces/${id}`, JSON.stringify({ iface_id: id }))),
        id,
      ).toBe(INVALID_ID_FAULT);
    }
    expect(fault(put('/drives/vol-1', { bogus: true }))).toBe(INVALID_ID_FAULT);
    expect(fault(sim.handle('PUT', '/drives/vol-1', ''))).toBe('Empty PUT request.');
    for (const path of ['/drives', '/drives/', '/network-interfaces'])
      expect(fault(put(path, {})), path).toBe(EMPTY_ID_FAULT);
    expect(fault(put('/drives/a', drive('b')))).toBe(
      'The id from the path does not match the id from the body!',
    );
    expect(fault(put('/network-interfaces/a', nic('b', 8)))).toBe(
      version === '1.1.0'
        ? 'The id from the path does not match the id from the body!'
        : 'The id from the path [a] does not match the id from the body [b]!',
    );
  });

  it.runIf(version === '1.16.1')('applies the rule to pmem ids', () => {
    const pmem = (id: string) => ({ id, path_on_host: 'disk' });
    expect(fault(put('/pmem/pm-1', pmem('pm-1')))).toBe(INVALID_ID_FAULT);
    expect(fault(put('/pmem/pm_1', pmem('pm_1')))).toBeNull();
    expect(fault(put('/pmem/pm_1', pmem('pm_2')))).toBe(
      'The id from the path does not match the id from the body!',
    );
  });
});
