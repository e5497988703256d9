/**
 * P5: a container's request to its first log line, through the whole stack (an in-process
 * manager on SQLite and a real `nqvm agent` process booting QEMU under TCG), split into nqvm's
 * share and the guest's: the same QEMU command line is run by hand in the same run, alternated
 * with nqvm's starts (from /proc/PID/cmdline of a container VM nqvm started, on fresh copies of
 * its disks) and timed to the same line on its console. A cold start (pull + convert + boot) is
 * timed separately.
 *
 *   npm run build && npx tsx bench/container-start.ts
 *   BENCH_N=9 npx tsx bench/container-start.ts
 *
 * One clock: performance.now() of this process. QEMU's start is its own first output, its pid
 * file (QEMU writes it once initialised), seen through inotify on the VM's folder, for nqvm's
 * QEMU and the one run by hand alike. The image is a busybox one from a local registry whose
 * process prints READY at once. Figures only: nothing passes or fails.
 */
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { buildImageFromEntries, busyboxLayer, pushImage, qemuPidsOf, startOciRegistry } from '@nqvm/testkit';
import { startAgent, startStack, stopAgent } from '../packages/cli/test/stack';
import { goal, median, ms, printTable, size, spread } from './bench-kit';

const N = size('BENCH_N', 5, 1);
const GOAL_MS = 1_000;
const MARK = 'READY-FROM-CONTAINER';

const now = () => performance.now();
const sleep = (t: number) => new Promise((r) => setTimeout(r, t));

/**
 * Watches `vmsDir` (inotify): every VM folder made in it is watched at once for `file`, and the
 * moment it appears is kept by folder name (NaN: it was there before its folder was watched).
 * Answers those moments and the function that stops watching.
 */
function watchFiles(vmsDir: string, file: string): { seen: Map<string, number>; stop: () => void } {
  fs.mkdirSync(vmsDir, { recursive: true });
  const seen = new Map<string, number>();
  const watchers = new Map<string, fs.FSWatcher>();
  const watchVm = (name: string) => {
    const dir = path.join(vmsDir, name);
    if (watchers.has(name) || !fs.existsSync(dir)) return;
    watchers.set(
      name,
      fs.watch(dir, (_kind, f) => {
        if (String(f) === file && !seen.has(name)) seen.set(name, now());
      }),
    );
    if (!seen.has(name) && fs.existsSync(path.join(dir, file))) seen.set(name, Number.NaN);
  };
  const top = fs.watch(vmsDir, (_kind, name) => {
    if (name) watchVm(String(name));
  });
  return {
    seen,
    stop: () => {
      top.close();
      for (const w of watchers.values()) w.close();
    },
  };
}

