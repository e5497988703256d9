/**
 * Files under the agent's state directory: `identity.json`, and per VM `vms/<uuid>/` holding
 * `desired.json` (the last accepted command), `run.json` (the driver's RunRecord while a VMM
 * runs), the VM's own disk and whatever the driver keeps there (sockets, console log).
 * Every host path derives from a validated UUID, never from request text.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export const DESIRED_FILE = 'desired.json';
export const RUN_FILE = 'run.json';

export function isVmId(id: string): boolean {
  return UUID.test(id);
}

/** `<stateDir>/vms/<id>`; throws on anything but a lowercase UUID. */
export function vmDirOf(stateDir: string, id: string): string {
  if (!isVmId(id)) throw new Error(`not a VM id: ${JSON.stringify(id)}`);
  return path.join(stateDir, 'vms', id);
}

/** Ids of the VM folders under the state directory. */
export async function listVmIds(stateDir: string): Promise<string[]> {
  const entries = await readdir(path.join(stateDir, 'vms'), { withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isDirectory() && isVmId(e.name)).map((e) => e.name);
}

/** Writes JSON through a temporary file and a rename, so a crash never leaves half a file. */
export async function writeJsonAtomic(file: string, value: unknown, mode = 0o600): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await writeFile(tmp, `${JSON.stringify(value, null, 2)}\n`, { mode, flag: 'wx' });
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** The parsed file, or null when it does not exist. Throws on unreadable or invalid JSON. */
export async function readJsonFile(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  return JSON.parse(text);
}

/** Removes every entry of `dir` whose name is not in `keep`. */
export async function clearDir(dir: string, keep: ReadonlySet<string>): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[]);
  await Promise.all(
    names.filter((n) => !keep.has(n)).map((n) => rm(path.join(dir, n), { recursive: true, force: true })),
  );
}
