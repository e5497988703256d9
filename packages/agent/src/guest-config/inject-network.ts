/**
 * The network part of injection: find the network stack the image runs (netplan,
 * NetworkManager, systemd-networkd, ifupdown), and when the image configures no interface of
 * its own, write nqvm's configuration for each NIC (the assigned address, or DHCP), matched
 * by MAC. nqvm's own files are recognised by their names and rewritten on the next injection.
 */
import type { DebugfsImage, GuestEdits, GuestFileState } from './debugfs';
import type { GuestNic } from './guest-network';
import {
  ifupdownConfig,
  netplanConfig,
  networkdConfig,
  networkManagerConfig,
  nicConfigName,
  resolvConf,
} from './network-files';

export type NetworkStack = 'netplan' | 'NetworkManager' | 'systemd-networkd' | 'ifupdown';

const WANTS = '/etc/systemd/system/multi-user.target.wants';
const NETPLAN_DIR = '/etc/netplan';
const NETPLAN_FILE = `${NETPLAN_DIR}/90-nqvm.yaml`;
const NM_DIR = '/etc/NetworkManager/system-connections';
const NETWORKD_DIR = '/etc/systemd/network';
const ENI_FILE = '/etc/network/interfaces';
const ENI_DIR = '/etc/network/interfaces.d';
/** `source-directory` reads only names like this one: no dot. */
const ENI_OURS = `${ENI_DIR}/nqvm`;

/** What is probed in the image, in one debugfs run. */
const PROBES = {
  netplan: '/usr/sbin/netplan',
  netplanDir: NETPLAN_DIR,
  nm: '/usr/sbin/NetworkManager',
  nmDir: '/etc/NetworkManager',
  nmEnabled: `${WANTS}/NetworkManager.service`,
  networkd: '/lib/systemd/systemd-networkd',
  networkdEnabled: `${WANTS}/systemd-networkd.service`,
  ifup: '/sbin/ifup',
  eni: ENI_FILE,
  eniDir: ENI_DIR,
  eniOurs: ENI_OURS,
  cloudInit: '/usr/bin/cloud-init',
  resolvConf: '/etc/resolv.conf',
  resolvconfTool: '/sbin/resolvconf',
  resolvedEnabled: `${WANTS}/systemd-resolved.service`,
} as const;

type Probe = keyof typeof PROBES;
type Found = Record<Probe, GuestFileState>;

const ROOT_FILE = { mode: 0o644, uid: 0, gid: 0 };
const ROOT_SECRET = { mode: 0o600, uid: 0, gid: 0 };
const ROOT_DIR = { mode: 0o755, uid: 0, gid: 0 };

function present(s: GuestFileState): boolean {
  return s.info !== null;
}

/**
 * The stack that brings the image's interfaces up: netplan when installed (it drives networkd
 * or NetworkManager); else NetworkManager or systemd-networkd when enabled (Debian keeps
 * ifupdown beside them for loopback); else Debian's ifupdown (busybox's `ifup` is a symbolic
 * link, and knows no MAC patterns).
 */
function pickStack(found: Found): NetworkStack | null {
  const dir = (s: GuestFileState) => s.info?.type === 'directory';
  if (present(found.netplan) && dir(found.netplanDir)) return 'netplan';
  if (present(found.nm) && dir(found.nmDir) && present(found.nmEnabled)) return 'NetworkManager';
  if (present(found.networkd) && present(found.networkdEnabled)) return 'systemd-networkd';
  if (found.ifup.info?.type === 'regular' && found.eni.info?.type === 'regular') return 'ifupdown';
  return null;
}

/** `iface NAME` stanzas other than loopback: the image configures that interface itself. */
function ifupdownInterfaces(text: string): string[] {
  return [...text.matchAll(/^\s*iface\s+(\S+)/gm)].map((m) => m[1]!).filter((n) => n !== 'lo');
}

/** Whether /etc/network/interfaces reads the files of interfaces.d (Debian's default does). */
function sourcesInterfacesD(text: string): boolean {
  return /^\s*(source\s+(\/etc\/network\/)?interfaces\.d\/\*|source-directory\s+(\/etc\/network\/)?interfaces\.d\/?)\s*$/m.test(
    text,
  );
}

