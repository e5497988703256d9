import { readdir, readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { runHostBinary } from './host-command';

const MODULE_FILE = /^(.+)\.ko(\.xz|\.zst)?$/;

export interface CollectedModules {
  /** Module name -> uncompressed .ko bytes, in load order. */
  files: Map<string, Buffer>;
  /** Compiled into the kernel: nothing to load. */
  builtin: string[];
  /** Neither a module nor built in: the guest goes without. */
  missing: string[];
}

/** `virtio-rng` and `virtio_rng` name the same module. */
function canonical(name: string): string {
  return name.replaceAll('-', '_');
}

async function walk(dir: string, found: Map<string, string>): Promise<void> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) await walk(path, found);
    else {
      const m = MODULE_FILE.exec(entry.name);
      if (m) found.set(canonical(m[1]!), path);
    }
  }
}

async function readModule(path: string): Promise<Buffer> {
  // Newer Debian kernels ship compressed modules; busybox insmod in the guest wants plain ones.
  if (path.endsWith('.xz')) return runHostBinary('xz', ['-dc', path]);
  if (path.endsWith('.zst')) return runHostBinary('zstd', ['-dcq', path]);
  return readFile(path);
}

/**
 * Picks `names` out of an extracted kernel's `lib/modules/<version>`, skipping those that are
 * built in (listed in modules.builtin) or absent.
 */
export async function collectModules(
  modulesRoot: string,
  names: readonly string[],
): Promise<CollectedModules> {
  const builtinText = await readFile(join(modulesRoot, 'modules.builtin'), 'utf8').catch(() => '');
  const builtinSet = new Set(
    builtinText
      .split('\n')
      .filter(Boolean)
      .map((line) => canonical(basename(line).replace(MODULE_FILE, '$1'))),
  );
  const available = new Map<string, string>();
  await walk(join(modulesRoot, 'kernel'), available);

  const result: CollectedModules = { files: new Map(), builtin: [], missing: [] };
  for (const name of names) {
    const path = available.get(canonical(name));
    if (path) result.files.set(name, await readModule(path));
    else if (builtinSet.has(canonical(name))) result.builtin.push(name);
    else result.missing.push(name);
  }
  return result;
}
