/**
 * Offline guest configuration for images without cloud-init: host name, the account with its
 * password hash and SSH keys, and the network configuration of the image's own network stack,
 * written into the VM's ext4 root disk with debugfs before boot.
 * Idempotent: a second run with the same settings finds nothing to change.
 */
import { open } from 'node:fs/promises';
import type { AgentGuestConfig } from '@nqvm/api';
import { checkDebugfsPath, DebugfsImage, GuestEdits, type GuestFileState } from './debugfs';
import { type GuestNic, guestNics } from './guest-network';
import { authorizedKeys, checkGuestConfig, GuestConfigError, guestAccount } from './guest-values';
import { runTool } from './host-tools';
import { injectNetwork, type NetworkStack } from './inject-network';

export interface InjectResult {
  /** Guest paths created, replaced or removed; empty when the disk already held these settings. */
  changed: string[];
  /** The network stack found in the image; null when none was. */
  networkStack: NetworkStack | null;
  /** What was left out, and why. */
  notes: string[];
}

const FIRST_UID = 1000;
const LAST_UID = 59_999;
const DAY_MS = 86_400_000;
const SUDO_GROUPS = ['sudo', 'wheel'];

/** One line of /etc/passwd, /etc/group or /etc/shadow, split on ':'. */
type Row = string[];

function rows(text: string | null): Row[] {
  return (text ?? '')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => l.split(':'));
}

function render(table: Row[]): string {
  return table.map((r) => `${r.join(':')}\n`).join('');
}

/** The lowest id >= 1000 above every id in use in that range. */
function nextId(used: number[]): number {
  const inRange = used.filter((n) => n >= FIRST_UID && n <= LAST_UID);
  const id = inRange.length ? Math.max(...inRange) + 1 : FIRST_UID;
  if (id > LAST_UID) throw new GuestConfigError(`no free id between ${FIRST_UID} and ${LAST_UID}`);
  return id;
}

/** /etc/hosts with one `127.0.1.1` line naming the host, as Debian's installer writes it. */
export function hostsWithName(current: string | null, hostname: string): string {
  const short = hostname.split('.')[0]!;
  const names = short === hostname ? hostname : `${hostname} ${short}`;
  const lines = (current ?? '127.0.0.1\tlocalhost\n')
    .split('\n')
    .filter((l) => !/^\s*127\.0\.1\.1\s/.test(l));
  while (lines.length && lines[lines.length - 1] === '') lines.pop();
  const at = lines.findIndex((l) => /^\s*127\.0\.0\.1\s/.test(l));
  lines.splice(at + 1, 0, `127.0.1.1\t${names}`);
  return `${lines.join('\n')}\n`;
}

