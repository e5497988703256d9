import { readFile } from 'node:fs/promises';

/** The fields of `/proc/PID/stat` nqvm needs. */
export interface ProcStat {
  pid: number;
  /** One-letter state: R, S, D, Z (zombie), T, ... */
  state: string;
  /** Start time in clock ticks since boot (field 22): with the pid, it names one process. */
  startTime: number;
}

/**
 * Parses `/proc/PID/stat`. The command name (field 2) sits in parentheses and may itself hold
 * spaces or parentheses, so fields are counted from the last `)`.
 */
export function parseProcStat(text: string): ProcStat | null {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) return null;
  const pid = Number(text.slice(0, open).trim());
  // After ")": field 3 (state) is index 0, so field 22 (starttime) is index 19.
  const rest = text
    .slice(close + 1)
    .trim()
    .split(/\s+/);
  const state = rest[0];
  const startTime = Number(rest[19]);
  if (!Number.isInteger(pid) || !state || !Number.isFinite(startTime)) return null;
  return { pid, state, startTime };
}

export async function readProcStat(pid: number): Promise<ProcStat | null> {
  if (!Number.isInteger(pid) || pid <= 0) return null;
  try {
    return parseProcStat(await readFile(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return null;
  }
}

/**
 * Start time of a process in clock ticks since boot, or null when no such process exists.
 *
 * @example
 * const record = { pid: child.pid, pidStartTime: await readProcStartTime(child.pid) };
 */
export async function readProcStartTime(pid: number): Promise<number | null> {
  return (await readProcStat(pid))?.startTime ?? null;
}

/**
 * Whether `pid` runs and is the very process that started at `startTime` (a reused pid is
 * another process). A zombie counts as gone: it runs nothing and only awaits its reaper.
 */
export async function isSameProcessRunning(pid: number, startTime: number): Promise<boolean> {
  const stat = await readProcStat(pid);
  return stat !== null && stat.state !== 'Z' && stat.startTime === startTime;
}

/** CPU time (user + system, field 14 and 15) in seconds and resident memory of a process; null when gone. */
export async function processUsage(pid: number): Promise<{ cpuSeconds: number; rssBytes: number } | null> {
  try {
    const [stat, status] = await Promise.all([
      readFile(`/proc/${pid}/stat`, 'utf8'),
      readFile(`/proc/${pid}/status`, 'utf8'),
    ]);
    const rest = stat
      .slice(stat.lastIndexOf(')') + 1)
      .trim()
      .split(/\s+/);
    // Clock ticks: 100 per second on every Linux that nqvm runs on (USER_HZ).
    const cpuSeconds = (Number(rest[11]) + Number(rest[12])) / 100;
    const rssKib = Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0);
    return { cpuSeconds, rssBytes: rssKib * 1024 };
  } catch {
    return null;
  }
}