export interface NetworkInjection {
  stack: NetworkStack | null;
  /** Why nothing (or only part) was written. */
  notes: string[];
}

/** Files of one directory: which are nqvm's, which the image's own. */
async function split(
  image: DebugfsImage,
  dir: string,
  ours: (name: string) => boolean,
  relevant: (name: string) => boolean,
): Promise<{ ours: string[]; theirs: string[] }> {
  const [names] = await image.list([dir]);
  const files = names!.filter(relevant);
  return { ours: files.filter(ours).map((n) => `${dir}/${n}`), theirs: files.filter((n) => !ours(n)) };
}

/**
 * Queues writing `want` (path -> text) into `dir` (made when absent and needed), and removing
 * nqvm's files of `had` no longer wanted.
 */
async function replaceOurs(
  image: DebugfsImage,
  edits: GuestEdits,
  dir: string,
  had: readonly string[],
  want: ReadonlyMap<string, string>,
  meta: { mode: number; uid: number; gid: number },
): Promise<void> {
  const paths = [...want.keys()];
  if (paths.length) {
    const [folder, ...states] = await image.read([dir, ...paths]);
    if (!folder!.info) edits.makeDir(dir, ROOT_DIR);
    for (const [i, p] of paths.entries()) {
      const { info, text } = states[i]!;
      if (info && info.type !== 'regular') continue;
      const same = info !== null && text === want.get(p) && info.mode === meta.mode && info.uid === meta.uid;
      if (!same) await edits.replaceFile(p, info !== null, want.get(p)!, meta);
    }
  }
  for (const p of had) if (!want.has(p)) edits.removeFile(p);
}

/** What a stack's writer answers: the image's own configuration that stopped it, or null. */
type Theirs = string | null;

async function writeNetplan(
  image: DebugfsImage,
  edits: GuestEdits,
  nics: readonly GuestNic[],
): Promise<Theirs> {
  const files = await split(
    image,
    NETPLAN_DIR,
    (n) => `${NETPLAN_DIR}/${n}` === NETPLAN_FILE,
    (n) => /\.ya?ml$/.test(n),
  );
  if (files.theirs.length) return `${NETPLAN_DIR}/${files.theirs[0]}`;
  const want = new Map(nics.length ? [[NETPLAN_FILE, netplanConfig(nics)]] : []);
  // netplan warns about (and newer ones refuse) a file others can read.
  await replaceOurs(image, edits, NETPLAN_DIR, files.ours, want, ROOT_SECRET);
  return null;
}

async function writeNetworkManager(
  image: DebugfsImage,
  edits: GuestEdits,
  nics: readonly GuestNic[],
): Promise<Theirs> {
  const files = await split(
    image,
    NM_DIR,
    (n) => /^nqvm-[a-z0-9]+\.nmconnection$/.test(n),
    () => true,
  );
  if (files.theirs.length) return `${NM_DIR}/${files.theirs[0]}`;
  const want = new Map(
    nics.map((n) => [`${NM_DIR}/${nicConfigName(n)}.nmconnection`, networkManagerConfig(n)]),
  );
  // NetworkManager ignores a keyfile that is not root's and private.
  await replaceOurs(image, edits, NM_DIR, files.ours, want, ROOT_SECRET);
  return null;
}

async function writeNetworkd(
  image: DebugfsImage,
  edits: GuestEdits,
  nics: readonly GuestNic[],
): Promise<Theirs> {
  const files = await split(
    image,
    NETWORKD_DIR,
    (n) => /^10-nqvm-[a-z0-9]+\.network$/.test(n),
    (n) => n.endsWith('.network'),
  );
  if (files.theirs.length) return `${NETWORKD_DIR}/${files.theirs[0]}`;
  const want = new Map(
    nics.map((n) => [`${NETWORKD_DIR}/10-${nicConfigName(n)}.network`, networkdConfig(n)]),
  );
  await replaceOurs(image, edits, NETWORKD_DIR, files.ours, want, ROOT_FILE);
  return null;
}

