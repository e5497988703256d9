/**
 * The Logs tab: the container's output, followed live. It scrolls along unless the user
 * scrolled up; stderr and nqvm's own notes look different from stdout.
 */
import { useEffect, useLayoutEffect, useRef, useState } from 'react';
import { ApiError, errorMessage } from '../api';
import { followLogs, type LogLine } from '../container-logs';
import type { Container } from '../types';

const TAILS = [100, 500, 1000, 5000] as const;
/** Lines kept in the page; older ones are dropped as new ones arrive. */
const KEEP = 10_000;
/** Reconnect after this long when the stream ended while the container still runs. */
const RETRY_MS = 2000;

type Status =
  | { state: 'connecting' }
  | { state: 'live' }
  | { state: 'ended' }
  | { state: 'error'; message: string };

interface Shown extends LogLine {
  n: number;
}

const time = (iso: string) => {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
};

export function ContainerLogs({ c }: { c: Container }) {
  const [tail, setTail] = useState<number | null>(500);
  const [timestamps, setTimestamps] = useState(true);
  const [lines, setLines] = useState<Shown[]>([]);
  const [status, setStatus] = useState<Status>({ state: 'connecting' });
  const [stuck, setStuck] = useState(true);
  const view = useRef<HTMLDivElement>(null);
  const stick = useRef(true);
  const running = c.status === 'running' || c.status === 'starting' || c.status === 'paused';
  const runningRef = useRef(running);
  runningRef.current = running;

  // One reader per tail and per run of the process (a restart is followed from its start).
  // biome-ignore lint/correctness/useExhaustiveDependencies: started_at and restart_count mark a new run
  useEffect(() => {
    const ctl = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    let n = 0;
    const read = async () => {
      let fresh = true;
      setStatus({ state: 'connecting' });
      try {
        await followLogs(
          c.id,
          { tail, onOpen: () => setStatus({ state: 'live' }) },
          (batch) => {
            const shown = batch.map((l) => ({ ...l, n: n++ }));
            // A reconnect reads the tail again: its first lines replace what is shown.
            const replace = fresh;
            fresh = false;
            setLines((old) => (replace ? shown : old.concat(shown)).slice(-KEEP));
          },
          ctl.signal,
        );
        if (fresh) setLines([]);
        setStatus({ state: 'ended' });
      } catch (err) {
        if (ctl.signal.aborted) return;
        setStatus({ state: 'error', message: errorMessage(err) });
        // Refused for good (gone, forbidden): asking again would not help.
        if (err instanceof ApiError && err.status >= 400 && err.status < 500 && err.status !== 409) return;
      }
      if (!ctl.signal.aborted && runningRef.current) timer = setTimeout(read, RETRY_MS);
    };
    void read();
    return () => {
      ctl.abort();
      clearTimeout(timer);
    };
  }, [c.id, tail, c.started_at, c.restart_count]);

  // biome-ignore lint/correctness/useExhaustiveDependencies: scroll along after every change of the lines shown
  useLayoutEffect(() => {
    const el = view.current;
    if (el && stick.current) el.scrollTop = el.scrollHeight;
  }, [lines, timestamps]);

  const onScroll = () => {
    const el = view.current;
    if (!el) return;
    stick.current = el.scrollTop + el.clientHeight >= el.scrollHeight - 24;
    setStuck(stick.current);
  };
  const toBottom = () => {
    const el = view.current;
    if (!el) return;
    stick.current = true;
    setStuck(true);
    el.scrollTop = el.scrollHeight;
  };

  return (
    <section className="logs-wrap">
      <div className="toolbar logs-bar">
        <select
          aria-label="Lines from the end"
          value={tail === null ? 'all' : String(tail)}
          onChange={(e) => setTail(e.target.value === 'all' ? null : Number(e.target.value))}
        >
          {TAILS.map((t) => (
            <option key={t} value={t}>
              last {t} lines
            </option>
          ))}
          <option value="all">all lines</option>
        </select>
        <label className="check">
          <input type="checkbox" checked={timestamps} onChange={(e) => setTimestamps(e.target.checked)} />
          Timestamps
        </label>
        <span className="small muted legend">
          stdout, <span className="log-stderr">stderr</span>
          {lines.some((l) => l.stream === 'nqvm') ? (
            <>
              , <span className="log-nqvm">nqvm</span>
            </>
          ) : null}
        </span>
        <span className="spacer" />
        <span className="small muted" data-testid="logs-status" role="status">
          {status.state === 'live'
            ? 'Following'
            : status.state === 'connecting'
              ? 'Connecting…'
              : status.state === 'ended'
                ? running
                  ? 'Reconnecting…'
                  : `End of the log (the container is ${c.status})`
                : status.message}
        </span>
      </div>
      <div
        ref={view}
        className={`log-view${timestamps ? '' : ' no-ts'}`}
        role="log"
        aria-label="Container log"
        data-testid="logs"
        // biome-ignore lint/a11y/noNoninteractiveTabindex: keyboard users scroll the log, so it takes focus
        tabIndex={0}
        onScroll={onScroll}
      >
        {lines.length === 0 && status.state !== 'connecting' ? (
          <div className="log-empty muted">No output yet.</div>
        ) : null}
        {lines.map((l) => (
          <div key={l.n} className={`log-line log-${l.stream}`} data-stream={l.stream}>
            {timestamps && l.ts ? (
              <span className="log-ts" title={l.ts}>
                {time(l.ts)}
              </span>
            ) : null}
            <span className="log-text">{l.text}</span>
          </div>
        ))}
      </div>
      {stuck ? null : (
        <button type="button" className="btn btn-small log-latest" onClick={toBottom}>
          ↓ Latest
        </button>
      )}
    </section>
  );
}