interface Account {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

/** Settings of the account in passwd/group/shadow, edited in memory. */
interface AccountTables {
  passwd: Row[];
  group: Row[];
  shadow: Row[];
}

function ensureAccount(t: AccountTables, name: string, shell: string): Account {
  const existing = t.passwd.find((r) => r[0] === name);
  if (existing) {
    const uid = Number(existing[2]);
    const gid = Number(existing[3]);
    if (!Number.isInteger(uid) || !Number.isInteger(gid)) {
      throw new GuestConfigError(`/etc/passwd holds an unreadable entry for ${name}`);
    }
    return { name, uid, gid, home: existing[5] || '/' };
  }
  if (name === 'root') throw new GuestConfigError('the image has no root account in /etc/passwd');
  const uid = nextId(t.passwd.map((r) => Number(r[2])));
  let gid: number;
  const ownGroup = t.group.find((r) => r[0] === name);
  if (ownGroup) gid = Number(ownGroup[2]);
  else {
    const usedGids = t.group.map((r) => Number(r[2]));
    gid = usedGids.includes(uid) ? nextId(usedGids) : uid;
    t.group.push([name, 'x', String(gid), '']);
  }
  const home = `/home/${name}`;
  t.passwd.push([name, 'x', String(uid), String(gid), '', home, shell]);
  return { name, uid, gid, home };
}

function setPassword(t: AccountTables, name: string, hash: string | null, today: number): void {
  const row = t.shadow.find((r) => r[0] === name);
  if (!row) {
    // `*`: no password, yet not "locked" (OpenSSH refuses key logins to accounts locked with `!`).
    t.shadow.push([name, hash ?? '*', String(today), '0', '99999', '7', '', '', '']);
    return;
  }
  if (hash === null || row[1] === hash) return;
  while (row.length < 9) row.push('');
  row[1] = hash;
  row[2] = String(today);
}

function addToSudoGroup(t: AccountTables, name: string): void {
  const group = SUDO_GROUPS.map((g) => t.group.find((r) => r[0] === g)).find((r) => r !== undefined);
  if (!group) return;
  while (group.length < 4) group.push('');
  const members = group[3]!.split(',').filter(Boolean);
  if (!members.includes(name)) group[3] = [...members, name].join(',');
}

function keysFile(current: string | null, keys: readonly string[]): string {
  const lines = (current ?? '').split('\n').filter((l) => l.trim() !== '');
  for (const k of keys) if (!lines.includes(k)) lines.push(k);
  return `${lines.map((l) => `${l}\n`).join('')}`;
}

function regularOrAbsent(p: string, s: GuestFileState): void {
  if (s.info && s.info.type !== 'regular') {
    throw new GuestConfigError(`${p} in the guest is a ${s.info.type}, not a regular file`);
  }
}

/** Queues a file replacement when its text differs; keeps an existing file's mode and owner. */
async function putFile(
  edits: GuestEdits,
  p: string,
  state: GuestFileState,
  text: string,
  fallback: { mode: number; uid: number; gid: number },
): Promise<void> {
  regularOrAbsent(p, state);
  if (state.text === text) return;
  const meta = state.info ? { mode: state.info.mode, uid: state.info.uid, gid: state.info.gid } : fallback;
  await edits.replaceFile(p, state.info !== null, text, meta);
}

/** The ext4 superblock says "not cleanly unmounted" or "journal needs recovery". */
async function needsRecovery(disk: string): Promise<boolean> {
  const fh = await open(disk, 'r');
  try {
    const sb = Buffer.alloc(1024);
    await fh.read(sb, 0, 1024, 1024);
    if (sb.readUInt16LE(0x38) !== 0xef53) throw new GuestConfigError(`${disk} holds no ext2/3/4 file system`);
    const cleanlyUnmounted = (sb.readUInt16LE(0x3a) & 0x1) !== 0;
    const journalToReplay = (sb.readUInt32LE(0x60) & 0x4) !== 0;
    return !cleanlyUnmounted || journalToReplay;
  } finally {
    await fh.close();
  }
}

/**
 * Writes the guest settings of `cfg` into the ext4 image `disk` (which no VM may be using).
 *
 * @example
 * const { changed } = await injectGuestConfig(`${vmDir}/root.raw`, spec.guest_config);
 */
export async function injectGuestConfig(
  disk: string,
  cfg: AgentGuestConfig,
  now: Date = new Date(),
): Promise<InjectResult> {
  checkGuestConfig(cfg);
  const notes: string[] = [];
  let nics: GuestNic[] = [];
  try {
    nics = cfg.network_config ? guestNics(cfg.network_config) : [];
  } catch (err) {
    if (!(err instanceof GuestConfigError)) throw err;
    notes.push(`network not written: ${err.message}`);
  }
  // A VM killed while it had the disk mounted leaves a journal to replay: debugfs would write
  // around it. e2fsck is run only then, as it rewrites the superblock even of a clean disk.
  if (await needsRecovery(disk)) await runTool('e2fsck', ['-p', disk], { okCodes: [1, 2] });
  const image = await DebugfsImage.open(disk);
  try {
    const root = { mode: 0o644, uid: 0, gid: 0 };
    const [etc, hostname, hosts, passwd, group, shadow, bash] = await image.read([
      '/etc',
      '/etc/hostname',
      '/etc/hosts',
      '/etc/passwd',
      '/etc/group',
      '/etc/shadow',
      '/bin/bash',
    ]);
    if (etc!.info?.type !== 'directory') {
      throw new GuestConfigError('the root file system has no /etc: it does not look like an OS image');
    }
    const edits = new GuestEdits(image);
    await putFile(edits, '/etc/hostname', hostname!, `${cfg.hostname}\n`, root);
    await putFile(edits, '/etc/hosts', hosts!, hostsWithName(hosts!.text, cfg.hostname), root);

    const name = guestAccount(cfg);
    if (name) {
      for (const [p, s] of [
        ['/etc/passwd', passwd!],
        ['/etc/group', group!],
        ['/etc/shadow', shadow!],
      ] as const) {
        regularOrAbsent(p, s);
      }
      if (passwd!.text === null) throw new GuestConfigError('the image has no /etc/passwd');
      const tables: AccountTables = {
        passwd: rows(passwd!.text),
        group: rows(group!.text),
        shadow: rows(shadow!.text),
      };
      const shell = bash!.info ? '/bin/bash' : '/bin/sh';
      const account = ensureAccount(tables, name, shell);
      setPassword(tables, name, cfg.password_hash, Math.floor(now.getTime() / DAY_MS));
      if (name !== 'root') addToSudoGroup(tables, name);
      await putFile(edits, '/etc/passwd', passwd!, render(tables.passwd), root);
      await putFile(edits, '/etc/group', group!, render(tables.group), root);
      await putFile(edits, '/etc/shadow', shadow!, render(tables.shadow), { mode: 0o600, uid: 0, gid: 0 });
      await injectHome(image, edits, account, authorizedKeys(cfg));
    }
    const network = await injectNetwork(image, edits, nics, cfg.mode === 'auto' ? 'auto' : 'inject');
    await image.write(edits.commands);
    return { changed: edits.changed, networkStack: network.stack, notes: [...notes, ...network.notes] };
  } finally {
    await image.close();
  }
}

/** The home folder (created when absent) and ~/.ssh/authorized_keys with the keys added. */
async function injectHome(
  image: DebugfsImage,
  edits: GuestEdits,
  account: Account,
  keys: readonly string[],
): Promise<void> {
  const home = checkDebugfsPath(account.home.replace(/\/+$/, '') || '/');
  const own = { uid: account.uid, gid: account.gid };
  const parent = home.slice(0, home.lastIndexOf('/')) || '/';
  const sshDir = `${home === '/' ? '' : home}/.ssh`;
  const keyFile = `${sshDir}/authorized_keys`;
  const [parentState, homeState, sshState, keyState] = await image.read([parent, home, sshDir, keyFile]);
  if (!homeState!.info) {
    if (!parentState!.info) edits.makeDir(parent, { mode: 0o755, uid: 0, gid: 0 });
    edits.makeDir(home, { mode: 0o700, ...own });
  } else if (homeState!.info.type !== 'directory') {
    throw new GuestConfigError(`home ${home} of ${account.name} is not a directory`);
  }
  if (keys.length === 0) return;
  if (!sshState!.info) edits.makeDir(sshDir, { mode: 0o700, ...own });
  else if (sshState!.info.type !== 'directory') throw new GuestConfigError(`${sshDir} is not a directory`);
  else {
    const s = sshState!.info;
    if (s.mode !== 0o700 || s.uid !== own.uid || s.gid !== own.gid)
      edits.setDir(sshDir, { mode: 0o700, ...own });
  }
  regularOrAbsent(keyFile, keyState!);
  const text = keysFile(keyState!.text, keys);
  const k = keyState!.info;
  if (keyState!.text === text && k && k.mode === 0o600 && k.uid === own.uid && k.gid === own.gid) return;
  await edits.replaceFile(keyFile, k !== null, text, { mode: 0o600, ...own });
}
