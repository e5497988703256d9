import { readFile } from 'node:fs/promises';

/** Time the host's CPUs spent per mode since boot, in seconds (the `cpu` line of /proc/stat). */
export type CpuModes = Record<
  'user' | 'nice' | 'system' | 'idle' | 'iowait' | 'irq' | 'softirq' | 'steal',
  number
>;

const MODES = ['user', 'nice', 'system', 'idle', 'iowait', 'irq', 'softirq', 'steal'] as const;
/** USER_HZ: 100 on every Linux nqvm runs on. */
const TICKS_PER_SECOND = 100;

/** Parses the aggregate `cpu` line of `/proc/stat`; null when there is none. */
export function parseProcStatCpu(text: string): CpuModes | null {
  const line = text.split('\n').find((l) => /^cpu\s/.test(l));
  if (!line) return null;
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  const out = {} as CpuModes;
  MODES.forEach((m, i) => {
    out[m] = (f[i] ?? 0) / TICKS_PER_SECOND;
  });
  return out;
}

/** MemTotal and MemAvailable of `/proc/meminfo`, in bytes. */
export function parseMeminfo(text: string): { totalBytes: number; availableBytes: number } {
  const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? 0) * 1024;
  return { totalBytes: kib('MemTotal'), availableBytes: kib('MemAvailable') };
}

/** The host's CPU time by mode and its memory, read from /proc. */
export async function readHostUsage(): Promise<{
  cpu: CpuModes | null;
  memory: { totalBytes: number; availableBytes: number };
}> {
  const [stat, meminfo] = await Promise.all([
    readFile('/proc/stat', 'utf8'),
    readFile('/proc/meminfo', 'utf8'),
  ]);
  return { cpu: parseProcStatCpu(stat), memory: parseMeminfo(meminfo) };
}
