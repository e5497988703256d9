import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  FIRECRACKER_SIM_VERSIONS,
  fcRequest,
  type JournalRequest,
  journalRequests,
  readJournal,
  independentSpecValidator as specValidator,
  writeJailerBinary,
} from '@nqvm/testkit/firecracker-sim/index';
import { beforeAll, describe, expect, it } from 'vitest';
import { cloudInitData, mmdsDocument } from '../../guest-config';
import { BootStepError, type VmSpec } from '../types';
import { FirecrackerFeatureUnavailableError } from './capabilities';
import { openFirecrackerConsole } from './console';
import { FirecrackerDriver, type FirecrackerDriverOptions, type FirecrackerVmHandle } from './driver';
import { readFirecrackerMetrics } from './metrics';
import { requestsOf, type SimFixture, until, useSimFixtures } from './sim-fixture';

const { fixture, keep } = useSimFixtures('fc-driver-');

const indexOf = (reqs: JournalRequest[], method: string, path: string, action?: string) =>
  reqs.findIndex(
    (r) =>
      r.method === method &&
      r.path === path &&
      (action === undefined || (r.body as { action_type?: string } | null)?.action_type === action),
  );

describe.each(FIRECRACKER_SIM_VERSIONS)('FirecrackerDriver against simulator v%s', (version) => {
  const validateBody = specValidator(version);
  let fx: SimFixture;
  let driver: FirecrackerDriver;
  let spec: VmSpec;
  let vm: FirecrackerVmHandle;
  let snapDir: string;

  const expectValidAndInPhase = (reqs: JournalRequest[]) => {
    for (const r of reqs) {
      expect(validateBody(r), `${r.method} ${r.path} ${JSON.stringify(r.body)}`).toBeNull();
      // The simulator answers 400 to anything out of phase: nothing may have failed.
      expect(r.status, `${r.method} ${r.path}: ${r.fault}`).toBeLessThan(300);
    }
  };

  beforeAll(async () => {
    fx = await fixture(version, 'direct');
    driver = new FirecrackerDriver({ firecrackerBin: fx.bin, socketTimeoutMs: 20_000 });
    spec = await fx.spec('life');
    snapDir = join(fx.dir, 'snap-full');
  });

  it('probes the version and its features', async () => {
    const info = await driver.probe();
    expect(info).toMatchObject({ kind: 'firecracker', available: true, version, binary: fx.bin });
    expect(info.features).toContain('snapshot');
    expect(info.features.includes('entropy')).toBe(version !== '1.1.0');
    expect(info.features.includes('diff-snapshot')).toBe(version !== '1.1.0');
  });

  it('boots through the named steps with valid, in-phase requests', async () => {
    vm = await driver.boot(spec);
    keep(vm);
    expect(vm.record).toMatchObject({
      kind: 'firecracker',
      vmId: spec.id,
      consoleSocket: join(spec.vmDir, 'console.in'),
    });
    expect(vm.stats.steps.map((s) => s.name)).toEqual([
      'prepare',
      'spawn',
      'wait-socket',
      'logger',
      'metrics',
      'boot-source',
      'machine-config',
      'drives',
      'network-interfaces',
      'vsock',
      'entropy',
      'mmds',
      'instance-start',
    ]);
    const reqs = await requestsOf(fx.journal, vm.record.pid);
    expectValidAndInPhase(reqs);
    const start = indexOf(reqs, 'PUT', '/actions', 'InstanceStart');
    expect(start).toBeGreaterThan(0);
    expect(indexOf(reqs, 'PUT', '/mmds/config')).toBeLessThan(start);
    expect(indexOf(reqs, 'PUT', '/mmds')).toBeLessThan(start);
    expect(reqs[indexOf(reqs, 'PUT', '/mmds/config')]!.body).toEqual({
      network_interfaces: ['eth0'],
      version: 'V2',
    });
    expect(indexOf(reqs, 'PUT', '/entropy') >= 0).toBe(version !== '1.1.0');
    expect(reqs[0]).toMatchObject({ method: 'GET', path: '/' });
    expect(vm.stats.requests).toBe(start + 1);
    await until(async () =>
      (await readFile(join(spec.vmDir, 'console.log'), 'utf8')).includes('guest booted'),
    );
    const cfg = JSON.parse(await readFile(join(spec.vmDir, 'vm-config.json'), 'utf8'));
    expect(cfg['machine-config']).toMatchObject({ vcpu_count: 2, mem_size_mib: 16 });
  });

  it('serves the console through the FIFO and the log file', async () => {
    const con = openFirecrackerConsole(vm.record);
    const seen: Buffer[] = [];
    const off = con.onData((b) => seen.push(b));
    await new Promise((r) => setTimeout(r, 50));
    await con.write('hello from the test\n');
    await until(() => Buffer.concat(seen).toString().includes('hello from the test'));
    expect((await con.tail(4096)).toString()).toContain('hello from the test');
    off();
    await con.close();
  });

  it('pauses, resumes and flushes metrics', async () => {
    await driver.pause(vm);
    expect((await fcRequest(vm.record.controlSocket, 'GET', '/')).body).toMatchObject({ state: 'Paused' });
    await driver.resume(vm);
    expect((await fcRequest(vm.record.controlSocket, 'GET', '/')).body).toMatchObject({ state: 'Running' });
    await driver.flushMetrics(vm);
    expect(await readFirecrackerMetrics(vm.record)).toHaveProperty('utc_timestamp_ms');
  });

  it('snapshots (pausing around it) and refuses Diff where the version cannot', async () => {
    const snap = await driver.snapshot(vm, snapDir, 'Full');
    expect(snap).toEqual({
      statePath: join(snapDir, 'vmstate'),
      memPath: join(snapDir, 'memory'),
      type: 'Full',
    });
    expect((await stat(snap.memPath!)).size).toBe(16 * 1024 * 1024);
    expect(await readdir(snapDir)).toEqual(expect.arrayContaining(['snapshot.json', 'disk-root.img']));
    const before = (await requestsOf(fx.journal, vm.record.pid)).length;
    if (version === '1.1.0') {
      await expect(driver.snapshot(vm, join(fx.dir, 'snap-diff'), 'Diff')).rejects.toBeInstanceOf(
        FirecrackerFeatureUnavailableError,
      );
      expect((await requestsOf(fx.journal, vm.record.pid)).length).toBe(before);
    } else {
      expect((await driver.snapshot(vm, join(fx.dir, 'snap-diff'), 'Diff')).type).toBe('Diff');
    }
    const reqs = await requestsOf(fx.journal, vm.record.pid);
    expectValidAndInPhase(reqs);
    for (const i of reqs.keys()) {
      if (reqs[i]!.path !== '/snapshot/create') continue;
      expect(reqs[i]!.phase).toBe('Paused');
      expect(reqs[i]!.body).toMatchObject({
        snapshot_path: expect.any(String),
        mem_file_path: expect.any(String),
      });
    }
    expect((await fcRequest(vm.record.controlSocket, 'GET', '/')).body).toMatchObject({ state: 'Running' });
  });

  it('adopts the VM from its run record in a new driver, then stops it gracefully', async () => {
    const other = new FirecrackerDriver({ firecrackerBin: fx.bin });
    expect(await other.adopt({ ...vm.record, pidStartTime: vm.record.pidStartTime + 1 })).toBeNull();
    const adopted = await other.adopt(vm.record);
    expect(adopted).not.toBeNull();
    await other.pause(adopted!);
    await other.resume(adopted!);
    const t0 = Date.now();
    expect(await other.shutdown(adopted!, { graceful: true, timeoutMs: 5000 })).toEqual({ graceful: true });
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(await adopted!.exited).toMatchObject({ reason: 'shutdown' });
    const reqs = await requestsOf(fx.journal, vm.record.pid);
    expect(reqs.at(-1)).toMatchObject({ path: '/actions', body: { action_type: 'SendCtrlAltDel' } });
    // Not our child any more: the original driver learns of the exit through its pid watch.
    await vm.exited;
    const left = await readdir(spec.vmDir);
    expect(left).not.toContain('console.in');
    expect(left).not.toContain('firecracker.sock');
    expect(left).toContain('console.log');
  });

  it('restores into a fresh process: logger and metrics only, load, MMDS again, never InstanceStart', async () => {
    const restored = await driver.restore(spec, {
      statePath: join(snapDir, 'vmstate'),
      memPath: join(snapDir, 'memory'),
      type: 'Full',
    });
    keep(restored);
    expect(restored.stats.steps.map((s) => s.name)).toEqual([
      'prepare',
      'spawn',
      'wait-socket',
      'logger',
      'metrics',
      'snapshot-load',
      'mmds',
    ]);
    const reqs = await requestsOf(fx.journal, restored.record.pid);
    expectValidAndInPhase(reqs);
    const load = indexOf(reqs, 'PUT', '/snapshot/load');
    expect(reqs.slice(0, load).map((r) => `${r.method} ${r.path}`)).toEqual([
      'GET /',
      'PUT /logger',
      'PUT /metrics',
    ]);
    const body = reqs[load]!.body as Record<string, unknown>;
    expect(body).toMatchObject({ mem_backend: { backend_type: 'File' }, resume_vm: true });
    expect(body).not.toHaveProperty('mem_file_path');
    expect('network_overrides' in body).toBe(version !== '1.1.0');
    expect(indexOf(reqs, 'PUT', '/actions', 'InstanceStart')).toBe(-1);
    expect(indexOf(reqs, 'PUT', '/mmds')).toBeGreaterThan(load);
    expect((await fcRequest(restored.record.controlSocket, 'GET', '/mmds')).body).toEqual(spec.mmds);
    expect((await fcRequest(restored.record.controlSocket, 'GET', '/')).body).toMatchObject({
      state: 'Running',
    });
    expect(await driver.shutdown(restored, { graceful: false, timeoutMs: 0 })).toEqual({ graceful: false });
    expect(await restored.exited).toMatchObject({ reason: 'killed' });
  });

  it('puts the guest-config MMDS document before InstanceStart, and skips MMDS without a NIC', async () => {
    const cfg = {
      mode: 'auto' as const,
      instance_id: 'i-mmds',
      hostname: 'mmds-test',
      username: 'alice',
      password_hash: null,
      ssh_authorized_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMmds test'],
      user_data: '#cloud-config\nruncmd: [[touch, /x]]\n',
      network_config: null,
    };
    const doc = mmdsDocument(cfg, cloudInitData(cfg));
    const withNic = await driver.boot(await fx.spec('mmdsnic', { mmds: doc }));
    keep(withNic);
    const reqs = await requestsOf(fx.journal, withNic.record.pid);
    expectValidAndInPhase(reqs);
    const start = indexOf(reqs, 'PUT', '/actions', 'InstanceStart');
    expect(indexOf(reqs, 'PUT', '/mmds/config')).toBeGreaterThan(-1);
    expect(indexOf(reqs, 'PUT', '/mmds/config')).toBeLessThan(indexOf(reqs, 'PUT', '/mmds'));
    expect(indexOf(reqs, 'PUT', '/mmds')).toBeLessThan(start);
    expect(reqs[indexOf(reqs, 'PUT', '/mmds')]!.body).toEqual(doc);
    expect((await fcRequest(withNic.record.controlSocket, 'GET', '/mmds')).body).toEqual(doc);
    await driver.shutdown(withNic, { graceful: false, timeoutMs: 0 });

    const logged: string[] = [];
    const log = (_: Record<string, unknown>, msg?: string) => void logged.push(msg ?? '');
    const quiet = new FirecrackerDriver({
      firecrackerBin: fx.bin,
      logger: { debug: log, info: log, warn: log, error: log },
    });
    const noNic = await quiet.boot(await fx.spec('mmdsnone', { mmds: doc, nics: [] }));
    keep(noNic);
    expect(noNic.stats.steps.map((s) => s.name)).not.toContain('mmds');
    const plain = await requestsOf(fx.journal, noNic.record.pid);
    expectValidAndInPhase(plain);
    expect(plain.filter((r) => r.path.startsWith('/mmds'))).toEqual([]);
    expect(logged.some((m) => /MMDS not configured: .*no network interface/.test(m))).toBe(true);
    await quiet.shutdown(noNic, { graceful: false, timeoutMs: 0 });
  });

  it('notices a crash (SIGKILL from outside) within 2 s', async () => {
    const s = await fx.spec('crash');
    const h = await driver.boot(s);
    keep(h);
    const t0 = Date.now();
    process.kill(h.record.pid, 'SIGKILL');
    const exit = await h.exited;
    expect(exit).toMatchObject({ reason: 'crashed', signal: 'SIGKILL' });
    expect(Date.now() - t0).toBeLessThan(2000);
  });

  it('gives a volume disk (vol-<hex>) to Firecracker as vol_<hex>, and restores its copy from new and old records', async () => {
    const volume = join(fx.dir, 'disks', 'vol.raw');
    await writeFile(volume, Buffer.alloc(64 * 1024, 1));
    const s = await fx.spec('volume');
    s.disks.push({ id: 'vol-0a1b2c3d', path: volume, format: 'raw', readOnly: false, isRoot: false });
    const h = keep(await driver.boot(s));
    const reqs = await requestsOf(fx.journal, h.record.pid);
    expectValidAndInPhase(reqs);
    expect(reqs.find((r) => r.path.startsWith('/drives/vol'))).toMatchObject({
      method: 'PUT',
      path: '/drives/vol_0a1b2c3d',
      body: { drive_id: 'vol_0a1b2c3d', path_on_host: volume },
    });
    const dir = join(fx.dir, 'snap-volume');
    const snap = await driver.snapshot(h, dir, 'Full');
    const manifest = JSON.parse(await readFile(join(dir, 'snapshot.json'), 'utf8'));
    expect(manifest.disks).toContainEqual({ id: 'vol_0a1b2c3d', file: 'disk-vol_0a1b2c3d.img' });
    await driver.shutdown(h, { graceful: false, timeoutMs: 0 });

    // The guest wrote after the snapshot: a restore brings the volume back to the snapshot's moment.
    await writeFile(volume, Buffer.alloc(64 * 1024, 2));
    const restored = keep(await driver.restore(s, snap));
    expect((await readFile(volume))[0]).toBe(1);
    await driver.shutdown(restored, { graceful: false, timeoutMs: 0 });

    // A record written before the mapping (the simulator let `vol-0a1b2c3d` through) restores too.
    const state = JSON.parse(await readFile(snap.statePath, 'utf8'));
    for (const d of state.drives) d.drive_id = d.drive_id.replace('_', '-');
    await writeFile(snap.statePath, JSON.stringify(state));
    manifest.disks = [
      { id: 'root', file: 'disk-root.img' },
      { id: 'vol-0a1b2c3d', file: 'disk-vol-0a1b2c3d.img' },
    ];
    for (const d of manifest.vmConfig.drives) d.drive_id = d.drive_id.replace('_', '-');
    await writeFile(join(dir, 'snapshot.json'), JSON.stringify(manifest));
    await writeFile(join(dir, 'disk-vol-0a1b2c3d.img'), await readFile(join(dir, 'disk-vol_0a1b2c3d.img')));
    await writeFile(volume, Buffer.alloc(64 * 1024, 3));
    const old = keep(await driver.restore(s, snap));
    expect((await readFile(volume))[0]).toBe(1);
    expectValidAndInPhase(await requestsOf(fx.journal, old.record.pid));
    await driver.shutdown(old, { graceful: false, timeoutMs: 0 });
  });

  it('refuses ids that would reach Firecracker as one', async () => {
    const s = await fx.spec('twins');
    s.disks.push({ id: 'vol-1', path: s.disks[0]!.path, format: 'raw', readOnly: true, isRoot: false });
    s.disks.push({ id: 'vol.1', path: s.disks[0]!.path, format: 'raw', readOnly: true, isRoot: false });
    await expect(driver.boot(s)).rejects.toThrow('disks vol-1 and vol.1 would both be Firecracker id vol_1');
  });

  it('when Firecracker dies at InstanceStart, says which request broke, how it ended and its last output, and keeps its log', async () => {
    const panicking = await fixture(version, 'panic', {
      panicOn: {
        request: 'ACTION InstanceStart',
        message: 'Cannot create the KVM object: Permission denied (os error 13)',
      },
    });
    const d = new FirecrackerDriver({ firecrackerBin: panicking.bin, socketTimeoutMs: 20_000 });
    const s = await panicking.spec('dies');
    const err = await d.boot(s).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BootStepError);
    expect((err as BootStepError).step).toBe('instance-start');
    const message = (err as Error).message;
    expect(message).toMatch(
      /^boot step "instance-start" failed: Firecracker API PUT \/actions: socket hang up/,
    );
    expect(message).toContain('Firecracker was killed by SIGABRT');
    expect(message).toMatch(
      /firecracker\.log: .*Firecracker panicked at .* \| Cannot create the KVM object: Permission denied \(os error 13\)/,
    );
    expect(message.length).toBeLessThan(2000);
    expect(await readdir(s.vmDir)).toEqual(expect.arrayContaining(['firecracker.log', 'firecracker.stderr']));
    expect(await readFile(join(s.vmDir, 'firecracker.log'), 'utf8')).toContain(
      'Cannot create the KVM object',
    );
    expect(await readdir(s.vmDir)).not.toContain('firecracker.sock');
  });

  it('names the failed step and leaves nothing behind', async () => {
    const noKernel = await fx.spec('nokernel', { kernelPath: join(fx.dir, 'missing-vmlinux') });
    const err1 = await driver.boot(noKernel).catch((e: unknown) => e);
    expect(err1).toBeInstanceOf(BootStepError);
    expect((err1 as BootStepError).step).toBe('prepare');
    expect(await readdir(noKernel.vmDir).catch(() => [])).toEqual([]);

    const noDisk = await fx.spec('nodisk');
    noDisk.disks[0]!.path = join(fx.dir, 'missing.ext4');
    const before = new Set(journalRequests(await readJournal(fx.journal)).map((r) => r.pid));
    const err2 = await driver.boot(noDisk).catch((e: unknown) => e);
    expect(err2).toBeInstanceOf(BootStepError);
    expect((err2 as BootStepError).step).toBe('drives');
    expect((err2 as Error).message).toMatch(/No such file/);
    const pid = journalRequests(await readJournal(fx.journal))
      .map((r) => r.pid)
      .find((p) => !before.has(p))!;
    await until(async () => {
      try {
        process.kill(pid, 0);
        return false;
      } catch {
        return true;
      }
    });
    expect(await readdir(noDisk.vmDir)).toEqual([]);
  });
});

