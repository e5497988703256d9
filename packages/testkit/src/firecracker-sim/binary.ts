import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { FirecrackerSimVersion } from './spec';

export interface SimulatorBinaryOptions {
  /** Default journal path baked into the wrapper; FC_SIM_JOURNAL in the environment wins. */
  journal?: string;
  /**
   * Default folder of the guest's vsock listeners (`<dir>/<port>.sock`) baked into the wrapper;
   * NQVM_FC_SIM_GUEST_VSOCK_DIR in the environment wins.
   */
  guestVsockDir?: string;
  /**
   * Test fault baked into the wrapper: the VMM panics (logs the message, dies by SIGABRT
   * without answering) on this request, a route key such as `ACTION InstanceStart` or
   * `PUT /drives/{drive_id}`. NQVM_FC_SIM_PANIC_ON / NQVM_FC_SIM_PANIC_MESSAGE in the
   * environment win.
   */
  panicOn?: { request: string; message?: string };
}

const here = dirname(fileURLToPath(import.meta.url));
const quote = (s: string): string => `'${s.replaceAll("'", `'\\''`)}'`;

function nodeCommand(entry: string): string {
  const tsxLoader = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
  return [process.execPath, '--disable-warning=ExperimentalWarning', '--import', tsxLoader, join(here, entry)]
    .map(quote)
    .join(' ');
}

function envLines(version: FirecrackerSimVersion, opts: SimulatorBinaryOptions): string[] {
  const lines = [`FC_SIM_VERSION=${quote(version)}`, 'export FC_SIM_VERSION'];
  const byDefault = (name: string, value: string | undefined) => {
    // Single-quoted, the value is taken as it is (a `}` in it would end a `${NAME:=...}`).
    if (value) lines.push(`[ -n "\${${name}:-}" ] || ${name}=${quote(value)}`, `export ${name}`);
  };
  byDefault('FC_SIM_JOURNAL', opts.journal);
  byDefault('NQVM_FC_SIM_GUEST_VSOCK_DIR', opts.guestVsockDir);
  byDefault('NQVM_FC_SIM_PANIC_ON', opts.panicOn?.request);
  byDefault('NQVM_FC_SIM_PANIC_MESSAGE', opts.panicOn?.message);
  return lines;
}

async function writeExecutable(path: string, lines: string[]): Promise<string> {
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, `${lines.join('\n')}\n`);
  await chmod(path, 0o755);
  return path;
}

/**
 * Writes `<dir>/firecracker-v<version>`, an executable that behaves like that Firecracker
 * release (test tooling: a shell wrapper exec'ing node with the tsx loader on the simulator).
 *
 * @example
 * const bin = await writeSimulatorBinary(tmp, '1.13.1');
 * spawn(bin, ['--api-sock', sock], { stdio: [fifoFd, logFd, logFd] });
 */
export async function writeSimulatorBinary(
  dir: string,
  version: FirecrackerSimVersion,
  opts: SimulatorBinaryOptions = {},
): Promise<string> {
  return writeExecutable(join(dir, `firecracker-v${version}`), [
    '#!/bin/sh',
    `# nqvm test tooling: Firecracker v${version} simulator`,
    ...envLines(version, opts),
    // A panic aborts the process: no core file.
    'ulimit -c 0',
    `exec ${nodeCommand('main.ts')} "$@"`,
  ]);
}

/**
 * Writes `<dir>/jailer-v<version>`, a jailer simulator: it stages the chroot like the real
 * jailer, then execs the Firecracker binary given by `--exec-file` (same pid, same stdio) with
 * FC_SIM_ROOT pointing at the chroot.
 */
export async function writeJailerBinary(
  dir: string,
  version: FirecrackerSimVersion,
  opts: SimulatorBinaryOptions = {},
): Promise<string> {
  return writeExecutable(join(dir, `jailer-v${version}`), [
    '#!/bin/sh',
    `# nqvm test tooling: jailer v${version} simulator`,
    ...envLines(version, opts),
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a shell parameter expansion
    'plan=$(mktemp "${TMPDIR:-/tmp}/fc-jailer-plan.XXXXXX") || exit 1',
    `${nodeCommand('jailer-main.ts')} --plan-file "$plan" "$@" || { rc=$?; rm -f "$plan"; exit $rc; }`,
    'exec /bin/sh "$plan"',
  ]);
}
