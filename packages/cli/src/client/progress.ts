/**
 * A one-line progress display on stderr: a bar with a percentage and message on a terminal,
 * nothing at all when stderr is not one (scripts read stdout; their logs stay clean).
 */
const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
const BAR_WIDTH = 24;

export class Progress {
  private frame = 0;
  private shown = false;
  private lastDraw = 0;

  constructor(
    private readonly label: string,
    private readonly stream: NodeJS.WriteStream = process.stderr,
    private readonly enabled = Boolean(stream.isTTY) && process.env.TERM !== 'dumb',
  ) {}

  /** percent 0..100, or null for a spinner when the total is unknown. */
  update(percent: number | null, message = ''): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (now - this.lastDraw < 80 && percent !== 100) return;
    this.lastDraw = now;
    const spin = FRAMES[this.frame++ % FRAMES.length];
    let body: string;
    if (percent === null) {
      body = `${spin} ${this.label}`;
    } else {
      const p = Math.max(0, Math.min(100, Math.round(percent)));
      const filled = Math.round((p / 100) * BAR_WIDTH);
      body = `${spin} ${this.label} [${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}] ${String(p).padStart(3)}%`;
    }
    const width = this.stream.columns ?? 80;
    const line = `${body}${message ? ` ${message}` : ''}`.slice(0, width - 1);
    this.stream.write(`\r\u001b[2K${line}`);
    this.shown = true;
  }

  done(ok: boolean): void {
    if (!this.enabled || !this.shown) return;
    this.stream.write(ok ? '\r\u001b[2K' : '\n');
    this.shown = false;
  }
}
