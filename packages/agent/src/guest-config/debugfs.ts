/**
 * Reads and edits files inside an ext2/3/4 image with e2fsprogs' debugfs: no mount, no root.
 * Commands go through a command file (`debugfs -f`), so nothing passes through a shell; every
 * path that enters a command is checked against a conservative character set first, because
 * debugfs splits its command lines on white space and reads quotes itself.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { GuestConfigError } from './guest-values';
import { runTool } from './host-tools';

/** Characters a path may hold to appear in a debugfs command unquoted. */
const SAFE_PATH = /^\/[A-Za-z0-9._/+-]*$/;

export interface InodeInfo {
  type: 'regular' | 'directory' | 'symlink' | 'other';
  /** Permission bits, e.g. 0o640. */
  mode: number;
  uid: number;
  gid: number;
}

export interface GuestFileState {
  info: InodeInfo | null;
  /** Contents of a regular file that was asked to be read; null otherwise. */
  text: string | null;
}

/** Throws unless `p` is an absolute path debugfs reads as one argument. */
export function checkDebugfsPath(p: string): string {
  if (!SAFE_PATH.test(p) || p.split('/').some((part) => part === '..')) {
    throw new GuestConfigError(`path ${JSON.stringify(p)} cannot be used in a debugfs command`);
  }
  return p;
}

const TYPE_OF: Record<string, InodeInfo['type']> = {
  regular: 'regular',
  directory: 'directory',
  symlink: 'symlink',
};

/** One `stat` answer of debugfs; null when the command printed nothing (file absent). */
export function parseStat(text: string): InodeInfo | null {
  const typeMode = /Type: (\S+)\s+Mode:\s+([0-7]+)/.exec(text);
  const owner = /User:\s+(\d+)\s+Group:\s+(\d+)/.exec(text);
  if (!typeMode || !owner) return null;
  return {
    type: TYPE_OF[typeMode[1]!] ?? 'other',
    mode: Number.parseInt(typeMode[2]!, 8) & 0o7777,
    uid: Number(owner[1]),
    gid: Number(owner[2]),
  };
}

/** Anything debugfs printed on stderr besides its version banner. */
function complaints(stderr: string): string[] {
  return stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !/^debugfs \d/.test(l));
}

/**
 * An ext4 image opened for a few batched reads and one batched write. Each batch is one
 * debugfs process (a few milliseconds).
 *
 * @example
 * const img = await DebugfsImage.open('/var/lib/nqvm/vms/ID/root.raw');
 * try {
 *   const [passwd] = await img.read(['/etc/passwd']);
 * } finally {
 *   await img.close();
 * }
 */
export class DebugfsImage {
  private files = 0;

  private constructor(
    readonly disk: string,
    private readonly work: string,
  ) {}

  static async open(disk: string): Promise<DebugfsImage> {
    const work = await mkdtemp(path.join(tmpdir(), 'nqvm-debugfs-'));
    if (!SAFE_PATH.test(work)) {
      await rm(work, { recursive: true, force: true });
      // A host problem, not a guest one: never taken for an image that cannot be edited.
      throw new Error(`temporary folder ${work} has characters debugfs would misread: set TMPDIR`);
    }
    return new DebugfsImage(disk, work);
  }

  async close(): Promise<void> {
    await rm(this.work, { recursive: true, force: true });
  }

  private hostFile(): string {
    return path.join(this.work, `f${this.files++}`);
  }

  private async runScript(commands: string[], write: boolean): Promise<{ stdout: string; stderr: string }> {
    const script = this.hostFile();
    await writeFile(script, `${commands.join('\n')}\n`, { mode: 0o600 });
    return runTool('debugfs', [...(write ? ['-w'] : []), '-f', script, this.disk]);
  }

