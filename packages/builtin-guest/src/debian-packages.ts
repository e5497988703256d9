import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { HostCommandError, runHost } from './host-command';
import type { BusyboxSource, DebianPackage } from './recipe';

const KERNEL_META_PACKAGE = 'linux-image-cloud-amd64';
const BUSYBOX_PACKAGE = 'busybox-static';
/** Where the busybox-static package puts its binary. */
export const HOST_BUSYBOX = '/bin/busybox';

/** apt could not find or fetch a package: `apt-get update` may fix it. */
export class PackageUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PackageUnavailableError';
  }
}

export interface ResolvedPackages {
  kernel: DebianPackage;
  busybox: BusyboxSource;
}

type Stanza = Record<string, string>;

function parseStanzas(text: string): Stanza[] {
  return text
    .split(/\n\s*\n/)
    .map((block) => {
      const stanza: Stanza = {};
      for (const line of block.split('\n')) {
        const m = /^([A-Za-z0-9-]+):\s*(.*)$/.exec(line);
        if (m) stanza[m[1]!] = m[2]!;
      }
      return stanza;
    })
    .filter((s) => s.Package);
}

/** `linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)` -> its name and pinned version. */
function parseKernelDependency(depends: string): { name: string; version?: string } | undefined {
  for (const alternative of depends.split(/[,|]/)) {
    const m = /^\s*(linux-image-[^\s(]+)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?/.exec(alternative);
    if (m) return { name: m[1]!, version: m[2] };
  }
  return undefined;
}

async function aptCacheShow(packages: readonly string[]): Promise<Map<string, Stanza>> {
  let out: string;
  try {
    out = await runHost('apt-cache', ['show', '--no-all-versions', ...packages]);
  } catch (err) {
    throw new PackageUnavailableError(`apt-cache does not know ${packages.join(', ')}`, { cause: err });
  }
  return new Map(parseStanzas(out).map((s) => [s.Package!, s]));
}

async function installedVersion(pkg: string): Promise<string | undefined> {
  try {
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a dpkg-query format, not a JS template
    const out = await runHost('dpkg-query', ['-W', '-f', '${Status}\t${Version}', pkg]);
    const [status, version] = out.split('\t');
    return status === 'install ok installed' && version ? version : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The concrete kernel package behind `linux-image-cloud-amd64` and the busybox-static to use:
 * the installed one if present, else the candidate to download.
 */
export async function resolvePackages(): Promise<ResolvedPackages> {
  const [stanzas, busyboxInstalled] = await Promise.all([
    aptCacheShow([KERNEL_META_PACKAGE, BUSYBOX_PACKAGE]),
    installedVersion(BUSYBOX_PACKAGE),
  ]);
  const meta = stanzas.get(KERNEL_META_PACKAGE);
  const dep = meta?.Depends ? parseKernelDependency(meta.Depends) : undefined;
  if (!dep) throw new PackageUnavailableError(`${KERNEL_META_PACKAGE} has no linux-image dependency`);
  let kernelVersion = dep.version;
  if (!kernelVersion) kernelVersion = (await aptCacheShow([dep.name])).get(dep.name)?.Version;
  if (!kernelVersion) throw new PackageUnavailableError(`no candidate version for ${dep.name}`);

  const busybox: BusyboxSource = busyboxInstalled
    ? { name: BUSYBOX_PACKAGE, version: busyboxInstalled, from: 'host' }
    : { name: BUSYBOX_PACKAGE, version: stanzas.get(BUSYBOX_PACKAGE)?.Version ?? '', from: 'download' };
  if (!busybox.version) throw new PackageUnavailableError(`no candidate version for ${BUSYBOX_PACKAGE}`);
  return { kernel: { name: dep.name, version: kernelVersion }, busybox };
}

/** `apt-get download` one exact package version into `dir` and returns the .deb path. */
export async function downloadPackage(pkg: DebianPackage, dir: string): Promise<string> {
  try {
    await runHost('apt-get', ['download', '-q', `${pkg.name}=${pkg.version}`], { cwd: dir });
  } catch (err) {
    throw new PackageUnavailableError(`cannot download ${pkg.name}=${pkg.version}`, { cause: err });
  }
  const deb = (await readdir(dir)).find((f) => f.startsWith(`${pkg.name}_`) && f.endsWith('.deb'));
  if (!deb) throw new PackageUnavailableError(`apt-get download left no .deb for ${pkg.name} in ${dir}`);
  return join(dir, deb);
}

/** Unpacks a .deb without installing it. */
export async function extractPackage(deb: string, dir: string): Promise<void> {
  await runHost('dpkg', ['-x', deb, dir]);
}

/** Refreshes the package lists; only called after a lookup or download failed. */
export async function updatePackageLists(): Promise<void> {
  try {
    await runHost('apt-get', ['update', '-q']);
  } catch (err) {
    if (err instanceof HostCommandError) {
      throw new PackageUnavailableError(`apt-get update failed: ${err.stderr.trim()}`, { cause: err });
    }
    throw err;
  }
}

/**
 * Changes whenever `apt-get update`, a package install or a new /bin/busybox could change what
 * {@link resolvePackages} answers, so its answer can be cached (apt-cache takes about 0.6 s).
 */
export async function aptStateFingerprint(): Promise<string> {
  const paths = ['/var/lib/apt/lists', '/var/lib/dpkg/status', '/etc/apt', HOST_BUSYBOX];
  const stamps = await Promise.all(
    paths.map((p) =>
      stat(p).then(
        (s) => `${p}@${s.mtimeMs}:${s.size}`,
        () => `${p}@none`,
      ),
    ),
  );
  return stamps.join(' ');
}
