/**
 * The one way guest-config code runs a host tool (mkfs.vfat, mcopy, debugfs, e2fsck): an
 * argument array through execFile, never a shell, with a bounded run time and an error that
 * says which tool failed and why.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const exec = promisify(execFile);
const TOOL_TIMEOUT_MS = 60_000;

export interface ToolResult {
  stdout: string;
  stderr: string;
}

export class HostToolError extends Error {
  constructor(
    readonly tool: string,
    readonly code: number | null,
    readonly stderr: string,
    detail: string,
  ) {
    super(`${tool} failed: ${detail}`);
    this.name = 'HostToolError';
  }
}

/** Last few lines of a tool's complaint, on one line. */
function brief(text: string): string {
  return text.trim().split('\n').slice(-3).join(' | ');
}

/**
 * Runs `tool` with `args`; resolves with its output, rejects with a HostToolError on a non-zero
 * exit unless `okCodes` lists that code.
 *
 * @example
 * const { stdout } = await runTool('debugfs', ['-R', 'cat /etc/passwd', disk]);
 */
export async function runTool(
  tool: string,
  args: readonly string[],
  opts: { okCodes?: readonly number[] } = {},
): Promise<ToolResult> {
  try {
    const { stdout, stderr } = await exec(tool, [...args], {
      timeout: TOOL_TIMEOUT_MS,
      maxBuffer: 16 * 1024 * 1024,
      encoding: 'utf8',
    });
    return { stdout, stderr };
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string; message: string };
    if (typeof e.code === 'number' && opts.okCodes?.includes(e.code)) {
      return { stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
    }
    const code = typeof e.code === 'number' ? e.code : null;
    throw new HostToolError(tool, code, e.stderr ?? '', brief(e.stderr || e.message));
  }
}
