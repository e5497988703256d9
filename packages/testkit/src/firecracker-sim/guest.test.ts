/**
 * The simulated guest, through the simulator binary: what Full and Diff memory files hold, that
 * a load refuses a memory file that is not the guest's memory at the vmstate's moment, and
 * host-initiated vsock connections reaching the guest's listeners.
 */
import { execFile } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, connect as netConnect, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeSimulatorBinary } from './binary';
import { fcRequest } from './client';
import { GUEST_PAGE_SIZE } from './guest-memory';
import { writeTinyElfKernel } from './kernel-fixture';
import { type LaunchedSim, launchSimulator } from './launch';
import { FIRECRACKER_SIM_VERSIONS, type FirecrackerSimVersion } from './spec';
import { readGuestTick } from './ticking-guest';

const run = promisify(execFile);
const running: LaunchedSim[] = [];
const servers: Server[] = [];
let root: string;
let counter = 0;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'fc-sim-mem-'));
});

afterAll(async () => {
  await Promise.all(running.map((s) => s.kill()));
  for (const s of servers) s.close();
  await rm(root, { recursive: true, force: true });
});

async function until(cond: () => Promise<boolean> | boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

const ticksOn = (text: string) => [...text.matchAll(/nqvm-sim: guest tick (\d+)/g)].map((m) => Number(m[1]));

/** Written extents by FIEMAP (the test's own reference merge, independent of the driver's). */
async function extents(file: string): Promise<[number, number][]> {
  const { stdout } = await run('filefrag', ['-v', '-e', '-s', '-b1', '--', file]);
  return [...stdout.matchAll(/^\s*\d+:\s*(\d+)\.\.\s*(\d+):/gm)].map((m) => [
    Number(m[1]),
    Number(m[2]) - Number(m[1]) + 1,
  ]);
}

async function overlay(target: string, layer: string, skipZeroPages = false): Promise<void> {
  const src = await open(layer, 'r');
  const dst = await open(target, 'r+');
  try {
    for (const [offset, length] of await extents(layer)) {
      for (let at = offset; at < offset + length; at += GUEST_PAGE_SIZE) {
        const page = Buffer.alloc(GUEST_PAGE_SIZE);
        await src.read(page, 0, GUEST_PAGE_SIZE, at);
        if (skipZeroPages && page.every((b) => b === 0)) continue;
        await dst.write(page, 0, GUEST_PAGE_SIZE, at);
      }
    }
  } finally {
    await src.close();
    await dst.close();
  }
}

describe.each(FIRECRACKER_SIM_VERSIONS)('simulated guest v%s', (version: FirecrackerSimVersion) => {
  let bin: string;
  let kernel: string;
  let disk: string;
  const guestVsock = () => join(root, version, 'guest-vsock');

  beforeAll(async () => {
    const dir = join(root, version);
    bin = await writeSimulatorBinary(join(dir, 'bin'), version);
    kernel = await writeTinyElfKernel(join(dir, 'vmlinux'));
    disk = join(dir, 'rootfs.ext4');
    await writeFile(disk, Buffer.alloc(4096));
    await mkdir(guestVsock(), { recursive: true });
  });

  async function start() {
    const dir = join(root, version, `vm${++counter}`);
    await mkdir(dir, { recursive: true });
    const sim = await launchSimulator({ bin, dir, env: { NQVM_FC_SIM_GUEST_VSOCK_DIR: guestVsock() } });
    running.push(sim);
    const api = (method: string, path: string, body?: unknown) => fcRequest(sim.socket, method, path, body);
    const ok = async (method: string, path: string, body?: unknown) => {
      const r = await api(method, path, body);
      expect(r.status, `${method} ${path}: ${JSON.stringify(r.body)}`).toBeLessThan(300);
    };
    const consoleText = () => readFile(join(dir, 'console.log'), 'utf8');
    return { sim, dir, api, ok, consoleText };
  }

  async function boot(track: boolean, vsock = false) {
    const vm = await start();
    await vm.ok('PUT', '/boot-source', { kernel_image_path: kernel, boot_args: 'console=ttyS0' });
    await vm.ok('PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 16, track_dirty_pages: track });
    await vm.ok('PUT', '/drives/root', {
      drive_id: 'root',
      path_on_host: disk,
      is_root_device: true,
      is_read_only: false,
    });
    if (vsock) await vm.ok('PUT', '/vsock', { guest_cid: 3, uds_path: join(vm.dir, 'v.sock') });
    await vm.ok('PUT', '/actions', { action_type: 'InstanceStart' });
    return vm;
  }

  /** Lets the guest run until the console shows a tick past `after`, then pauses and snapshots. */
  async function snapshot(
    vm: Awaited<ReturnType<typeof boot>>,
    name: string,
    type: 'Full' | 'Diff',
    after = 0,
  ) {
    await until(async () => Math.max(0, ...ticksOn(await vm.consoleText())) > after);
    await vm.ok('PATCH', '/vm', { state: 'Paused' });
    const files = {
      snapshot_path: join(vm.dir, `${name}.state`),
      mem_file_path: join(vm.dir, `${name}.mem`),
    };
    await vm.ok('PUT', '/snapshot/create', { ...files, snapshot_type: type });
    await vm.ok('PATCH', '/vm', { state: 'Resumed' });
    const tick = readGuestTick(files.mem_file_path);
    expect(tick).not.toBeNull();
    return { ...files, tick: tick! };
  }

  async function load(state: string, mem: string) {
    const vm = await start();
    const r = await vm.api('PUT', '/snapshot/load', {
      snapshot_path: state,
      mem_backend: { backend_type: 'File', backend_path: mem },
      resume_vm: true,
    });
    return { ...vm, r };
  }

  const faultOf = async (loaded: Awaited<ReturnType<typeof load>>) => {
    expect(loaded.r.status).toBe(400);
    expect((await loaded.sim.exited).code).toBe(1);
    return (loaded.r.body as { fault_message: string }).fault_message;
  };

  it('writes Full and Diff memory files of guest size, a Diff holding only its dirty pages (all-zero ones too)', async () => {
    const vm = await boot(true);
    const full = await snapshot(vm, 'full', 'Full');
    const diff = await snapshot(vm, 'diff', 'Diff', full.tick);
    expect(diff.tick).toBeGreaterThan(full.tick);
    for (const f of [full, diff]) expect((await stat(f.mem_file_path)).size).toBe(16 * 1024 * 1024);
    const diffPages = (await extents(diff.mem_file_path)).reduce(
      (n, [, len]) => n + len / GUEST_PAGE_SIZE,
      0,
    );
    // Page 0 and two ring pages per tick at most: the boot pages are clean since the Full.
    expect(diffPages).toBeGreaterThanOrEqual(3);
    expect(diffPages).toBeLessThanOrEqual(1 + 2 * (diff.tick - full.tick));
    expect((await stat(diff.mem_file_path)).blocks).toBeLessThan((await stat(full.mem_file_path)).blocks);
    // The slot the guest zeroed last is written (allocated) although all zeros.
    const zeroed = 1 + ((diff.tick + 1) % 64);
    const page = Buffer.alloc(GUEST_PAGE_SIZE, 1);
    const fh = await open(diff.mem_file_path, 'r');
    await fh.read(page, 0, GUEST_PAGE_SIZE, zeroed * GUEST_PAGE_SIZE);
    await fh.close();
    expect(page.every((b) => b === 0)).toBe(true);
    const covered = (await extents(diff.mem_file_path)).some(
      ([off, len]) => off <= zeroed * GUEST_PAGE_SIZE && zeroed * GUEST_PAGE_SIZE < off + len,
    );
    expect(covered).toBe(true);
  });

  it('loads only the memory of the vmstate: a Diff alone, a stale base, a zero-skipping merge are refused; the right merge resumes the tick', async () => {
    const vm = await boot(true);
    const full = await snapshot(vm, 'full', 'Full');
    const d1 = await snapshot(vm, 'd1', 'Diff', full.tick);
    const d2 = await snapshot(vm, 'd2', 'Diff', d1.tick);
    await vm.sim.kill();

    expect(await faultOf(await load(d2.snapshot_path, d2.mem_file_path))).toMatch(
      /^Load snapshot error: guest memory check failed: .*(missing|lacks)/,
    );
    expect(await faultOf(await load(d2.snapshot_path, full.mem_file_path))).toMatch(
      new RegExp(`guest at tick ${full.tick}, the vmstate at tick ${d2.tick}`),
    );
    const cut = join(vm.dir, 'cut.mem');
    await copyFile(d1.mem_file_path, cut);
    await overlay(cut, d2.mem_file_path);
    expect(await faultOf(await load(d2.snapshot_path, cut))).toMatch(/guest memory check failed/);

    const sloppy = join(vm.dir, 'sloppy.mem');
    await copyFile(full.mem_file_path, sloppy);
    await overlay(sloppy, d1.mem_file_path, true);
    await overlay(sloppy, d2.mem_file_path, true);
    expect(await faultOf(await load(d2.snapshot_path, sloppy))).toMatch(
      /zeroed by the guest .* skips zero pages/,
    );

    const merged = join(vm.dir, 'merged.mem');
    await copyFile(full.mem_file_path, merged);
    await overlay(merged, d1.mem_file_path);
    await overlay(merged, d2.mem_file_path);
    const good = await load(d2.snapshot_path, merged);
    expect(good.r.status, JSON.stringify(good.r.body)).toBe(204);
    await until(async () => (await good.consoleText()).includes(`resumed from snapshot at tick ${d2.tick}`));
    await until(async () => ticksOn(await good.consoleText()).some((t) => t > d2.tick));
    expect(Math.min(...ticksOn(await good.consoleText()))).toBeGreaterThan(d2.tick);
  });

  it('keeps every page written since the process began in a Diff without dirty tracking (1.13+)', async () => {
    if (version === '1.1.0') return;
    const vm = await boot(false);
    const full = await snapshot(vm, 'full', 'Full');
    const diff = await snapshot(vm, 'diff', 'Diff', full.tick);
    await vm.sim.kill();
    // mincore semantics: the boot pages are in it too, so it loads on its own.
    const alone = await load(diff.snapshot_path, diff.mem_file_path);
    expect(alone.r.status, JSON.stringify(alone.r.body)).toBe(204);
  });

  it('forwards host-initiated vsock connections to the guest listener, closes them without one, resets them on snapshot', async () => {
    const echo = createServer((s) => s.pipe(s));
    servers.push(echo);
    await new Promise<void>((r) => echo.listen(join(guestVsock(), '52.sock'), r));
    const vm = await boot(false, true);
    const uds = join(vm.dir, 'v.sock');
    const dial = (command: string) =>
      new Promise<{ reply: string; sock: ReturnType<typeof netConnect> }>((resolve) => {
        const sock = netConnect(uds);
        let reply = '';
        sock.on('data', (d) => {
          reply += d.toString();
          if (reply.includes('\n')) resolve({ reply, sock });
        });
        sock.on('close', () => resolve({ reply, sock }));
        sock.on('error', () => {});
        sock.write(command);
      });
    const first = await dial('CONNECT 52\n');
    expect(first.reply).toBe('OK 1073741824\n');
    const echoed = new Promise<string>((resolve) => {
      let got = '';
      first.sock.on('data', (d) => {
        got += d.toString();
        if (got.includes('pong')) resolve(got);
      });
    });
    first.sock.write('ping pong');
    expect(await echoed).toBe('ping pong');
    const second = await dial('CONNECT 52\nearly bytes');
    expect(second.reply.startsWith('OK 1073741825\n')).toBe(true);
    expect(await dial('CONNECT 53\n')).toMatchObject({ reply: '' });
    expect(await dial('HELLO\n')).toMatchObject({ reply: '' });

    const closed = new Promise((r) => first.sock.once('close', r));
    await vm.ok('PATCH', '/vm', { state: 'Paused' });
    await vm.ok('PUT', '/snapshot/create', {
      snapshot_path: join(vm.dir, 's.state'),
      mem_file_path: join(vm.dir, 's.mem'),
    });
    await closed;
    second.sock.destroy();
  });
});
