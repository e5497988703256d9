/**
 * P5: a container's request to its first log line, through the whole stack (an in-process
 * manager on SQLite and a real `nqvm agent` process booting QEMU under TCG), split into nqvm's
 * share and the guest's: the same QEMU command line is run by hand in the same run (from
 * /proc/PID/cmdline of a container VM nqvm started, on fresh copies of its disks) and timed to
 * the same line on its console. A cold start (pull + convert + boot) is timed separately.
 *
 *   npm run build && npx tsx bench/container-start.ts
 *   BENCH_N=9 npx tsx bench/container-start.ts
 *
 * The image is a busybox one from a local registry whose process prints READY at once. Figures
 * only: nothing passes or fails.
 */
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { buildImageFromEntries, busyboxLayer, pushImage, qemuPidsOf, startOciRegistry } from '@nqvm/testkit';
import { startAgent, startStack, stopAgent } from '../packages/cli/test/stack';

const N = Number(process.env.BENCH_N ?? 5);
const GOAL_MS = 1_000;
const MARK = 'READY-FROM-CONTAINER';

const now = () => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]!;
const fmt = (ms: number) => `${ms.toFixed(0)} ms`;

function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  return [line(head), w.map((x) => '-'.repeat(x)).join('  '), ...rows.map(line)].join('\n');
}

/** When a process started, in ms since the epoch (its /proc start time: 10 ms ticks since boot). */
function processStartedAt(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const ticks = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
  const btime = Number(/^btime (\d+)/m.exec(fs.readFileSync('/proc/stat', 'utf8'))![1]);
  return btime * 1000 + ticks * 10;
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
   * process started (/proc start time), the marker on the VM's serial console (the init echoes
   * the process's output there too).
   */
  const start = async (name: string) => {
    const t0 = now();
    const r = await api.post('/api/v1/containers', { name, image: reference, mem_mib: 128 });
    if (r.status !== 202) throw new Error(`create: ${r.status} ${r.text}`);
    const id = r.body.container.id as string;
    created.push(id);
    const deadline = Date.now() + 300_000;
    let spawned = Number.NaN;
    let onConsole = Number.NaN;
    for (;;) {
      const [pid] = qemuPidsOf(id);
      if (pid && Number.isNaN(spawned)) spawned = processStartedAt(pid) - t0;
      if (Number.isNaN(onConsole) && (await text(`/api/v1/vms/${id}/console?tail=16384`)).includes(MARK))
        onConsole = now() - t0;
      if ((await text(`/api/v1/containers/${id}/logs?timestamps=false`)).includes(MARK))
        return { id, ms: now() - t0, spawned, onConsole: Number.isNaN(onConsole) ? now() - t0 : onConsole };
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
    for (const f of ['root.qcow2', 'container.img'])
      execFileSync('cp', ['--reflink=auto', '--sparse=always', path.join(vmDir, f), path.join(dir, f)]);
    return { argv, args: argv.slice(1).map((a) => a.split(vmDir).join(dir)), dir };
  };

  /** That argv run by hand (alone, as nqvm's ran), to the marker on its console. */
  const byHand = async ({ argv, args, dir }: ReturnType<typeof capture>): Promise<number> => {
    const t0 = now();
    const q = spawn(argv[0]!, args, { stdio: 'ignore' });
    try {
      const sock = path.join(dir, 'console.sock');
      let conn: net.Socket | null = null;
      while (!conn) {
        conn = await new Promise<net.Socket | null>((resolve) => {
          const s = net.connect(sock);
          s.once('connect', () => resolve(s));
          s.once('error', () => resolve(null));
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
      conn.destroy();
      return now() - t0;
    } finally {
      q.kill('SIGKILL');
    }
  };

  try {
    const cold = await start('cold');
    await remove(cold.id);
    const warm: number[] = [];
    const hand: number[] = [];
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
      hand.push(await byHand(captured));
    }
    const row = (label: string, v: number[]) => [
      label,
      fmt(median(v)),
      fmt(Math.min(...v)),
      fmt(Math.max(...v)),
    ];
    console.log(`\nP5: request -> first log line (QEMU TCG, 128 MiB, busybox image, ${N} warm runs)\n`);
    console.log(
      table(
        ['path', 'median', 'min', 'max'],
        [
          ['cold: pull + convert + boot (first container of the image)', fmt(cold.ms), '', ''],
          row('warm: API request -> first log line in the API', warm),
          row('  request -> its QEMU process started (nqvm)', toSpawn),
          row('  QEMU started -> the line on the serial console (guest)', boot),
          row('  the console line -> the log line in the API (nqvm)', delivery),
          row('the same QEMU argv by hand -> the line on its console', hand),
        ],
      ),
    );
    const share = median(toSpawn) + median(delivery);
    console.log(
      `\nnqvm's share (request -> QEMU, console -> API): ${fmt(share)} (goal <= ${fmt(GOAL_MS)}): ${share <= GOAL_MS ? 'met' : 'NOT met'}`,
    );
    console.log(`the guest's boot: ${fmt(median(boot))} under nqvm, ${fmt(median(hand))} by hand`);
  } finally {
    for (const id of created) for (const pid of qemuPidsOf(id)) process.kill(pid, 'SIGKILL');
    await stopAgent(agent, 'SIGKILL');
    await registry.stop();
    await t.close();
    fs.rmSync(work, { recursive: true, force: true });
    fs.rmSync(agent.stateDir, { recursive: true, force: true });
  }
}

await main();
