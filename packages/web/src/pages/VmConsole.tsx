/** The serial console in xterm.js, fed by a ConsoleSource (the console WebSocket by default). */
import { useEffect, useRef, useState } from 'react';
import {
  type ConsoleSession,
  type ConsoleSource,
  type ConsoleStatus,
  webSocketConsoleSource,
} from '../console-source';
import { openTerminal } from '../terminal';
import type { Vm } from '../types';

/** States in which the VM has a console to connect to. */
const RUNNING = new Set(['starting', 'running', 'pausing', 'paused']);

export default function VmConsole({
  vm,
  createSource = (id) => webSocketConsoleSource(id),
}: {
  vm: Vm;
  createSource?: (vmId: string) => ConsoleSource;
}) {
  const el = useRef<HTMLDivElement>(null);
  const sourceRef = useRef<ConsoleSource | null>(null);
  const [status, setStatus] = useState<ConsoleStatus>({ state: 'connecting' });
  const [interactive, setInteractive] = useState(false);
  const [session, setSession] = useState<ConsoleSession | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const running = RUNNING.has(vm.state);

  // biome-ignore lint/correctness/useExhaustiveDependencies: one terminal per VM; the factory is fixed
  useEffect(() => {
    const host = el.current;
    if (!host) return;
    const source = createSource(vm.id);
    sourceRef.current = source;
    setInteractive(source.interactive);
    const { term, dispose } = openTerminal(host, {
      interactive: source.interactive,
      onData: source.send ? (d) => source.send?.(d) : undefined,
      onResize: (cols, rows) => source.resize?.(cols, rows),
    });
    const stop = source.start({
      write: (d) => term.write(d),
      reset: () => term.reset(),
      status: setStatus,
      session: (s) => {
        setSession(s);
        setNotice(null);
        // A read-only user's keystrokes would only be refused.
        term.options.disableStdin = !s.canWrite;
      },
      notice: setNotice,
    });
    return () => {
      stop();
      sourceRef.current = null;
      dispose();
    };
  }, [vm.id]);

  // A console that ended with the VM comes back when the VM runs again.
  useEffect(() => {
    if (running) sourceRef.current?.retry?.();
  }, [running]);

  const role =
    session === null
      ? null
      : session.writer
        ? 'You are typing'
        : !session.canWrite
          ? 'Read-only'
          : session.writerName
            ? `Watching: ${session.writerName} is typing`
            : 'Watching';

  return (
    <section className="console-wrap">
      <div className="console-bar small">
        <span
          className={`live live-${status.state === 'live' ? 'live' : status.state === 'error' ? 'down' : 'reconnecting'}`}
        >
          <span className="dot" aria-hidden="true" />
        </span>
        <span data-testid="console-status">
          {status.state === 'live'
            ? interactive
              ? 'Connected'
              : 'Serial console (read-only, last 64 KiB, refreshed every second)'
            : status.state === 'connecting'
              ? 'Connecting…'
              : status.message}
        </span>
        {notice ? (
          <span role="status" data-testid="console-notice">
            {notice}
          </span>
        ) : null}
        {status.state === 'live' && role ? (
          <span style={{ marginLeft: 'auto', display: 'flex', gap: 8, alignItems: 'center' }}>
            <span data-testid="console-role">{role}</span>
            {session?.canWrite && !session.writer ? (
              <button
                type="button"
                className="btn btn-small"
                onClick={() => sourceRef.current?.take?.()}
                title="Become the one who types; the current writer watches"
              >
                Take over
              </button>
            ) : null}
          </span>
        ) : null}
      </div>
      <div ref={el} className="console" data-testid="console" />
    </section>
  );
}
