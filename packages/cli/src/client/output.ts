/**
 * How the CLI prints: aligned tables for people (colour only on a terminal, never with NO_COLOR),
 * JSON or YAML exactly as the API returns it for scripts (`--output json|yaml`).
 */
import { stringify as toYaml } from 'yaml';

export type OutputFormat = 'table' | 'json' | 'yaml';

export interface Column<T> {
  header: string;
  value: (row: T) => string | number | boolean | null | undefined;
  /** Colours a cell (given its text) when colour is on. */
  colour?: (text: string) => Colour | null;
}

export type Colour = 'green' | 'yellow' | 'red' | 'dim' | 'bold';

const CODES: Record<Colour, [number, number]> = {
  green: [32, 39],
  yellow: [33, 39],
  red: [31, 39],
  dim: [2, 22],
  bold: [1, 22],
};

export interface Printer {
  format: OutputFormat;
  colour: boolean;
  out: (text: string) => void;
}

export function makePrinter(
  format: string | undefined,
  stream: NodeJS.WriteStream = process.stdout,
): Printer {
  const f = (format ?? 'table') as OutputFormat;
  if (!['table', 'json', 'yaml'].includes(f)) {
    throw new UsageError(`--output must be table, json or yaml, not "${format}"`);
  }
  return {
    format: f,
    colour: Boolean(stream.isTTY) && !process.env.NO_COLOR && process.env.TERM !== 'dumb',
    out: (text) => stream.write(text),
  };
}

/** A mistake in how the command was called: exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export function paint(p: Pick<Printer, 'colour'>, colour: Colour | null, text: string): string {
  if (!p.colour || !colour) return text;
  const [on, off] = CODES[colour];
  return `\u001b[${on}m${text}\u001b[${off}m`;
}

function cell(v: string | number | boolean | null | undefined): string {
  if (v === null || v === undefined || v === '') return '-';
  return String(v);
}

/** Prints `data` as JSON/YAML, or `rows` as a table of `columns`. */
export function printList<T>(p: Printer, data: unknown, rows: T[], columns: Column<T>[]): void {
  if (p.format !== 'table') {
    printData(p, data);
    return;
  }
  const cells = rows.map((r) => columns.map((c) => cell(c.value(r))));
  const widths = columns.map((c, i) => Math.max(c.header.length, ...cells.map((row) => row[i]?.length ?? 0)));
  const line = (values: string[], colours: (Colour | null)[]) =>
    values
      .map((v, i) => {
        const padded = i === values.length - 1 ? v : v.padEnd(widths[i] ?? 0);
        return paint(p, colours[i] ?? null, padded);
      })
      .join('  ')
      .trimEnd();
  p.out(
    `${line(
      columns.map((c) => c.header),
      columns.map(() => 'bold'),
    )}\n`,
  );
  for (const row of cells) {
    p.out(
      `${line(
        row,
        columns.map((c, i) => c.colour?.(row[i] ?? '') ?? null),
      )}\n`,
    );
  }
}

/** Prints one resource: JSON/YAML as is, or `key: value` lines for people. */
export function printItem(p: Printer, data: unknown, fields?: [string, unknown][]): void {
  if (p.format !== 'table') {
    printData(p, data);
    return;
  }
  const entries = fields ?? Object.entries(data as Record<string, unknown>);
  const width = Math.max(...entries.map(([k]) => k.length));
  for (const [k, v] of entries) {
    const text = typeof v === 'object' && v !== null ? JSON.stringify(v) : cell(v as string);
    p.out(`${paint(p, 'bold', `${k}:`.padEnd(width + 1))} ${text}\n`);
  }
}

export function printData(p: Printer, data: unknown): void {
  if (p.format === 'yaml') p.out(toYaml(data));
  else p.out(`${JSON.stringify(data, null, 2)}\n`);
}

/** Colour of a VM, container, snapshot, host or operation state. */
export function stateColour(state: string): Colour | null {
  if (['running', 'ready', 'succeeded', 'available', 'in-use', 'schedulable'].includes(state)) return 'green';
  if (['failed', 'error', 'lost', 'unreachable', 'unknown'].includes(state)) return 'red';
  if (['stopped', 'exited', 'cancelled', 'cordoned'].includes(state)) return 'dim';
  return 'yellow';
}

export function formatMib(mib: number | null | undefined): string {
  if (mib === null || mib === undefined) return '-';
  return mib >= 1024 && mib % 1024 === 0 ? `${mib / 1024} GiB` : `${mib} MiB`;
}

export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(1)} ${units[u]}`;
}

/** "3m ago" style ages from RFC 3339 times. */
export function age(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return '-';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86_400)}d`;
}

export interface Page<T> {
  items: T[];
  next: string | null;
}

/**
 * Prints one page of a paged list: JSON/YAML get the page as the API answers it (`{items,
 * next}`), a table gets its rows and, when there is more, how to get the next page on stderr.
 */
export function printPage<T>(p: Printer, page: Page<T>, columns: Column<T>[]): void {
  printList(p, page, page.items, columns);
  if (p.format === 'table' && page.next) {
    process.stderr.write(`more: run the same command with --cursor ${page.next}\n`);
  }
}