describe.each(FIRECRACKER_SIM_VERSIONS)('FirecrackerDriver with the jailer simulator v%s', (version) => {
  const validateBody = specValidator(version);
  /** A driver running the fixture's Firecracker under the jailer simulator, jail ids from `firstId`. */
  const jailedDriver = async (fx: SimFixture, firstId: number, over: Partial<FirecrackerDriverOptions>) => {
    const jailerBin = await writeJailerBinary(join(fx.dir, 'bin'), version, { journal: fx.journal });
    const base = join(fx.dir, 'jail');
    const driver = new FirecrackerDriver({
      firecrackerBin: fx.bin,
      jailerBin,
      chrootBaseDir: base,
      jailIds: { first: firstId, count: 100 },
      socketTimeoutMs: 20_000,
      ...over,
    });
    return { base, driver };
  };

  it('stages into the chroot, rewrites paths, sets cgroups, and removes the jail after stop', async () => {
    const fx = await fixture(version, 'jailed');
    const { base, driver } = await jailedDriver(fx, 40_000, {
      parentCgroup: 'nqvm',
      cgroupRoot: join(fx.dir, 'cgroup'),
    });
    expect(await driver.probe()).toMatchObject({ available: true, version });
    expect((await driver.probe()).features).toContain('jailer');
    const spec = await fx.spec('jail', { memMib: 32, vcpu: 2 });
    const vm = await driver.boot(spec);
    keep(vm);
    const instance = join(base, `firecracker-v${version}`, spec.id);
    const chroot = join(instance, 'root');
    expect(vm.record.controlSocket).toBe(join(chroot, 'api.sock'));
    // Hard links: the VM writes the spec's own disk file.
    expect((await stat(join(chroot, 'disks', 'root'))).ino).toBe((await stat(spec.disks[0]!.path)).ino);
    expect((await stat(join(chroot, 'boot', 'vmlinux'))).ino).toBe((await stat(fx.kernel)).ino);
    const jailer = JSON.parse(await readFile(join(instance, 'jailer.json'), 'utf8'));
    expect(jailer).toMatchObject({
      id: spec.id,
      cgroupVersion: 2,
      parentCgroup: 'nqvm',
      daemonize: false,
      cgroups: { 'cpu.max': '200000 100000', 'memory.max': String((32 + 64) * 1024 * 1024) },
    });
    expect(jailer.uid).toBeGreaterThanOrEqual(40_000);
    expect(jailer.uid).toBe(jailer.gid);
    const reqs = await requestsOf(fx.journal, vm.record.pid);
    for (const r of reqs) expect(validateBody(r)).toBeNull();
    const body = (path: string) => reqs.find((r) => r.path === path)!.body as Record<string, unknown>;
    expect(body('/boot-source').kernel_image_path).toBe('/boot/vmlinux');
    expect(body('/drives/root').path_on_host).toBe('/disks/root');
    expect(body('/logger').log_path).toBe('/firecracker.log');
    expect(body('/metrics').metrics_path).toBe('/metrics.json');
    expect(body('/vsock').uds_path).toBe('/vsock.sock');

    const con = openFirecrackerConsole(vm.record);
    await con.write('jailed echo\n');
    await until(async () => (await con.tail()).toString().includes('jailed echo'));
    await con.close();

    const snapDir = join(fx.dir, 'jail-snap');
    const snap = await driver.snapshot(vm, snapDir, 'Full');
    expect(snap.statePath).toBe(join(snapDir, 'vmstate'));
    expect(
      (await requestsOf(fx.journal, vm.record.pid)).find((r) => r.path === '/snapshot/create')!.body,
    ).toMatchObject({
      snapshot_path: '/snapshot/vmstate',
      mem_file_path: '/snapshot/memory',
    });
    expect(await driver.shutdown(vm, { graceful: true, timeoutMs: 5000 })).toEqual({ graceful: true });
    await expect(stat(instance)).rejects.toThrow();

    const restored = await driver.restore(spec, snap);
    keep(restored);
    const rreqs = await requestsOf(fx.journal, restored.record.pid);
    for (const r of rreqs) expect(validateBody(r)).toBeNull();
    expect(rreqs.find((r) => r.path === '/snapshot/load')!.body).toMatchObject({
      snapshot_path: '/snapshot/vmstate',
      mem_backend: { backend_type: 'File', backend_path: '/snapshot/memory' },
    });
    await driver.shutdown(restored, { graceful: false, timeoutMs: 0 });
    await expect(stat(instance)).rejects.toThrow();
    expect(await readdir(join(base, `firecracker-v${version}`))).toEqual([]);

    const broken = await fx.spec('broken');
    broken.disks[0]!.path = join(fx.dir, 'no-such-disk');
    const err = await driver.boot(broken).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BootStepError);
    expect((err as BootStepError).step).toBe('prepare');
    expect(await readdir(join(base, `firecracker-v${version}`))).toEqual([]);
    expect(await readdir(broken.vmDir)).toEqual([]);
  });

  it('keeps the log of a jailed Firecracker that died at boot beside the VM, and removes the jail', async () => {
    const fx = await fixture(version, 'jailed-panic', {
      panicOn: { request: 'PUT /drives/{drive_id}', message: 'cannot open the block device' },
    });
    const { base, driver } = await jailedDriver(fx, 43_000, { cgroupRoot: join(fx.dir, 'cgroup') });
    const spec = await fx.spec('jail-dies');
    const err = await driver.boot(spec).catch((e: unknown) => e);
    expect((err as BootStepError).step).toBe('drives');
    expect((err as Error).message).toMatch(
      /PUT \/drives\/root: socket hang up; Firecracker was killed by SIGABRT/,
    );
    expect((err as Error).message).toContain('cannot open the block device');
    expect(await readFile(join(spec.vmDir, 'firecracker.log'), 'utf8')).toContain(
      'cannot open the block device',
    );
    expect(await readdir(join(base, `firecracker-v${version}`))).toEqual([]);
  });

  it('on a cgroup v1 host, gives the jailer version 1 and the v1 limit files, and removes each group', async () => {
    const fx = await fixture(version, 'jailed-v1');
    const mounts = {
      cpu: join(fx.dir, 'cg', 'cpu'),
      memory: join(fx.dir, 'cg', 'memory'),
      pids: join(fx.dir, 'cg', 'pids'),
    };
    const { base, driver } = await jailedDriver(fx, 41_000, {
      parentCgroup: 'nqvm',
      cgroupLayout: { version: 1, mounts },
    });
    const spec = await fx.spec('jail-v1', { memMib: 32, vcpu: 2 });
    const vm = await driver.boot(spec);
    keep(vm);
    const instance = join(base, `firecracker-v${version}`, spec.id);
    expect(JSON.parse(await readFile(join(instance, 'jailer.json'), 'utf8'))).toMatchObject({
      cgroupVersion: 1,
      cgroups: {
        'cpu.cfs_period_us': '100000',
        'cpu.cfs_quota_us': '200000',
        'memory.limit_in_bytes': String((32 + 64) * 1024 * 1024),
      },
    });
    // What the jailer made under each controller goes with the VM.
    for (const m of [mounts.cpu, mounts.memory]) await mkdir(join(m, 'nqvm', spec.id), { recursive: true });
    await driver.shutdown(vm, { graceful: false, timeoutMs: 0 });
    for (const m of [mounts.cpu, mounts.memory])
      await expect(stat(join(m, 'nqvm', spec.id))).rejects.toThrow();
  });
});

