/** The serial console in xterm.js; fed by a ConsoleSource (tail polling now, a WebSocket later). */
import '@xterm/xterm/css/xterm.css';
import { FitAddon } from '@xterm/addon-fit';
import { Terminal } from '@xterm/xterm';
import { useEffect, useRef, useState } from 'react';
import { type ConsoleSource, type ConsoleStatus, pollingTailSource } from '../console-source';
import type { Vm } from '../types';

export default function VmConsole({
  vm,
  createSource = (id) => pollingTailSource(id),
}: {
  vm: Vm;
  createSource?: (vmId: string) => ConsoleSource;
}) {
  const el = useRef<HTMLDivElement>(null);
  const [status, setStatus] = useState<ConsoleStatus>({ state: 'connecting' });
  const [interactive, setInteractive] = useState(false);

  // biome-ignore lint/correctness/useExhaustiveDependencies: one terminal per VM; the factory is fixed
  useEffect(() => {
    const host = el.current;
    if (!host) return;
    const source = createSource(vm.id);
    setInteractive(source.interactive);
    const term = new Terminal({
      convertEol: true,
      disableStdin: !source.interactive,
      cursorBlink: source.interactive,
      scrollback: 10_000,
      fontSize: 13,
      fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace',
      theme: { background: '#0b1020', foreground: '#d7dce5', cursor: '#d7dce5' },
    });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(host);
    const refit = () => {
      try {
        fit.fit();
        source.resize?.(term.cols, term.rows);
      } catch {
        // not laid out yet
      }
    };
    refit();
    const ro = new ResizeObserver(refit);
    ro.observe(host);
    const input = source.send ? term.onData((d) => source.send?.(d)) : undefined;
    const stop = source.start({
      write: (d) => term.write(d),
      reset: () => term.reset(),
      status: setStatus,
    });
    return () => {
      stop();
      input?.dispose();
      ro.disconnect();
      term.dispose();
    };
  }, [vm.id]);

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
      </div>
      <div ref={el} className="console" data-testid="console" />
    </section>
  );
}
