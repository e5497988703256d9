/**
 * Diff snapshot chains against the simulator, whose guest writes its memory while it runs and
 * whose snapshot load refuses memory that is not the guest's at the vmstate's moment.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { link, mkdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  FIRECRACKER_SIM_VERSIONS,
  type JournalRequest,
  journalRequests,
  readGuestTick,
  readJournal,
  independentSpecValidator as specValidator,
  writeJailerBinary,
} from '@nqvm/testkit/firecracker-sim/index';
import { beforeAll, describe, expect, it } from 'vitest';
import { BootStepError, type SnapshotFiles, type VmSpec } from '../types';
import { FirecrackerDriver, type FirecrackerVmHandle } from './driver';
import { consoleTicks, requestsOf, type SimFixture, until, useSimFixtures } from './sim-fixture';
import { SnapshotChainError, type SnapshotManifest } from './snapshot-chain';

const { failure, fixture, keep } = useSimFixtures('fc-diff-');

/** The message of a restore meant to be refused. */
async function refusal(launch: Promise<FirecrackerVmHandle>, kind: new (...a: never[]) => Error = Error) {
  const err = await failure(launch);
  expect(err).toBeInstanceOf(kind);
  return (err as Error).message;
}

const manifestOf = async (s: SnapshotFiles): Promise<SnapshotManifest> =>
  JSON.parse(await readFile(join(s.statePath, '..', 'snapshot.json'), 'utf8'));
/** A snapshot's own files, without its chain. */
const own = (s: SnapshotFiles): SnapshotFiles => ({
  statePath: s.statePath,
  memPath: s.memPath!,
  type: s.type,
});
const sha = async (p: string) =>
  createHash('sha256')
    .update(await readFile(p))
    .digest('hex');
const loadOf = (reqs: JournalRequest[]) =>
  reqs.find((r) => r.path === '/snapshot/load')!.body as Record<string, unknown>;

/** Waits until the guest has ticked past `tick` (the console shows every fifth tick). */
async function ticksPast(vmDir: string, tick: number): Promise<void> {
  await until(async () => (await consoleTicks(vmDir)).some((t) => t > tick), 10_000);
}

/** The tick a restored guest resumed at, once it ticked on past it. */
async function resumedTick(vmDir: string): Promise<number> {
  let at = -1;
  await until(async () => {
    const text = await readFile(join(vmDir, 'console.log'), 'utf8');
    const from = text.lastIndexOf('nqvm-sim: guest resumed from snapshot at tick ');
    if (from < 0) return false;
    const after = text.slice(from);
    at = Number(/at tick (\d+)/.exec(after)![1]);
    return [...after.matchAll(/guest tick (\d+)/g)].some((m) => Number(m[1]) > at);
  }, 10_000);
  return at;
}

async function snapshotAfterTicks(
  driver: FirecrackerDriver,
  vm: FirecrackerVmHandle,
  vmDir: string,
  dir: string,
  type: 'Full' | 'Diff',
  after: number,
): Promise<SnapshotFiles & { tick: number }> {
  await ticksPast(vmDir, after);
  const snap = await driver.snapshot(vm, dir, type);
  return { ...snap, tick: readGuestTick(snap.memPath!)! };
}