describe('FirecrackerDriver version checks', () => {
  it('refuses a jailer and a firecracker of different releases', async () => {
    const fx = await fixture('1.16.1', 'mismatch');
    const jailerBin = await writeJailerBinary(join(fx.dir, 'bin'), '1.13.1');
    const driver = new FirecrackerDriver({
      firecrackerBin: fx.bin,
      jailerBin,
      chrootBaseDir: join(fx.dir, 'jail'),
    });
    const info = await driver.probe();
    expect(info).toMatchObject({ available: false, version: '1.16.1' });
    expect(info.reason).toMatch(/jailer v1.13.1 and firecracker v1.16.1 differ/);
    await expect(driver.boot(await fx.spec('x'))).rejects.toThrow(/unavailable/);
  });

  it('refuses to restore a snapshot of another version', async () => {
    const fx = await fixture('1.13.1', 'foreign');
    const driver = new FirecrackerDriver({ firecrackerBin: fx.bin });
    const dir = join(fx.dir, 'snap');
    await mkdir(dir, { recursive: true });
    await writeFile(
      join(dir, 'snapshot.json'),
      JSON.stringify({ firecrackerVersion: '1.1.0', disks: [], vmConfig: {} }),
    );
    await writeFile(join(dir, 'vmstate'), '{}');
    await writeFile(join(dir, 'memory'), '');
    const spec = await fx.spec('foreign');
    await expect(
      driver.restore(spec, { statePath: join(dir, 'vmstate'), memPath: join(dir, 'memory'), type: 'Full' }),
    ).rejects.toThrow(/restores only its own snapshot format/);
  });
});
