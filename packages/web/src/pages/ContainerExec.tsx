/**
 * The Exec tab: a command in the container (a shell by default) in xterm.js over the exec
 * WebSocket. The terminal's size follows its box; when the command ends its exit code shows,
 * and it can be run again.
 */
import { type FormEvent, useCallback, useEffect, useRef, useState } from 'react';
import { formatArgv, parseArgv } from '../argv';
import { type ExecSession, openExecSession } from '../exec-session';
import { openTerminal, type TerminalHandle } from '../terminal';
import type { Container } from '../types';

const DEFAULT_ARGV = ['/bin/sh'];

type ExecState =
  | { state: 'idle' }
  | { state: 'connecting'; argv: string[] }
  | { state: 'running'; argv: string[]; pid: number }
  | { state: 'exited'; argv: string[]; code: number | null; signal: number | null }
  | { state: 'error'; argv: string[]; message: string };

export default function ContainerExec({ c }: { c: Container }) {
  const el = useRef<HTMLDivElement>(null);
  const terminal = useRef<TerminalHandle | null>(null);
  const session = useRef<ExecSession | null>(null);
  const size = useRef({ cols: 80, rows: 24 });
  const autoRan = useRef(false);
  const [command, setCommand] = useState(formatArgv(DEFAULT_ARGV));
  const [commandError, setCommandError] = useState<string | null>(null);
  const [exec, setExec] = useState<ExecState>({ state: 'idle' });
  const running = c.status === 'running';

  const run = useCallback(
    (argv: string[]) => {
      const t = terminal.current;
      if (!t) return;
      session.current?.close();
      t.term.reset();
      setExec({ state: 'connecting', argv });
      session.current = openExecSession(
        c.id,
        { argv, ...size.current },
        {
          output: (d) => t.term.write(d),
          started: (pid) => setExec({ state: 'running', argv, pid }),
          exit: (code, signal) => setExec({ state: 'exited', argv, code, signal }),
          error: (message) => setExec({ state: 'error', argv, message }),
        },
      );
      t.term.focus();
    },
    [c.id],
  );

  useEffect(() => {
    const host = el.current;
    if (!host) return;
    const handle = openTerminal(host, {
      interactive: true,
      onData: (d) => session.current?.send(d),
      onResize: (cols, rows) => {
        size.current = { cols, rows };
        session.current?.resize(cols, rows);
      },
    });
    terminal.current = handle;
    return () => {
      session.current?.close();
      session.current = null;
      terminal.current = null;
      handle.dispose();
    };
  }, []);

  // The tab opens with a shell, once the container runs.
  useEffect(() => {
    if (!running || autoRan.current) return;
    autoRan.current = true;
    run(DEFAULT_ARGV);
  }, [running, run]);

  const submit = (e: FormEvent) => {
    e.preventDefault();
    const parsed = parseArgv(command);
    if (parsed.error !== undefined) return setCommandError(parsed.error);
    if (!parsed.argv.length) return setCommandError('a command to run, e.g. /bin/sh');
    setCommandError(null);
    run(parsed.argv);
  };

  const ended = exec.state === 'exited' || exec.state === 'error';
  const dot =
    exec.state === 'running'
      ? 'live'
      : exec.state === 'error' || exec.state === 'exited'
        ? 'down'
        : 'reconnecting';

  return (
    <div className="stack">
      <form className="toolbar exec-form" onSubmit={submit} noValidate>
        <input
          aria-label="Command"
          name="command"
          autoComplete="off"
          spellCheck={false}
          value={command}
          onChange={(e) => setCommand(e.target.value)}
        />
        <button type="submit" className="btn" disabled={!running}>
          Run
        </button>
        <small className={commandError ? 'error-text' : 'muted'}>
          {commandError ??
            "words split like a shell line, or a JSON array; runs in the container's environment"}
        </small>
      </form>
      <section className="console-wrap">
        <div className="console-bar small">
          <span className={`live live-${dot}`}>
            <span className="dot" aria-hidden="true" />
          </span>
          <span data-testid="exec-status" role="status">
            {!running && !ended && exec.state !== 'running'
              ? `The container is ${c.status}: a command needs it running.`
              : exec.state === 'idle'
                ? 'Ready'
                : exec.state === 'connecting'
                  ? `Starting ${formatArgv(exec.argv)}…`
                  : exec.state === 'running'
                    ? `Running ${formatArgv(exec.argv)} (pid ${exec.pid})`
                    : exec.state === 'exited'
                      ? exec.signal !== null
                        ? `${formatArgv(exec.argv)} was killed by signal ${exec.signal}`
                        : `${formatArgv(exec.argv)} exited with code ${exec.code}`
                      : exec.message}
          </span>
          {ended ? (
            <button
              type="button"
              className="btn btn-small"
              style={{ marginLeft: 'auto' }}
              disabled={!running}
              onClick={() => run(exec.argv)}
            >
              Run again
            </button>
          ) : null}
        </div>
        <div ref={el} className="console" data-testid="exec-terminal" />
      </section>
    </div>
  );
}
