/** Display helpers. */
import { useSyncExternalStore } from 'react';
import type { Role, VmState } from './types';

/** VM states in the order lists and counts show them. */
export const VM_STATES: VmState[] = [
  'running',
  'paused',
  'stopped',
  'creating',
  'starting',
  'stopping',
  'pausing',
  'deleting',
  'failed',
  'unknown',
];

export const ROLES: Role[] = ['viewer', 'operator', 'admin'];

export function formatMib(mib: number): string {
  if (mib >= 1024 * 1024) return `${trim(mib / (1024 * 1024))} TiB`;
  if (mib >= 1024) return `${trim(mib / 1024)} GiB`;
  return `${mib} MiB`;
}

/** Bytes in binary units: "512 B", "1.5 MiB", "20 GiB"; "—" when unknown. */
export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${trim(v)} ${units[u]}`;
}

function trim(n: number): string {
  return n >= 100 ? n.toFixed(0) : n.toFixed(1).replace(/\.0$/, '');
}

/**
 * One absolute format everywhere, the same in every locale: local time, ISO-like, with its
 * offset from UTC.
 * @example formatTime('2026-12-07T06:19:12Z') // "2026-12-07 07:19:12 UTC+01:00" in Paris
 */
export function formatTime(iso: string | null | undefined): string {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const p2 = (n: number) => String(n).padStart(2, '0');
  const date = `${d.getFullYear()}-${p2(d.getMonth() + 1)}-${p2(d.getDate())}`;
  const time = `${p2(d.getHours())}:${p2(d.getMinutes())}:${p2(d.getSeconds())}`;
  const off = -d.getTimezoneOffset();
  const zone =
    off === 0
      ? 'UTC'
      : `UTC${off > 0 ? '+' : '-'}${p2(Math.floor(Math.abs(off) / 60))}:${p2(Math.abs(off) % 60)}`;
  return `${date} ${time} ${zone}`;
}

/** "5 min ago" / "in 2 h"; `now` (from useNow) re-renders the caller, the clock itself is read fresh. */
export function timeAgo(iso: string | null | undefined, now: number): string {
  if (!iso) return 'never';
  const t = new Date(iso).getTime();
  if (Number.isNaN(t)) return iso;
  const s = Math.round((Math.max(now, Date.now()) - t) / 1000);
  const future = s < 0;
  const a = Math.abs(s);
  const v =
    a < 5
      ? null
      : a < 60
        ? `${a} s`
        : a < 3600
          ? `${Math.floor(a / 60)} min`
          : a < 86_400
            ? `${Math.floor(a / 3600)} h`
            : `${Math.floor(a / 86_400)} d`;
  if (!v) return 'just now';
  return future ? `in ${v}` : `${v} ago`;
}

/** How often relative times are drawn again. */
export const CLOCK_TICK_MS = 2000;

// One shared clock for relative times.
let now = Date.now();
const subs = new Set<() => void>();
setInterval(() => {
  now = Date.now();
  for (const s of subs) s();
}, CLOCK_TICK_MS);

export function useNow(): number {
  return useSyncExternalStore(
    (l) => {
      subs.add(l);
      return () => subs.delete(l);
    },
    () => now,
  );
}

export function shortId(id: string): string {
  return id.slice(0, 8);
}

export function percent(used: number, total: number): number {
  if (total <= 0) return used > 0 ? 100 : 0;
  return Math.min(100, Math.round((used / total) * 100));
}

/** Seconds as "45 s", "12 min", "3 h 20 min", "2 d 4 h"; "—" when unknown. */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '—';
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86_400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86_400)} d ${Math.floor((s % 86_400) / 3600)} h`;
}