  /** The state of each guest path (and the text of regular files), in one debugfs run. */
  async read(paths: readonly string[]): Promise<GuestFileState[]> {
    const dumps = paths.map(() => this.hostFile());
    const commands = paths.flatMap((p, i) => {
      checkDebugfsPath(p);
      return [`stat ${p}`, `dump ${p} ${dumps[i]}`];
    });
    const { stdout } = await this.runScript(commands, false);
    // With -f, debugfs echoes each command as "debugfs: <command>" before its output.
    const answers = stdout.split(/^debugfs: .*$/m).slice(1);
    return Promise.all(
      paths.map(async (_, i) => {
        const info = parseStat(answers[i * 2] ?? '');
        const text = info?.type === 'regular' ? await readFile(dumps[i]!, 'utf8').catch(() => null) : null;
        return { info, text };
      }),
    );
  }

  /**
   * The entry names of each folder (without `.` and `..`), in one debugfs run; an empty list for
   * a folder that is absent or not a folder.
   */
  async list(dirs: readonly string[]): Promise<string[][]> {
    const { stdout } = await this.runScript(
      dirs.map((d) => `ls -p ${checkDebugfsPath(d)}`),
      false,
    );
    // `ls -p` prints `/inode/mode/uid/gid/name/size/` per entry.
    return stdout
      .split(/^debugfs: .*$/m)
      .slice(1)
      .map((answer) =>
        answer
          .split('\n')
          .map((l) => /^\/\d+\/[0-7]+\/\d+\/\d+\/(.*)\/\d*\/$/.exec(l)?.[1])
          .filter((name): name is string => name !== undefined && name !== '.' && name !== '..'),
      );
  }

  /** Runs edit commands built by GuestEdits; any complaint of debugfs fails the whole batch. */
  async write(commands: readonly string[]): Promise<void> {
    if (commands.length === 0) return;
    const { stderr } = await this.runScript([...commands], true);
    const problems = complaints(stderr);
    if (problems.length) throw new Error(`debugfs refused an edit: ${problems.slice(0, 3).join(' | ')}`);
  }

  /** A host file holding `text`, to be copied in by a `write` command. */
  async stage(text: string): Promise<string> {
    const file = this.hostFile();
    await writeFile(file, text, { mode: 0o600 });
    return file;
  }
}

/** Builds the debugfs commands of one write batch. */
export class GuestEdits {
  readonly commands: string[] = [];
  /** Guest paths created or replaced, for the record. */
  readonly changed: string[] = [];

  constructor(private readonly image: DebugfsImage) {}

  private owner(p: string, typeBits: number, mode: number, uid: number, gid: number): void {
    this.commands.push(
      `set_inode_field ${p} mode 0${(typeBits | mode).toString(8)}`,
      `set_inode_field ${p} uid ${uid}`,
      `set_inode_field ${p} gid ${gid}`,
    );
  }

  /** Replaces (or creates) regular file `p` with `text`, owned and moded as given. */
  async replaceFile(
    p: string,
    existed: boolean,
    text: string,
    meta: { mode: number; uid: number; gid: number },
  ): Promise<void> {
    checkDebugfsPath(p);
    const host = await this.image.stage(text);
    if (existed) this.commands.push(`rm ${p}`);
    this.commands.push(`write ${host} ${p}`);
    this.owner(p, 0o100000, meta.mode, meta.uid, meta.gid);
    this.changed.push(p);
  }

  /** Removes regular file `p`. */
  removeFile(p: string): void {
    checkDebugfsPath(p);
    this.commands.push(`rm ${p}`);
    this.changed.push(p);
  }

  makeDir(p: string, meta: { mode: number; uid: number; gid: number }): void {
    checkDebugfsPath(p);
    this.commands.push(`mkdir ${p}`);
    this.owner(p, 0o040000, meta.mode, meta.uid, meta.gid);
    this.changed.push(p);
  }

  /** Sets mode and owner of an existing directory. */
  setDir(p: string, meta: { mode: number; uid: number; gid: number }): void {
    checkDebugfsPath(p);
    this.owner(p, 0o040000, meta.mode, meta.uid, meta.gid);
  }
}
