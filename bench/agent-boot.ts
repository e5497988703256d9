/**
 * What nqvm itself costs per VM start and per running VM, through the whole stack: an in-process
 * manager (SQLite) and a real `nqvm agent` child process (built CLI) booting the QEMU test guest.
 *
 *   npm run build && npx tsx bench/agent-boot.ts
 *   BENCH_STARTS=50 BENCH_E2E=5 BENCH_N=3 npx tsx bench/agent-boot.ts
 *
 * P1  own span per start: one VM, then BENCH_STARTS x (stop force=true, start). Phases are timed
 *     from outside with inotify on the VM's folder (the agent writes desired.json on receipt,
 *     opens qemu.log right before spawning QEMU, QEMU writes qemu.pid, the agent writes run.json
 *     once QMP answered and the console is held) plus the operation's own timestamps.
 * E2E API create -> BOOT_MARKER on the console tail, against the same QEMU command line (taken
 *     from /proc/PID/cmdline of a VM nqvm started) run by hand -> BOOT_MARKER on its console.
 * P7  per running VM besides the VMM: extra processes, agent RSS growth, console log disk use.
 * Figures only: nothing passes or fails.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { registerPathImage } from '@nqvm/manager/images/images';
import { BOOT_MARKER, ensureTestGuest, qemuPidsOf as qemuPids } from '@nqvm/testkit';
import { client, startManager, type TestManager } from '../packages/manager/test/harness';

const STARTS = Number(process.env.BENCH_STARTS ?? 50);
const E2E = Number(process.env.BENCH_E2E ?? 5);
const N = Number(process.env.BENCH_N ?? 3);
const BOOT_TIMEOUT_MS = 120_000;
const NQVM = path.resolve(import.meta.dirname, '..', 'packages', 'cli', 'bin', 'nqvm.mjs');
const GOAL_P50 = 30;
const GOAL_P99 = 100;

// ---- small helpers ------------------------------------------------------------------------

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.timeOrigin + performance.now();

function pct(values: number[], p: number): number {
  const s = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (!s.length) return Number.NaN;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}
const median = (v: number[]) => pct(v, 50);
const ms = (v: number) => (Number.isFinite(v) ? `${v.toFixed(1)} ms` : 'n/a');
const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(2)} MiB`;

function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  return [line(head), w.map((x) => '-'.repeat(x)).join('  '), ...rows.map(line)].join('\n');
}

async function waitFor<T>(fn: () => Promise<T | null | undefined | false>, timeoutMs: number, what: string) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what}`);
    await sleep(50);
  }
}

function procStatus(pid: number, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : Number.NaN;
}

/** pid, ppid, session of every live process. */
function processes(): { pid: number; ppid: number; sid: number; comm: string }[] {
  const out = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${e}/stat`, 'utf8');
      const close = stat.lastIndexOf(')');
      const f = stat.slice(close + 2).split(' ');
      if (f[0] === 'Z') continue;
      out.push({
        pid: Number(e),
        ppid: Number(f[1]),
        sid: Number(f[3]),
        comm: stat.slice(stat.indexOf('(') + 1, close),
      });
    } catch {
      // Gone meanwhile.
    }
  }
  return out;
}

// ---- the stack ----------------------------------------------------------------------------

let t: TestManager | null = null;
let agent: ChildProcess | null = null;
let agentOut = '';
const tempDirs: string[] = [];
const created = new Set<string>();
const handQemus = new Set<ChildProcess>();
let api!: ReturnType<typeof client>;
let stateDir = '';

async function startStack(): Promise<void> {
  t = await startManager('sqlite', { NQVM_HEARTBEAT_INTERVAL_S: '1' });
  api = client(t.url, t.adminToken);
  const guest = await ensureTestGuest();
  const store = t.manager.services.store;
  await registerPathImage(store, { name: 'kernel', kind: 'kernel', path: guest.kernel, isDefault: true });
  await registerPathImage(store, { name: 'initrd', kind: 'initrd', path: guest.initrd, isDefault: true });
  await registerPathImage(store, { name: 'rootfs', kind: 'rootfs', path: guest.rootfs, isDefault: true });
  stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-bench-agent-'));
  tempDirs.push(stateDir);
  const jt = await api.post('/api/v1/join-tokens', { ttl_s: 600 });
  const bind = `127.0.0.1:${19900 + (process.pid % 90)}`;
  agent = spawn(
    process.execPath,
    [NQVM, 'agent', '--manager', t.url, '--bind', bind, '--state-dir', stateDir, '--name', 'bench-host'],
    {
      env: {
        ...process.env,
        NQVM_LOG_LEVEL: 'warn',
        NQVM_HEARTBEAT_INTERVAL_S: '1',
        NQVM_JOIN_TOKEN: jt.body.token,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  agent.stdout?.on('data', (d) => (agentOut += d));
  agent.stderr?.on('data', (d) => (agentOut += d));
  await waitFor(
    async () => {
      const r = await api.get('/api/v1/hosts?limit=500');
      return r.body.items.some(
        (h: { name: string; status: string }) => h.name === 'bench-host' && h.status === 'ready',
      );
    },
    30_000,
    `agent never became ready:\n${agentOut}`,
  );
}

async function settle(
  opId: string,
): Promise<{ status: string; created_at: string; updated_at: string; error: unknown }> {
  for (;;) {
    const r = await api.get(`/api/v1/operations/${opId}?wait=60`);
    if (r.status !== 200) throw new Error(`operation ${opId}: ${r.status} ${r.text}`);
    if (!['queued', 'running'].includes(r.body.status)) return r.body;
  }
}

async function consoleTail(id: string): Promise<string> {
  const r = await fetch(`${t!.url}/api/v1/vms/${id}/console?tail=262144`, {
    headers: { authorization: `Bearer ${t!.adminToken}` },
  });
  return r.ok ? r.text() : '';
}

async function createVm(name: string): Promise<{ id: string; sent: number; accepted: number; op: string }> {
  const sent = now();
  const res = await api.post('/api/v1/vms', { name, mem_mib: 128 });
  const accepted = now();
  if (res.status !== 202) throw new Error(`create ${name}: ${res.status} ${res.text}`);
  created.add(res.body.vm.id);
  return { id: res.body.vm.id, sent, accepted, op: res.body.operation.id };
}

async function deleteVm(id: string): Promise<void> {
  const r = await api.del(`/api/v1/vms/${id}?force=true`);
  if (r.status === 202) await settle(r.body.operation.id);
  await waitFor(async () => qemuPids(id).length === 0, 30_000, `QEMU of ${id} still running`);
  created.delete(id);
}

// ---- P1: own span per start ---------------------------------------------------------------

interface Span {
  accepted: number;
  received: number;
  spawn: number;
  pidfile: number;
  attached: number;
  opServer: number;
  opClient: number;
}

const failures: string[] = [];

async function p1(): Promise<Span[]> {
  const vm = await createVm('p1');
  const op = await settle(vm.op);
  if (op.status !== 'succeeded') throw new Error(`p1 create: ${JSON.stringify(op)}\n${agentOut}`);
  const vmDir = path.join(stateDir, 'vms', vm.id);
  const events: { t: number; file: string }[] = [];
  const watcher = fs.watch(vmDir, (_kind, file) => events.push({ t: now(), file: String(file) }));
  const spans: Span[] = [];
  try {
    while (spans.length < STARTS && failures.length <= 10) {
      const state = (await api.get(`/api/v1/vms/${vm.id}`)).body.state;
      if (state !== 'stopped' && state !== 'failed') {
        const stop = await api.post(`/api/v1/vms/${vm.id}/stop`, { force: true });
        const stopOp = await settle(stop.body.operation.id);
        if (stopOp.status !== 'succeeded') throw new Error(`stop: ${JSON.stringify(stopOp)}`);
      }
      await sleep(20); // let the stop's own file events arrive before the clock starts
      events.length = 0;
      const sent = now();
      const res = await api.post(`/api/v1/vms/${vm.id}/start`);
      const accepted = now();
      if (res.status !== 202) throw new Error(`start: ${res.status} ${res.text}`);
      const done = await settle(res.body.operation.id);
      const opClient = now();
      if (done.status !== 'succeeded') {
        failures.push(JSON.stringify((done.error as { message?: string } | null)?.message ?? done.status));
        continue;
      }
      await sleep(5);
      const first = (f: string) => events.find((e) => e.file === f)?.t ?? Number.NaN;
      const serverStart = Date.parse(done.created_at);
      spans.push({
        accepted: accepted - sent,
        received: first('desired.json') - sent,
        spawn: first('qemu.log') - sent,
        pidfile: first('qemu.pid') - sent,
        attached: first('run.json') - sent,
        opServer: Date.parse(done.updated_at) - serverStart,
        opClient: opClient - sent,
      });
      if (spans.length % 10 === 0) process.stderr.write(`P1: ${spans.length}/${STARTS} starts\n`);
    }
  } finally {
    watcher.close();
  }
  await deleteVm(vm.id);
  return spans;
}

// ---- E2E: nqvm vs the same QEMU by hand -------------------------------------------------

async function nqvmBoot(name: string, keep: boolean): Promise<{ id: string; ms: number; cmdline: string[] }> {
  const vm = await createVm(name);
  const op = await settle(vm.op);
  if (op.status !== 'succeeded') throw new Error(`create ${name}: ${JSON.stringify(op)}\n${agentOut}`);
  const [pid] = qemuPids(vm.id);
  const cmdline = pid ? fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean) : [];
  await waitFor(
    async () => (await consoleTail(vm.id)).includes(BOOT_MARKER),
    BOOT_TIMEOUT_MS,
    `${name} boot`,
  );
  const took = now() - vm.sent;
  if (!keep) await deleteVm(vm.id);
  return { id: vm.id, ms: took, cmdline };
}

/** nqvm's QEMU command line with its VM folder replaced by a fresh one and a fresh qcow2 overlay. */
async function handBoot(cmdline: string[], vmDirOfNqvm: string, rootfs: string): Promise<number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-bench-hand-'));
  tempDirs.push(dir);
  const args = cmdline.slice(1).map((a) => a.split(vmDirOfNqvm).join(dir));
  const disk = path.join(dir, 'root.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', rootfs, disk]);
  const sock = path.join(dir, 'console.sock');
  const start = now();
  const q = spawn(cmdline[0]!, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  handQemus.add(q);
  let err = '';
  q.stderr?.on('data', (d) => (err += d));
  try {
    const conn = await waitFor(
      async () =>
        q.exitCode !== null || q.signalCode !== null
          ? Promise.reject(new Error(`hand-run QEMU exited: ${err}`))
          : new Promise<net.Socket | null>((resolve) => {
              const s = net.connect(sock);
              s.once('connect', () => resolve(s));
              s.once('error', () => resolve(null));
            }),
      30_000,
      `hand-run console socket (${err})`,
    );
    let out = '';
    const took = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`hand-run boot timed out: ${err}`)), BOOT_TIMEOUT_MS);
      conn.on('data', (d) => {
        out += d;
        if (out.includes(BOOT_MARKER)) {
          clearTimeout(timer);
          resolve(now() - start);
        }
      });
      q.once('exit', () => reject(new Error(`hand-run QEMU exited: ${err}`)));
    });
    conn.destroy();
    return took;
  } finally {
    if (q.exitCode === null && q.signalCode === null) {
      const gone = new Promise((r) => q.once('exit', r));
      q.kill('SIGKILL');
      await gone;
    }
    handQemus.delete(q);
  }
}

/** The same QEMU argv by hand: spawn -> first QMP greeting (QEMU's own start, no guest boot). */
async function handQmpReady(cmdline: string[], vmDirOfNqvm: string, rootfs: string): Promise<number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-bench-qmp-'));
  tempDirs.push(dir);
  const args = cmdline.slice(1).map((a) => a.split(vmDirOfNqvm).join(dir));
  execFileSync('qemu-img', [
    'create',
    '-q',
    '-f',
    'qcow2',
    '-F',
    'raw',
    '-b',
    rootfs,
    path.join(dir, 'root.qcow2'),
  ]);
  const qmp = path.join(dir, 'qmp.sock');
  const start = now();
  const q = spawn(cmdline[0]!, args, { stdio: 'ignore' });
  handQemus.add(q);
  try {
    return await waitFor(
      () =>
        new Promise<number | null>((resolve) => {
          const c = net.connect(qmp);
          c.once('data', () => {
            resolve(now() - start);
            c.destroy();
          });
          c.once('error', () => resolve(null));
        }),
      10_000,
      'hand-run QMP greeting',
    );
  } finally {
    const gone = new Promise((r) => q.once('exit', r));
    q.kill('SIGKILL');
    await gone;
    handQemus.delete(q);
  }
}

// ---- P7: per running VM -------------------------------------------------------------------

async function sampleRss(pid: number, n = 10): Promise<number> {
  const v: number[] = [];
  for (let i = 0; i < n; i++) {
    v.push(procStatus(pid, 'VmRSS'));
    await sleep(200);
  }
  return median(v);
}

function agentExtras(agentPid: number, qemus: Set<number>): { children: number; sessionExtras: number } {
  const ps = processes();
  const children = ps.filter((p) => p.ppid === agentPid && !qemus.has(p.pid)).length;
  const sids = new Set(ps.filter((p) => qemus.has(p.pid)).map((p) => p.sid));
  const sessionExtras = ps.filter((p) => sids.has(p.sid) && !qemus.has(p.pid)).length;
  return { children, sessionExtras };
}

function diskUse(file: string): { size: number; blocks: number } {
  try {
    const st = fs.statSync(file);
    return { size: st.size, blocks: st.blocks * 512 };
  } catch {
    return { size: 0, blocks: 0 };
  }
}

// ---- main -----------------------------------------------------------------------------------

async function cleanup(): Promise<void> {
  for (const q of handQemus) q.kill('SIGKILL');
  for (const id of [...created]) await deleteVm(id).catch(() => {});
  if (agent && agent.exitCode === null && agent.signalCode === null) {
    const gone = new Promise((r) => agent!.once('exit', r));
    agent.kill('SIGTERM');
    await Promise.race([gone, sleep(15_000)]);
  }
  await t?.close().catch(() => {});
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
}

async function main(): Promise<void> {
  const t0 = Date.now();
  await startStack();
  const agentPid = agent!.pid!;
  const guest = await ensureTestGuest();

  // P1
  const spans = await p1();

  // E2E, interleaved so both sides see the same host load; one guest boots at a time.
  const nq: number[] = [];
  const hand: number[] = [];
  let cmdline: string[] = [];
  let cmdlineDir = '';
  for (let i = 0; i < E2E; i++) {
    const b = await nqvmBoot(`e2e-${i}`, false);
    nq.push(b.ms);
    if (!cmdline.length) {
      cmdline = b.cmdline;
      cmdlineDir = path.join(stateDir, 'vms', b.id);
    }
    hand.push(await handBoot(cmdline, cmdlineDir, guest.rootfs));
    process.stderr.write(`E2E ${i + 1}/${E2E}: nqvm ${ms(nq[i]!)}, hand ${ms(hand[i]!)}\n`);
  }

  const qemuAlone: number[] = [];
  if (cmdline.length)
    for (let i = 0; i < 10; i++) qemuAlone.push(await handQmpReady(cmdline, cmdlineDir, guest.rootfs));

  // P7: agent with 0 VMs, then with N VMs booted (at most 2 booting at once).
  await sleep(1500);
  const before = { rss: await sampleRss(agentPid), ...agentExtras(agentPid, new Set()) };
  const ids: string[] = [];
  for (let i = 0; i < N; i += 2) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(2, N - i) }, (_, k) => nqvmBoot(`p7-${i + k}`, true)),
    );
    ids.push(...batch.map((b) => b.id));
  }
  await sleep(1500);
  const qemus = new Set(ids.flatMap(qemuPids));
  const after = { rss: await sampleRss(agentPid), ...agentExtras(agentPid, qemus) };
  const qemuRss = median([...qemus].map((p) => procStatus(p, 'VmRSS')));
  const logs = ids.map((id) => diskUse(path.join(stateDir, 'vms', id, 'console.log')));
  const dirs = ids.map((id) => {
    const d = path.join(stateDir, 'vms', id);
    return fs.readdirSync(d).reduce((s, f) => s + diskUse(path.join(d, f)).blocks, 0);
  });
  for (const id of ids) await deleteVm(id);

  // ---- report ----
  const col = (k: keyof Span) => spans.map((s) => s[k]);
  const row = (label: string, k: keyof Span) => [
    label,
    ms(pct(col(k), 50)),
    ms(pct(col(k), 99)),
    ms(Math.max(...col(k))),
  ];
  const ownP50 = pct(col('attached'), 50);
  const ownP99 = pct(col('attached'), 99);
  const serverP50 = pct(col('opServer'), 50);
  const serverP99 = pct(col('opServer'), 99);
  const guestCpu = execFileSync('sh', ['-c', 'grep -m1 "model name" /proc/cpuinfo | cut -d: -f2'])
    .toString()
    .trim();
  const out: string[] = [];
  out.push(
    `nqvm agent boot benchmark  (${os.cpus().length} CPUs, ${guestCpu}; QEMU ${cmdline.includes('kvm') ? 'KVM' : 'TCG'})`,
  );
  out.push('');
  out.push(`P1  nqvm's own span per start: ${spans.length} starts of one VM (stop force=true, then start).`);
  out.push('    All times from the client sending POST /api/v1/vms/:id/start (t=0), same host clock.');
  out.push('    Phase marks are inotify events on the VM folder seen by the bench (event-loop shared with');
  out.push('    the in-process manager, so +/- ~1 ms), except the two operation rows.');
  out.push(
    table(
      ['phase (cumulative from t=0)', 'p50', 'p99', 'max'],
      [
        row('202 Accepted answered (manager recorded intent)', 'accepted'),
        row('agent received command (desired.json written)', 'received'),
        row('agent about to spawn QEMU (qemu.log opened)', 'spawn'),
        row("QEMU exec'd and initialised (qemu.pid written)", 'pidfile'),
        row('QMP answered + console held (run.json written)', 'attached'),
        row('operation created_at -> updated_at (server side)', 'opServer'),
        row('client sees operation succeeded (long-poll)', 'opClient'),
      ],
    ),
  );
  const gap = (a: keyof Span, b: keyof Span) => spans.map((s) => s[b] - s[a]);
  out.push('');
  out.push(
    table(
      ['where the span goes (per phase)', 'p50', 'p99'],
      [
        ['manager: request -> command at agent', ms(pct(col('received'), 50)), ms(pct(col('received'), 99))],
        [
          'agent: boot steps before spawn',
          ms(pct(gap('received', 'spawn'), 50)),
          ms(pct(gap('received', 'spawn'), 99)),
        ],
        [
          'QEMU: exec -> pidfile (the VMM itself)',
          ms(pct(gap('spawn', 'pidfile'), 50)),
          ms(pct(gap('spawn', 'pidfile'), 99)),
        ],
        [
          'agent: wait QMP, query-status, console, run.json',
          ms(pct(gap('pidfile', 'attached'), 50)),
          ms(pct(gap('pidfile', 'attached'), 99)),
        ],
        [
          'report: run.json -> operation succeeded (heartbeat)',
          ms(pct(gap('attached', 'opClient'), 50)),
          ms(pct(gap('attached', 'opClient'), 99)),
        ],
      ],
    ),
  );
  out.push('');
  out.push('    Own span = request sent -> QEMU running with QMP up and console held (run.json written).');
  out.push("    It includes QEMU's own process start (exec -> pidfile); the guest boot is not included.");
  out.push(
    `    Goal p50 <= ${GOAL_P50} ms, p99 <= ${GOAL_P99} ms:  own span p50 ${ms(ownP50)} (${(ownP50 / GOAL_P50).toFixed(2)}x goal), p99 ${ms(ownP99)} (${(ownP99 / GOAL_P99).toFixed(2)}x goal)`,
  );
  if (qemuAlone.length) {
    const alone = pct(qemuAlone, 50);
    out.push(
      `    QEMU alone, same argv by hand, spawn -> QMP greeting: p50 ${ms(alone)} (${qemuAlone.length} runs).`,
    );
    out.push(
      `    nqvm's share (own span minus QEMU alone): p50 ${ms(ownP50 - alone)}, p99 ${ms(ownP99 - alone)}`,
    );
  }
  out.push(
    `    As the API reports it (operation created -> succeeded): p50 ${ms(serverP50)} (${(serverP50 / GOAL_P50).toFixed(2)}x), p99 ${ms(serverP99)} (${(serverP99 / GOAL_P99).toFixed(2)}x)`,
  );
  out.push('');
  out.push(
    `E2E  boot to "${BOOT_MARKER}" on the console, ${E2E} runs each, interleaved, one guest booting at a time.`,
  );
  out.push(
    '     nqvm: POST /api/v1/vms -> marker in GET /console?tail (polled every ~50 ms; includes qcow2 overlay creation).',
  );
  out.push(
    '     hand: spawn the same qemu-system-x86_64 argv (from /proc/PID/cmdline, fresh folder + overlay made',
  );
  out.push('           beforehand) -> marker read on its console socket.');
  const nqM = median(nq);
  const handM = median(hand);
  out.push(
    table(
      ['', 'median', 'min', 'max'],
      [
        ['nqvm (API create)', ms(nqM), ms(Math.min(...nq)), ms(Math.max(...nq))],
        ['QEMU by hand', ms(handM), ms(Math.min(...hand)), ms(Math.max(...hand))],
        ['difference (nqvm - hand)', ms(nqM - handM), '', ''],
        ['ratio (nqvm / hand)', `${(nqM / handM).toFixed(3)}x`, '', ''],
      ],
    ),
  );
  out.push('');
  out.push(`P7  what nqvm adds per running VM besides QEMU, N = ${ids.length} VMs booted and idle.`);
  const perVmRss = (after.rss - before.rss) / ids.length;
  out.push(
    table(
      ['', '0 VMs', `${ids.length} VMs`, 'per VM'],
      [
        ['agent VmRSS (median of 10 samples)', mib(before.rss), mib(after.rss), mib(perVmRss)],
        [
          'agent children other than QEMU',
          String(before.children),
          String(after.children),
          String((after.children - before.children) / ids.length),
        ],
        [
          'other processes in QEMU sessions',
          '-',
          String(after.sessionExtras),
          String(after.sessionExtras / ids.length),
        ],
        [
          'console.log on disk (allocated / size)',
          '-',
          '-',
          `${mib(median(logs.map((l) => l.blocks)))} / ${mib(median(logs.map((l) => l.size)))}`,
        ],
        ['whole VM folder on disk (overlay, logs, state)', '-', '-', mib(median(dirs))],
        ['(for scale) QEMU VmRSS, the VMM itself', '-', '-', mib(qemuRss)],
      ],
    ),
  );
  out.push(
    `    Goal <= 1 small process and <= 2 MB per VM: ${(after.children - before.children + after.sessionExtras) / ids.length} extra processes, ${mib(perVmRss)} agent RSS + ${mib(median(logs.map((l) => l.blocks)))} console log per VM.`,
  );
  out.push('');
  out.push(`total bench time ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  console.log(out.join('\n'));
}

let cleaning: Promise<void> | null = null;
const runCleanup = () => (cleaning ??= cleanup());
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    void runCleanup().finally(() => process.exit(130));
  });
}
try {
  await main();
} catch (err) {
  console.error(err);
  if (agentOut) console.error(`agent output:\n${agentOut.slice(-4000)}`);
  process.exitCode = 1;
} finally {
  await runCleanup();
}
