/**
 * The host side of a container VM's process: the settings drive its init reads (argv, env,
 * working dir, user, the guest agent's token), its output kept as timestamped JSON lines in the
 * VM folder (`container.log`, rotated), and its start and exit as the guest agent reports them
 * (`container.json`), so the restart policy can tell a failure (a non-zero exit) from a clean
 * end. While the VM runs, the agent stays connected to the guest agent; output made while the
 * agent was away is buffered by the guest and arrives when it connects again.
 */
import { EventEmitter } from 'node:events';
import { appendFile, readFile, rename, stat } from 'node:fs/promises';
import path from 'node:path';
import type { AgentContainerSpec, AgentVmReport } from '@nqvm/api';
import { CONTAINER_DRIVE_LABEL } from '@nqvm/builtin-guest';
import type { GuestAgentClient, LogRecord, WorkloadExit } from '@nqvm/guest-agent';
import { readJsonFile, writeJsonAtomic } from '../agent/state-files';
import { writeVfatImage } from '../guest-config/config-drive';

export const CONTAINER_DRIVE_FILE = 'container.img';
const STATE_FILE = 'container.json';
const LOG_FILE = 'container.log';
/** The log is rotated past this size (one older file is kept). */
const LOG_MAX_BYTES = 16 * 1024 * 1024;
/** What the init prints on the console when the exit could not travel over the channel. */
const EXIT_MARKER = /NQVM-CONTAINER-EXIT kind=(exited|signal|unstartable) value=(\d+)/g;

export type ContainerExit = NonNullable<NonNullable<AgentVmReport['container']>['exit']>;

/** One line of a container's output, as kept in `container.log`. */
export interface LogLine {
  /** ms since the epoch, from the guest's clock. */
  ts: number;
  stream: 'stdout' | 'stderr' | 'nqvm';
  line: string;
}

interface ContainerState {
  started_at: string | null;
  finished_at: string | null;
  exit: ContainerExit | null;
  restarts: number;
}

/**
 * Writes the settings drive the container init reads: NUL-separated argv and env, the working
 * directory, the user and the guest agent's token.
 */
export async function writeContainerDrive(
  vmDir: string,
  spec: AgentContainerSpec,
  token: string,
): Promise<string> {
  const file = path.join(vmDir, CONTAINER_DRIVE_FILE);
  const files: Array<[string, string]> = [
    ['argv', spec.argv.map((a) => `${a}\0`).join('')],
    ['env', spec.env.map((e) => `${e}\0`).join('')],
    ['token', `${token}\n`],
  ];
  if (spec.working_dir) files.push(['cwd', spec.working_dir]);
  if (spec.user) files.push(['user', spec.user]);
  await writeVfatImage(file, CONTAINER_DRIVE_LABEL, files);
  return file;
}

export interface ContainerRunEvents {
  line: [LogLine];
  /** The process exited (reported by the guest agent, or found on the console). */
  exit: [ContainerExit];
}

export class ContainerRun extends EventEmitter<ContainerRunEvents> {
  private state: ContainerState = { started_at: null, finished_at: null, exit: null, restarts: 0 };
  /** Whether the process started in the VMM's current run and has not exited. */
  private running = false;
  private writing: Promise<void> = Promise.resolve();

  constructor(private readonly vmDir: string) {
    super();
  }

  /** Reads what an earlier agent recorded. */
  async load(): Promise<void> {
    const saved = (await readJsonFile(path.join(this.vmDir, STATE_FILE)).catch(
      () => null,
    )) as ContainerState | null;
    if (saved) this.state = { ...this.state, ...saved };
    this.running = this.state.started_at !== null && this.state.exit === null;
  }

  report(): NonNullable<AgentVmReport['container']> {
    return { running: this.running, ...this.state };
  }

  get exit(): ContainerExit | null {
    return this.state.exit;
  }

  /** A new VMM run: the last exit is cleared when the process starts again. */
  async booting(byRestartPolicy: boolean): Promise<void> {
    this.running = false;
    if (byRestartPolicy) this.state.restarts++;
    await this.persist();
  }

  /** Listens to a new connection to the guest agent. */
  watch(client: GuestAgentClient): void {
    client.on('log', (r) => this.onLog(r));
    client.on('workload-started', () => {
      this.running = true;
      this.state = { ...this.state, started_at: new Date().toISOString(), finished_at: null, exit: null };
      void this.persist();
    });
    client.on('workload-exit', (e) => {
      void this.onExit(e).then(() => client.ackExit());
    });
  }

  /**
   * The VMM ended: when the guest agent could not tell the exit (the agent was away), the
   * init's console line does; answers the exit, or null when the process never ran to an end.
   */
  async vmmEnded(consoleTail: string): Promise<ContainerExit | null> {
    if (this.running && this.state.exit === null) {
      const found = [...consoleTail.matchAll(EXIT_MARKER)].at(-1);
      if (found)
        await this.onExit({
          kind: found[1] as ContainerExit['kind'],
          value: Number(found[2]),
          ts: Date.now(),
        });
    }
    this.running = false;
    return this.state.exit;
  }

  /** The last `tail` lines (all when undefined), oldest first. */
  async lines(tail?: number): Promise<LogLine[]> {
    await this.writing;
    const read = async (name: string) => readFile(path.join(this.vmDir, name), 'utf8').catch(() => '');
    const text = `${await read(`${LOG_FILE}.1`)}${await read(LOG_FILE)}`;
    const rows = text.split('\n').filter(Boolean);
    const picked = tail === undefined ? rows : tail === 0 ? [] : rows.slice(-tail);
    return picked.flatMap((r) => {
      try {
        return [JSON.parse(r) as LogLine];
      } catch {
        return [];
      }
    });
  }

  private onLog(r: LogRecord): void {
    const line: LogLine = { ts: r.ts, stream: r.stream, line: r.data.toString('utf8') };
    this.writing = this.writing.then(() => this.append(line)).catch(() => {});
    this.emit('line', line);
  }

  private async onExit(e: WorkloadExit): Promise<void> {
    this.running = false;
    this.state = {
      ...this.state,
      exit: { kind: e.kind, value: e.value },
      finished_at: new Date().toISOString(),
    };
    await this.persist();
    this.emit('exit', this.state.exit!);
  }

  private async append(line: LogLine): Promise<void> {
    const file = path.join(this.vmDir, LOG_FILE);
    const size = (await stat(file).catch(() => null))?.size ?? 0;
    if (size > LOG_MAX_BYTES) await rename(file, `${file}.1`);
    await appendFile(file, `${JSON.stringify(line)}\n`, { mode: 0o600 });
  }

  private persist(): Promise<void> {
    const next = this.writing.then(() => writeJsonAtomic(path.join(this.vmDir, STATE_FILE), this.state));
    this.writing = next.catch(() => {});
    return next;
  }
}

/** `2026-12-01T21:10:56.123Z stdout hello`, or `hello` without timestamps. */
export function formatLogLine(l: LogLine, timestamps: boolean): string {
  return timestamps ? `${new Date(l.ts).toISOString()} ${l.stream} ${l.line}\n` : `${l.line}\n`;
}