async function main() {
  const { t, api } = await startStack({}, { containers: true });
  const agent = await startAgent(t, 'bench-ctr');
  await agent.hostId();
  const registry = await startOciRegistry();
  const image = await buildImageFromEntries({
    layers: [{ entries: await busyboxLayer(), compression: 'gzip' }],
    config: { Cmd: ['/bin/sh', '-c', `echo ${MARK}; exec sleep 3600`] },
  });
  await pushImage({ url: registry.url, repository: 'bench/ready' }, 'v1', image);
  const reference = `${new URL(registry.url).host}/bench/ready:v1`;
  const created: string[] = [];
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-bench-ctr-'));

  const text = async (p: string) =>
    (await fetch(`${t.url}${p}`, { headers: { authorization: `Bearer ${t.adminToken}` } })).text();
  /**
   * POST -> the marker in the container's logs (ms), with the moments in between: its QEMU
   * wrote its pid file, the marker on the VM's serial console (the init echoes the process's
   * output there too).
   */
  const pidFiles = watchFiles(path.join(agent.stateDir, 'vms'), 'qemu.pid');
  const start = async (name: string) => {
    const t0 = now();
    const r = await api.post('/api/v1/containers', { name, image: reference, mem_mib: 128 });
    if (r.status !== 202) throw new Error(`create: ${r.status} ${r.text}`);
    const id = r.body.container.id as string;
    created.push(id);
    const deadline = Date.now() + 300_000;
    let onConsole = Number.NaN;
    for (;;) {
      if (Number.isNaN(onConsole) && (await text(`/api/v1/vms/${id}/console?tail=16384`)).includes(MARK))
        onConsole = now() - t0;
      if ((await text(`/api/v1/containers/${id}/logs?timestamps=false`)).includes(MARK)) {
        const done = now() - t0;
        const spawned = (pidFiles.seen.get(id) ?? Number.NaN) - t0;
        return { id, ms: done, spawned, onConsole: Number.isNaN(onConsole) ? done : onConsole };
      }
      if (Date.now() > deadline) throw new Error(`no ${MARK} from ${name}:\n${agent.output()}`);
      await sleep(2);
    }
  };
  const remove = async (id: string) => {
    await api.del(`/api/v1/containers/${id}?force=true`);
    for (let i = 0; i < 600 && (await api.get(`/api/v1/containers/${id}`)).status !== 404; i++)
      await sleep(50);
  };

  /** The container VM's QEMU argv and copies of its disks, taken while it runs. */
  const capture = (id: string) => {
    const [pid] = qemuPidsOf(id);
    if (!pid) throw new Error(`no QEMU for container ${id}`);
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
    const vmDir = path.join(agent.stateDir, 'vms', id);
    const dir = fs.mkdtempSync(path.join(work, 'hand-'));
    // Every file of the folder QEMU opens (root disk, container drive, config drive).
    for (const f of fs.readdirSync(vmDir)) {
      const file = path.join(vmDir, f);
      if (!fs.statSync(file).isFile() || !argv.some((a) => a.includes(`${file},`) || a.endsWith(file)))
        continue;
      execFileSync('cp', ['--reflink=auto', '--sparse=always', file, path.join(dir, f)]);
    }
    return { argv, args: argv.slice(1).map((a) => a.split(vmDir).join(dir)), dir };
  };

  /** That argv run by hand (alone, as nqvm's ran), to the marker on its console: from spawn and from its pid file. */
  const byHand = async ({ argv, args, dir }: ReturnType<typeof capture>) => {
    let pidFileAt = Number.NaN;
    const watcher = fs.watch(dir, (_kind, f) => {
      if (String(f) === 'qemu.pid' && Number.isNaN(pidFileAt)) pidFileAt = now();
    });
    const t0 = now();
    const q = spawn(argv[0]!, args, { stdio: 'ignore' });
    try {
      const sock = path.join(dir, 'console.sock');
      let conn: net.Socket | null = null;
      while (!conn) {
        conn = await new Promise<net.Socket | null>((resolve) => {
          const c = net.connect(sock);
          c.once('connect', () => resolve(c));
          c.once('error', () => resolve(null));
        });
        if (!conn) await sleep(2);
      }
      let out = '';
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('hand-run: no marker')), 120_000);
        conn!.on('data', (d) => {
          out += d;
          if (out.includes(MARK)) {
            clearTimeout(timer);
            resolve();
          }
        });
      });
      const done = now();
      conn.destroy();
      return { fromSpawn: done - t0, fromPidFile: done - pidFileAt };
    } finally {
      watcher.close();
      q.kill('SIGKILL');
    }
  };

  try {
    const cold = await start('cold');
    await remove(cold.id);
    console.log(`cold start (pull + convert + boot): ${ms(cold.ms)}`);
    const warm: number[] = [];
    const hand: number[] = [];
    const handBoot: number[] = [];
    const toSpawn: number[] = [];
    const boot: number[] = [];
    const delivery: number[] = [];
    for (let i = 0; i < N; i++) {
      const w = await start(`warm-${i}`);
      warm.push(w.ms);
      toSpawn.push(w.spawned);
      boot.push(w.onConsole - w.spawned);
      delivery.push(w.ms - w.onConsole);
      const captured = capture(w.id);
      await remove(w.id);
      const h = await byHand(captured);
      hand.push(h.fromSpawn);
      handBoot.push(h.fromPidFile);
      console.log(
        `warm ${i + 1}/${N}: nqvm ${ms(w.ms)} (QEMU pid file at ${ms(w.spawned)}), by hand ${ms(h.fromSpawn)}`,
      );
    }
    printTable(
      `P5: request -> first log line (QEMU TCG, 128 MiB, busybox image, ${N} warm runs, alternated with the same QEMU by hand)`,
      ['path', 'median', 'min', 'max'],
      [
        ['cold: pull + convert + boot (first container of the image)', ms(cold.ms), '', ''],
        spread('warm: API request -> first log line in the API', warm),
        spread("  request -> its QEMU's pid file (nqvm)", toSpawn),
        spread("  QEMU's pid file -> the line on the serial console (guest)", boot),
        spread('  the console line -> the log line in the API (nqvm)', delivery),
        spread('the same QEMU argv by hand: spawn -> the line on its console', hand),
        spread('  by hand: its pid file -> the line on its console (guest)', handBoot),
      ],
    );
    console.log('');
    goal(
      "nqvm's share (request -> QEMU's pid file, console -> API)",
      median(toSpawn) + median(delivery),
      GOAL_MS,
      'ms',
    );
    console.log(
      `the guest's boot (pid file -> console line): ${ms(median(boot))} under nqvm, ${ms(median(handBoot))} by hand; ` +
        `the whole warm start ${ms(median(warm))} vs ${ms(median(hand))} by hand (${(median(warm) / median(hand)).toFixed(2)}x)`,
    );
    if (toSpawn.some((v) => Number.isNaN(v)))
      console.log('(some pid files were there before their folder was watched: n/a)');
  } finally {
    pidFiles.stop();
    for (const id of created) for (const pid of qemuPidsOf(id)) process.kill(pid, 'SIGKILL');
    await stopAgent(agent, 'SIGKILL');
    await registry.stop();
    await t.close();
    fs.rmSync(work, { recursive: true, force: true });
    fs.rmSync(agent.stateDir, { recursive: true, force: true });
  }
}

await main();