describe.each(FIRECRACKER_SIM_VERSIONS)('Diff snapshot chains against simulator v%s', (version) => {
  const validateBody = specValidator(version);
  let fx: SimFixture;
  let driver: FirecrackerDriver;
  let spec: VmSpec;
  let full: SnapshotFiles & { tick: number };
  let d1: SnapshotFiles & { tick: number };
  let d2: SnapshotFiles & { tick: number };

  const expectValidAndInPhase = (reqs: JournalRequest[]) => {
    for (const r of reqs) {
      expect(validateBody(r), `${r.method} ${r.path} ${JSON.stringify(r.body)}`).toBeNull();
      expect(r.status, `${r.method} ${r.path}: ${r.fault}`).toBeLessThan(300);
    }
  };
  const chain = (): SnapshotFiles => ({ ...own(d2), base: { ...own(d1), base: own(full) } });

  beforeAll(async () => {
    fx = await fixture(version, 'diff');
    // 1.1.0 takes Diffs only with dirty tracking from boot; the later ones use it too (KVM's log).
    driver = new FirecrackerDriver({
      firecrackerBin: fx.bin,
      trackDirtyPages: true,
      socketTimeoutMs: 20_000,
    });
    spec = await fx.spec('chain', { memMib: 32 });
  });

  it('takes Full, Diff, Diff while the guest writes its memory, each Diff naming its base', async () => {
    const vm = keep(await driver.boot(spec));
    const boot = await requestsOf(fx.journal, vm.record.pid);
    expect(boot.find((r) => r.path === '/machine-config')!.body).toMatchObject({ track_dirty_pages: true });
    full = await snapshotAfterTicks(driver, vm, spec.vmDir, join(fx.dir, 'full'), 'Full', 0);
    d1 = await snapshotAfterTicks(driver, vm, spec.vmDir, join(fx.dir, 'd1'), 'Diff', full.tick);
    d2 = await snapshotAfterTicks(driver, vm, spec.vmDir, join(fx.dir, 'd2'), 'Diff', d1.tick);
    expect(full.tick).toBeLessThan(d1.tick);
    expect(d1.tick).toBeLessThan(d2.tick);
    const [mf, m1, m2] = await Promise.all([full, d1, d2].map(manifestOf));
    // snapshot() hands back each Diff with its chain.
    const { tick: _, ...returned } = d2;
    expect(returned).toEqual(chain());
    expect(mf).toMatchObject({ type: 'Full', baseId: null, id: expect.any(String) });
    expect(m1).toMatchObject({ type: 'Diff', baseId: mf!.id });
    expect(m2).toMatchObject({ type: 'Diff', baseId: m1!.id });
    for (const s of [full, d1, d2]) expect((await stat(s.memPath!)).size).toBe(32 * 1024 * 1024);
    expect((await stat(d2.memPath!)).blocks).toBeLessThan((await stat(full.memPath!)).blocks);
    const reqs = await requestsOf(fx.journal, vm.record.pid);
    expectValidAndInPhase(reqs);
    expect(reqs.filter((r) => r.path === '/snapshot/create').map((r) => r.body)).toMatchObject([
      { snapshot_type: 'Full' },
      { snapshot_type: 'Diff' },
      { snapshot_type: 'Diff' },
    ]);
    await driver.shutdown(vm, { graceful: false, timeoutMs: 0 });
  });

  it('restores the newest Diff of a chain of 3 into a fresh process: merged memory in the VM folder, the guest resumes at its tick', async () => {
    const files = [full, d1, d2].flatMap((s) => [s.statePath, s.memPath!]);
    const before = await Promise.all(files.map(sha));
    const restored = keep(await driver.restore(spec, chain()));
    expect(restored.stats.steps.map((s) => s.name)).toEqual([
      'prepare',
      'memory-merge',
      'spawn',
      'wait-socket',
      'logger',
      'metrics',
      'snapshot-load',
      'mmds',
    ]);
    const reqs = await requestsOf(fx.journal, restored.record.pid);
    expectValidAndInPhase(reqs);
    expect(loadOf(reqs)).toMatchObject({
      snapshot_path: d2.statePath,
      mem_backend: { backend_type: 'File', backend_path: join(spec.vmDir, 'memory.merged') },
      resume_vm: true,
      [version === '1.1.0' ? 'enable_diff_snapshots' : 'track_dirty_pages']: true,
    });
    expect(await resumedTick(spec.vmDir)).toBe(d2.tick);
    // The snapshots are never written to; the merged file is the VM's own.
    expect(await Promise.all(files.map(sha))).toEqual(before);
    expect(existsSync(join(spec.vmDir, 'memory.merged'))).toBe(true);

    // The restored run chains on: its Diff goes over the snapshot it came from.
    const d3 = await snapshotAfterTicks(driver, restored, spec.vmDir, join(fx.dir, 'd3'), 'Diff', d2.tick);
    expect(await manifestOf(d3)).toMatchObject({ baseId: (await manifestOf(d2)).id });
    await driver.shutdown(restored, { graceful: false, timeoutMs: 0 });
    // Mapped for the VM's whole life: kept past its end, until its next boot or restore.
    expect(existsSync(join(spec.vmDir, 'memory.merged'))).toBe(true);
    expect(d3.base).toEqual(chain());
    const again = keep(await driver.restore(spec, d3));
    expect(await resumedTick(spec.vmDir)).toBe(d3.tick);
    await driver.shutdown(again, { graceful: false, timeoutMs: 0 });

    const booted = keep(await driver.boot(spec));
    expect(existsSync(join(spec.vmDir, 'memory.merged'))).toBe(false);
    await driver.shutdown(booted, { graceful: false, timeoutMs: 0 });
  });

  it('restores the first Diff of a booted VM on its own: it holds every page the run wrote', async () => {
    const s = await fx.spec('first');
    const vm = keep(await driver.boot(s));
    const d = await snapshotAfterTicks(driver, vm, s.vmDir, join(fx.dir, 'first-diff'), 'Diff', 0);
    expect(d.base).toBeUndefined();
    expect(await manifestOf(d)).toMatchObject({ type: 'Diff', baseId: null });
    await driver.shutdown(vm, { graceful: false, timeoutMs: 0 });
    expect(await refusal(driver.restore(s, { ...own(d), base: own(full) }))).toMatch(/it has no base/);
    const restored = keep(await driver.restore(s, d));
    expect(restored.stats.steps.map((x) => x.name)).not.toContain('memory-merge');
    expect(await resumedTick(s.vmDir)).toBe(d.tick);
    await driver.shutdown(restored, { graceful: false, timeoutMs: 0 });
  });

  it('refuses a cut or wrong chain before any process starts, naming the missing base', async () => {
    const pids = async () => new Set(journalRequests(await readJournal(fx.journal)).map((r) => r.pid));
    const before = await pids();
    const [mf, m1] = await Promise.all([manifestOf(full), manifestOf(d1)]);
    const cut = await refusal(driver.restore(spec, { ...own(d2), base: own(d1) }), SnapshotChainError);
    expect(cut).toMatch(
      new RegExp(`only the pages written since snapshot ${mf.id}, which was not given as its base`),
    );
    expect(await refusal(driver.restore(spec, own(d2)))).toMatch(new RegExp(`since snapshot ${m1.id}`));
    expect(await refusal(driver.restore(spec, { ...own(d2), base: own(full) }))).toMatch(
      new RegExp(`was taken over snapshot ${m1.id}; the base given, .*full, is snapshot ${mf.id}`),
    );
    expect(
      await refusal(
        driver.restore(spec, { ...own(d2), base: { ...own(d1), base: own(d1) } }),
        SnapshotChainError,
      ),
    ).toMatch(/was taken over snapshot .* is snapshot/);
    expect(await pids()).toEqual(before);
  });

  it('without manifests to check, the simulated guest refuses the cut chain at load', async () => {
    // Hard links: the memory files keep exactly their written pages (a cp would not).
    const bare = async (s: SnapshotFiles, name: string): Promise<SnapshotFiles> => {
      const dir = join(fx.dir, name);
      await rm(dir, { recursive: true, force: true });
      await mkdir(dir);
      await link(s.statePath, join(dir, 'vmstate'));
      await link(s.memPath!, join(dir, 'memory'));
      return { statePath: join(dir, 'vmstate'), memPath: join(dir, 'memory'), type: s.type };
    };
    const b1 = await bare(d1, 'bare-d1');
    const b2 = await bare(d2, 'bare-d2');
    const err = await failure(driver.restore(spec, { ...b2, base: b1 }));
    expect(err).toBeInstanceOf(BootStepError);
    expect((err as BootStepError).step).toBe('snapshot-load');
    expect((err as Error).message).toMatch(/guest memory check failed: .*(missing|lacks)/);
    expect(existsSync(join(spec.vmDir, 'memory.merged'))).toBe(false);
    // The whole chain, even unchecked, restores.
    const whole = keep(
      await driver.restore(spec, { ...b2, base: { ...b1, base: await bare(full, 'bare-full') } }),
    );
    expect(await resumedTick(spec.vmDir)).toBe(d2.tick);
    await driver.shutdown(whole, { graceful: false, timeoutMs: 0 });
  });

  it('keeps the chain across an agent restart (lineage beside the VM), and refuses a Diff where it is unknown', async () => {
    const s = await fx.spec('adopted');
    const vm = keep(await driver.boot(s));
    const f = await snapshotAfterTicks(driver, vm, s.vmDir, join(fx.dir, 'adopt-full'), 'Full', 0);
    const other = new FirecrackerDriver({ firecrackerBin: fx.bin });
    const adopted = (await other.adopt(vm.record))!;
    const d = await snapshotAfterTicks(other, adopted, s.vmDir, join(fx.dir, 'adopt-diff'), 'Diff', f.tick);
    expect(await manifestOf(d)).toMatchObject({ baseId: (await manifestOf(f)).id });
    expect(d.base).toEqual(own(f));
    await rm(join(s.vmDir, 'snapshot-lineage.json'));
    const third = new FirecrackerDriver({ firecrackerBin: fx.bin });
    const blind = (await third.adopt(vm.record))!;
    await expect(third.snapshot(blind, join(fx.dir, 'blind-diff'), 'Diff')).rejects.toThrow(
      /take a Full snapshot first/,
    );
    await third.snapshot(blind, join(fx.dir, 'blind-full'), 'Full');
    await third.snapshot(blind, join(fx.dir, 'blind-diff'), 'Diff');
    await third.shutdown(blind, { graceful: false, timeoutMs: 0 });
    await Promise.all([vm.exited, adopted.exited]);
  });

  it('restores a Diff chain under the jailer: the merged memory hard-linked into the chroot', async () => {
    const jx = await fixture(version, 'diff-jailed');
    const jailerBin = await writeJailerBinary(join(jx.dir, 'bin'), version, { journal: jx.journal });
    const jailed = new FirecrackerDriver({
      firecrackerBin: jx.bin,
      jailerBin,
      chrootBaseDir: join(jx.dir, 'jail'),
      jailIds: { first: 41_000, count: 100 },
      cgroupRoot: join(jx.dir, 'cgroup'),
      trackDirtyPages: true,
      socketTimeoutMs: 20_000,
    });
    const s = await jx.spec('jdiff');
    const vm = keep(await jailed.boot(s));
    const f = await snapshotAfterTicks(jailed, vm, s.vmDir, join(jx.dir, 'jfull'), 'Full', 0);
    const d = await snapshotAfterTicks(jailed, vm, s.vmDir, join(jx.dir, 'jdiff'), 'Diff', f.tick);
    await jailed.shutdown(vm, { graceful: false, timeoutMs: 0 });
    const restored = keep(await jailed.restore(s, d));
    const reqs = await requestsOf(jx.journal, restored.record.pid);
    expectValidAndInPhase(reqs);
    expect(loadOf(reqs)).toMatchObject({
      snapshot_path: '/snapshot/vmstate',
      mem_backend: { backend_type: 'File', backend_path: '/snapshot/memory' },
    });
    const chroot = join(jx.dir, 'jail', `firecracker-v${version}`, s.id, 'root');
    expect((await stat(join(chroot, 'snapshot', 'memory'))).ino).toBe(
      (await stat(join(s.vmDir, 'memory.merged'))).ino,
    );
    expect(await resumedTick(s.vmDir)).toBe(d.tick);
    await jailed.shutdown(restored, { graceful: false, timeoutMs: 0 });
  });
});

describe.each(FIRECRACKER_SIM_VERSIONS.filter((v) => v !== '1.1.0'))(
  'Diff snapshots without dirty tracking (mincore) v%s',
  (version) => {
    it('restores a Diff over its Full', async () => {
      const fx = await fixture(version, 'mincore');
      const driver = new FirecrackerDriver({ firecrackerBin: fx.bin, socketTimeoutMs: 20_000 });
      const spec = await fx.spec('mincore');
      const vm = keep(await driver.boot(spec));
      const f = await snapshotAfterTicks(driver, vm, spec.vmDir, join(fx.dir, 'full'), 'Full', 0);
      const d = await snapshotAfterTicks(driver, vm, spec.vmDir, join(fx.dir, 'diff'), 'Diff', f.tick);
      await driver.shutdown(vm, { graceful: false, timeoutMs: 0 });
      const restored = keep(await driver.restore(spec, d));
      expect(await resumedTick(spec.vmDir)).toBe(d.tick);
      const load = loadOf(await requestsOf(fx.journal, restored.record.pid));
      expect(load).not.toHaveProperty('track_dirty_pages');
      await driver.shutdown(restored, { graceful: false, timeoutMs: 0 });
    });
  },
);
