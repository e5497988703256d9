import { execFile } from 'node:child_process';

export class HostCommandError extends Error {
  constructor(
    readonly command: string,
    readonly args: readonly string[],
    readonly exitCode: number | null,
    readonly stderr: string,
  ) {
    super(
      `${command} ${args.join(' ')} failed (exit ${exitCode ?? 'signal'}): ${stderr.trim().slice(-2000)}`,
    );
    this.name = 'HostCommandError';
  }
}

/**
 * Runs a host program with an argument array (never a shell) and returns its stdout.
 * `LC_ALL=C` keeps apt and dpkg output parseable.
 */
export function runHost(
  command: string,
  args: readonly string[],
  opts: { cwd?: string; encoding?: 'utf8' } = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      command,
      args,
      {
        cwd: opts.cwd,
        env: { ...process.env, LC_ALL: 'C', DEBIAN_FRONTEND: 'noninteractive' },
        maxBuffer: 256 * 1024 * 1024,
        encoding: 'utf8',
      },
      (err, stdout, stderr) => {
        if (!err) return resolve(stdout);
        const code = typeof err.code === 'number' ? err.code : null;
        reject(new HostCommandError(command, args, code, stderr || err.message));
      },
    );
  });
}

/** Like {@link runHost} but returns stdout as bytes (for decompressing modules). */
export function runHostBinary(command: string, args: readonly string[]): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { encoding: 'buffer', maxBuffer: 256 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const code = typeof err.code === 'number' ? err.code : null;
      reject(new HostCommandError(command, args, code, stderr.toString() || err.message));
    });
  });
}