async function writeIfupdown(
  image: DebugfsImage,
  edits: GuestEdits,
  nics: readonly GuestNic[],
  found: Found,
): Promise<Theirs> {
  if (found.eniDir.info && found.eniDir.info.type !== 'directory')
    return `${ENI_DIR} is a ${found.eniDir.info.type}`;
  const [names] = await image.list([ENI_DIR]);
  const others = names!.filter((n) => `${ENI_DIR}/${n}` !== ENI_OURS).map((n) => `${ENI_DIR}/${n}`);
  const texts = others.length ? await image.read(others) : [];
  const configured = [found.eni, ...texts].flatMap((t) => ifupdownInterfaces(t.text ?? ''));
  if (configured.length) return `iface ${configured[0]}`;
  const eni = found.eni.text ?? '';
  if (nics.length && !sourcesInterfacesD(eni) && !eni.split('\n').includes(`source ${ENI_OURS}`)) {
    const { mode, uid, gid } = found.eni.info!;
    const text = `${eni}${eni === '' || eni.endsWith('\n') ? '' : '\n'}source ${ENI_OURS}\n`;
    await edits.replaceFile(ENI_FILE, true, text, { mode, uid, gid });
  }
  const want = new Map(nics.length ? [[ENI_OURS, ifupdownConfig(nics)]] : []);
  await replaceOurs(image, edits, ENI_DIR, found.eniOurs.info ? [ENI_OURS] : [], want, ROOT_FILE);
  return null;
}

/**
 * /etc/resolv.conf with the static NICs' resolvers, where nothing else writes it: ifupdown
 * without resolvconf, networkd without resolved (NetworkManager and netplan's backends do).
 */
async function writeResolvers(
  edits: GuestEdits,
  nics: readonly GuestNic[],
  stack: NetworkStack,
  found: Found,
): Promise<string[]> {
  const resolvers = resolvConf(nics);
  const managed =
    stack === 'NetworkManager' ||
    stack === 'netplan' ||
    (stack === 'ifupdown' && present(found.resolvconfTool)) ||
    (stack === 'systemd-networkd' && present(found.resolvedEnabled));
  const { info, text } = found.resolvConf;
  if (!resolvers || managed || text === resolvers) return [];
  if (info && info.type !== 'regular') return [`/etc/resolv.conf is a ${info.type}: resolvers not written`];
  const meta = info ? { mode: info.mode, uid: info.uid, gid: info.gid } : ROOT_FILE;
  await edits.replaceFile(PROBES.resolvConf, info !== null, resolvers, meta);
  return [];
}

/**
 * Queues the network configuration of `nics` for the image's stack. `mode` auto leaves an image
 * with cloud-init alone: cloud-init configures it from the config drive.
 *
 * @example
 * const { stack, notes } = await injectNetwork(image, edits, nics, 'inject');
 */
export async function injectNetwork(
  image: DebugfsImage,
  edits: GuestEdits,
  nics: readonly GuestNic[],
  mode: 'auto' | 'inject',
): Promise<NetworkInjection> {
  const probes = Object.keys(PROBES) as Probe[];
  const states = await image.read(probes.map((p) => PROBES[p]));
  const found = Object.fromEntries(probes.map((p, i) => [p, states[i]!])) as Found;
  const stack = pickStack(found);
  const skipped = (why: string): NetworkInjection => ({
    stack,
    notes: nics.length ? [`network not written: ${why}`] : [],
  });
  if (mode === 'auto' && present(found.cloudInit)) {
    return skipped('cloud-init in the image configures it from the config drive');
  }
  if (stack === null) {
    return skipped('no netplan, NetworkManager, systemd-networkd or ifupdown found in the image');
  }
  const theirs =
    stack === 'netplan'
      ? await writeNetplan(image, edits, nics)
      : stack === 'NetworkManager'
        ? await writeNetworkManager(image, edits, nics)
        : stack === 'systemd-networkd'
          ? await writeNetworkd(image, edits, nics)
          : await writeIfupdown(image, edits, nics, found);
  if (theirs !== null) return skipped(`the image configures its interfaces itself (${theirs})`);
  return { stack, notes: await writeResolvers(edits, nics, stack, found) };
}
