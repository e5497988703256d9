/**
 * Shared pieces of the guest configuration tests: small ext4 images built from a file tree, and
 * the real consumers of network configuration files, run on this machine (Debian packages of
 * scripts/debian-packages-test.txt): cloud-init's renderers, ifupdown's `ifquery`, netplan's
 * generator and NetworkManager's keyfile reader (libnm).
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Runs `fn` in a scratch folder removed afterwards. */
async function inScratch<T>(prefix: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(path.join(tmpdir(), prefix));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Every regular file under `root`, by path relative to it. */
export async function filesUnder(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const entry of await readdir(root, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const file = path.join(entry.parentPath, entry.name);
    out[path.relative(root, file)] = await readFile(file, 'utf8');
  }
  return out;
}

/** A tree entry: a file's text, a folder, or a symbolic link. */
export type TreeEntry = string | { dir: true } | { link: string };

/**
 * A 16 MiB ext4 image holding `tree` (guest paths to entries), built with mkfs.ext4 -d.
 *
 * @example
 * const img = await ext4Image(dir, { '/etc/passwd': 'root:x:0:0::/root:/bin/sh\n', '/sbin': { link: 'usr/sbin' } });
 */
export async function ext4Image(dir: string, tree: Record<string, TreeEntry>): Promise<string> {
  const root = await mkdtemp(path.join(dir, 'tree-'));
  for (const [guestPath, entry] of Object.entries(tree)) {
    const at = path.join(root, guestPath);
    await mkdir(path.dirname(at), { recursive: true });
    if (typeof entry === 'string') await writeFile(at, entry);
    else if ('dir' in entry) await mkdir(at, { recursive: true });
    else await symlink(entry.link, at);
  }
  const img = `${root}.ext4`;
  await run('truncate', ['-s', '16M', img]);
  await run('mkfs.ext4', ['-q', '-F', '-E', 'root_owner=0:0', '-d', root, img]);
  return img;
}

/** The text of a guest file (debugfs `cat`). */
export async function guestFile(img: string, p: string): Promise<string> {
  return (await run('debugfs', ['-R', `cat ${p}`, img])).stdout;
}

/** Permission bits and owner of a guest path, e.g. `{ mode: 0o600, uid: 0, gid: 0 }`; null when absent. */
export async function guestMeta(
  img: string,
  p: string,
): Promise<{ mode: number; uid: number; gid: number } | null> {
  const out = (await run('debugfs', ['-R', `stat ${p}`, img])).stdout;
  const m = /Mode:\s+([0-7]+)/.exec(out);
  const o = /User:\s+(\d+)\s+Group:\s+(\d+)/.exec(out);
  if (!m || !o) return null;
  return { mode: Number.parseInt(m[1]!, 8), uid: Number(o[1]), gid: Number(o[2]) };
}

export type CloudInitRenderer = 'eni' | 'netplan' | 'networkd' | 'network-manager';

/**
 * What Debian's cloud-init writes for `networkConfig` with `renderer`, offline (`cloud-init devel
 * net-convert`): the files under its output folder, by relative path.
 */
export async function cloudInitRender(
  networkConfig: string,
  renderer: CloudInitRenderer,
): Promise<Record<string, string>> {
  return inScratch('nqvm-cloud-init-', async (dir) => {
    const input = path.join(dir, 'network-config');
    await writeFile(input, networkConfig);
    const out = path.join(dir, 'out');
    const args = [
      'devel',
      'net-convert',
      '-p',
      input,
      '-k',
      'yaml',
      '-D',
      'debian',
      '-O',
      renderer,
      '-d',
      out,
    ];
    await run('cloud-init', args);
    return filesUnder(out);
  });
}

/** ifupdown's own reading of logical interface `name` in an interfaces(5) file: option -> value. */
export async function ifquery(interfacesText: string, name: string): Promise<Record<string, string>> {
  const { stdout } = await inScratch('nqvm-ifquery-', async (dir) => {
    const file = path.join(dir, 'interfaces');
    await writeFile(file, interfacesText);
    return run('ifquery', ['-i', file, '--state-dir', dir, name]);
  });
  return Object.fromEntries(
    stdout
      .split('\n')
      .filter((l) => l.includes(': '))
      .map((l) => [l.slice(0, l.indexOf(': ')), l.slice(l.indexOf(': ') + 2)]),
  );
}

/**
 * netplan's generator run on these /etc/netplan files (name -> YAML) in a scratch root: the
 * networkd files it writes (name -> text) and its warnings. Rejects when netplan refuses them.
 */
export async function netplanGenerate(
  yamlFiles: Record<string, string>,
): Promise<{ networkd: Record<string, string>; stderr: string }> {
  return inScratch('nqvm-netplan-', async (root) => {
    await mkdir(path.join(root, 'etc/netplan'), { recursive: true });
    for (const [name, text] of Object.entries(yamlFiles)) {
      await writeFile(path.join(root, 'etc/netplan', name), text, { mode: 0o600 });
    }
    const { stderr } = await run('netplan', ['generate', '--root-dir', root]);
    return { networkd: await filesUnder(path.join(root, 'run/systemd/network')), stderr };
  });
}

export interface NmProfile {
  id: string;
  type: string;
  mac: string | null;
  interface: string | null;
  method: string;
  addresses: string[];
  gateway: string | null;
  dns: string[];
}

/** libnm's keyfile reader, then its validation (`normalize`), through Python's GObject bindings. */
const NM_READ = `
import json, sys, gi
gi.require_version('NM', '1.0')
from gi.repository import GLib, NM
kf = GLib.KeyFile()
kf.load_from_file(sys.argv[1], GLib.KeyFileFlags.NONE)
c = NM.keyfile_read(kf, '/', NM.KeyfileHandlerFlags.NONE, None, None)
c.normalize()
ip4 = c.get_setting_ip4_config()
wired = c.get_setting_wired()
addresses = [ip4.get_address(i) for i in range(ip4.get_num_addresses())]
print(json.dumps({
  'id': c.get_id(), 'type': c.get_connection_type(),
  'mac': wired.get_mac_address() if wired else None, 'interface': c.get_interface_name(),
  'method': ip4.get_method(), 'addresses': ['%s/%d' % (a.get_address(), a.get_prefix()) for a in addresses],
  'gateway': ip4.get_gateway(), 'dns': [ip4.get_dns(i) for i in range(ip4.get_num_dns())],
}))
`;

/** A NetworkManager keyfile as NetworkManager reads it; rejects a profile it finds invalid. */
export async function readNmKeyfile(text: string): Promise<NmProfile> {
  const { stdout } = await inScratch('nqvm-nm-', async (dir) => {
    const file = path.join(dir, 'profile.nmconnection');
    await writeFile(file, text, { mode: 0o600 });
    // The system's Python: the GObject bindings are Debian's, not in another interpreter on PATH.
    return run('/usr/bin/python3', ['-c', NM_READ, file]);
  });
  return JSON.parse(stdout) as NmProfile;
}
