/** The xterm.js terminal of the VM console and the container exec tab: one look, sized to its box. */
import '@xterm/xterm/css/xterm.css';
import { FitAddon } from '@xterm/addon-fit';
import { Terminal } from '@xterm/xterm';

export interface TerminalOptions {
  /** Whether keystrokes go anywhere (else the terminal only shows output). */
  interactive: boolean;
  /** Keystrokes and pastes, as xterm.js reports them. */
  onData?: (data: string) => void;
  /** The terminal's size in cells: once it is laid out, then whenever its box changes. */
  onResize?: (cols: number, rows: number) => void;
}

export interface TerminalHandle {
  term: Terminal;
  dispose(): void;
}

/**
 * Opens a terminal in `host` that fills it and follows its size.
 *
 * @example
 * const { term, dispose } = openTerminal(el, { interactive: true, onData: send, onResize: resize });
 * term.write(bytes);
 */
export function openTerminal(host: HTMLElement, opts: TerminalOptions): TerminalHandle {
  const term = new Terminal({
    convertEol: true,
    disableStdin: !opts.interactive,
    cursorBlink: opts.interactive,
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
      opts.onResize?.(term.cols, term.rows);
    } catch {
      // not laid out yet
    }
  };
  refit();
  const ro = new ResizeObserver(refit);
  ro.observe(host);
  const input = opts.onData ? term.onData(opts.onData) : undefined;
  return {
    term,
    dispose() {
      input?.dispose();
      ro.disconnect();
      term.dispose();
    },
  };
}
