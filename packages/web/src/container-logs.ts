/**
 * A container's output from `GET /api/v1/containers/{id}/logs`: text lines
 * `<RFC3339 ms> <stream> <text>`, streamed while following. Always asked for with timestamps, so
 * that every line names its stream; the page decides whether to show the time.
 */
import { request, withQuery } from './api';

export interface LogLine {
  /** RFC 3339, null when the line had none. */
  ts: string | null;
  /** stdout or stderr of the process; nqvm for what nqvm itself noted (start, exit). */
  stream: string;
  text: string;
}

const LINE = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)) (\w+)(?: (.*))?$/s;

export function parseLogLine(raw: string): LogLine {
  const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
  const m = LINE.exec(line);
  return m ? { ts: m[1]!, stream: m[2]!, text: m[3] ?? '' } : { ts: null, stream: 'stdout', text: line };
}

/**
 * Reads the log, following it until the server ends the stream (the container stopped) or
 * `signal` aborts; `onLines` gets whole lines as they arrive. Throws an ApiError with the API's
 * message when the request is refused.
 */
export async function followLogs(
  containerId: string,
  opts: { tail: number | null; onOpen?: () => void },
  onLines: (lines: LogLine[]) => void,
  signal: AbortSignal,
): Promise<void> {
  const path = withQuery(`/api/v1/containers/${encodeURIComponent(containerId)}/logs`, {
    tail: opts.tail,
    follow: 'true',
    timestamps: 'true',
    stream: 'all',
  });
  const res = await request('GET', path, undefined, signal);
  opts.onOpen?.();
  if (!res.body) return;
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let rest = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest += value;
      const parts = rest.split('\n');
      rest = parts.pop() ?? '';
      if (parts.length) onLines(parts.map(parseLogLine));
    }
    if (rest) onLines([parseLogLine(rest)]);
  } finally {
    reader.releaseLock();
  }
}
