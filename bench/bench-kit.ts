/**
 * What every benchmark shares: its size (full, or the smallest under BENCH_SMOKE=1, which
 * `npm run bench:smoke` sets), percentiles and tables printed as soon as they are known.
 * Figures are never asserted: a benchmark fails only when it cannot measure.
 */

/** BENCH_SMOKE=1: run once at the smallest size, to show the benchmark still works. */
export const SMOKE = process.env.BENCH_SMOKE === '1';

/**
 * A size setting: the environment variable when set, else the smoke or the full default.
 *
 * @example
 * const N = size('BENCH_N', 5, 1);
 */
export function size(name: string, full: number, smoke: number): number {
  const v = process.env[name];
  if (v !== undefined && v !== '') {
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`${name}=${v}: not a number`);
    return n;
  }
  return SMOKE ? smoke : full;
}

/** A list setting (comma-separated), as `size` does for one number. */
export function sizes(name: string, full: string, smoke: string): number[] {
  const v = process.env[name] || (SMOKE ? smoke : full);
  return v.split(',').map((x) => {
    const n = Number(x);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`${name}=${v}: not a list of numbers`);
    return n;
  });
}

/** The p-th percentile (nearest rank) of the finite values, NaN when there are none. */
export function pct(values: number[], p: number): number {
  const s = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (!s.length) return Number.NaN;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

export const median = (values: number[]) => pct(values, 50);

export const ms = (v: number, digits = 0) => (Number.isFinite(v) ? `${v.toFixed(digits)} ms` : 'n/a');

/** `a / b` as a ratio, or n/a. */
export const ratio = (a: number, b: number) =>
  Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? `${(a / b).toFixed(2)}x` : 'n/a';

/** A text table: the first column left-aligned, the others right-aligned. */
export function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => (i === 0 ? (c ?? '').padEnd(w[i]!) : (c ?? '').padStart(w[i]!)))
      .join('  ')
      .trimEnd();
  return [line(head), w.map((x) => '-'.repeat(x)).join('  '), ...rows.map(line)].join('\n');
}

/** Prints a titled table at once (a later failure must not lose it). */
export function printTable(title: string, head: string[], rows: string[][]): void {
  console.log(`\n${title}\n\n${table(head, rows)}`);
}

/** One row of median / min / max. */
export function spread(label: string, values: number[], digits = 0): string[] {
  const v = values.filter((x) => Number.isFinite(x));
  return [
    label,
    ms(median(v), digits),
    ms(v.length ? Math.min(...v) : Number.NaN, digits),
    ms(v.length ? Math.max(...v) : Number.NaN, digits),
  ];
}

/** A goal line: the figure, the goal, their ratio, and whether it is met (never asserted). */
export function goal(what: string, figure: number, limit: number, unit: 'ms' | 'x', lowerIsBetter = true) {
  const shown = unit === 'ms' ? ms(figure, 1) : `${figure.toFixed(2)}x`;
  const limitShown = unit === 'ms' ? ms(limit) : `${limit}x`;
  const met = Number.isFinite(figure) && (lowerIsBetter ? figure <= limit : figure >= limit);
  console.log(
    `${what}: ${shown} (goal ${lowerIsBetter ? '<=' : '>='} ${limitShown}, ${ratio(figure, limit)} of it): ${
      met ? 'met' : 'NOT met'
    }`,
  );
}
