/**
 * Your terminal attached to one at the other end (the VM console, an interactive exec): raw mode
 * so that every key goes through as typed, the input handed over as it comes, and the size
 * reported again on SIGWINCH.
 */

/** The terminal's size, or null when stdout is not one or reports none (0x0, e.g. a fresh pty). */
export function terminalSize(
  out: NodeJS.WriteStream = process.stdout,
): { cols: number; rows: number } | null {
  if (!out.isTTY || !(out.columns > 0) || !(out.rows > 0)) return null;
  return { cols: out.columns, rows: out.rows };
}

/**
 * Reads stdin into `onInput` (in raw mode when it is a terminal) and calls `onResize` on SIGWINCH;
 * answers the function that puts everything back (once; later calls do nothing).
 *
 * @example
 * const release = attachTerminal({ onInput: (b) => ws.send(b), onResize: sendSize });
 * try { await ended; } finally { release(); }
 */
export function attachTerminal(opts: {
  onInput?: (data: Buffer) => void;
  onResize?: () => void;
}): () => void {
  const stdin = process.stdin;
  const { onInput, onResize } = opts;
  const raw = Boolean(onInput && stdin.isTTY);
  if (raw) stdin.setRawMode(true);
  if (onInput) {
    stdin.on('data', onInput);
    stdin.resume();
  }
  if (onResize) process.on('SIGWINCH', onResize);
  let released = false;
  return () => {
    if (released) return;
    released = true;
    if (onResize) process.off('SIGWINCH', onResize);
    if (onInput) {
      stdin.off('data', onInput);
      stdin.pause();
    }
    if (raw) stdin.setRawMode(false);
  };
}
