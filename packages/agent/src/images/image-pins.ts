/**
 * Which cached images the VMs of this host depend on. A VM pins every image it names for as
 * long as its folder exists: its disk was made from the image (a qcow2 overlay reads it for
 * life) and a restart boots the same kernel again.
 */
import { open, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { DESIRED_FILE, listVmIds, RUN_FILE } from '../agent/state-files';
import { SNAPSHOT_RECORD } from '../snapshots/snapshot-store';

const DIGEST = /[a-f0-9]{64}/g;
const QCOW2_MAGIC = 0x514649fb;
/** A backing file name longer than this is not one nqvm wrote. */
const MAX_BACKING_NAME = 4096;

/**
 * Digests named by any VM folder under `stateDir`: in `desired.json` (kernel, vmlinux, initrd,
 * rootfs), in `run.json`, and as the backing file of a qcow2 overlay; and by any snapshot
 * folder: its record (the images a restore boots) and its qcow2 disk copies, which read the
 * image for as long as the snapshot exists. Any 64-hex string counts, so an unreadable or
 * older file pins too much rather than too little.
 *
 * @example
 * const pinned = await pinnedDigests('/var/lib/nqvm/agent');
 * if (!pinned.has(hex)) await rm(cachedFile);
 */
export async function pinnedDigests(stateDir: string): Promise<Set<string>> {
  const pinned = new Set<string>();
  const folders = [
    ...(await listVmIds(stateDir)).map((id) => ({
      dir: path.join(stateDir, 'vms', id),
      records: VM_RECORDS,
    })),
    ...(await readdir(path.join(stateDir, 'snapshots')).catch(() => [] as string[])).map((id) => ({
      dir: path.join(stateDir, 'snapshots', id),
      records: SNAPSHOT_RECORDS,
    })),
  ];
  for (const { dir, records } of folders) {
    for (const name of records) {
      const text = await readFile(path.join(dir, name), 'utf8').catch(() => '');
      for (const m of text.matchAll(DIGEST)) pinned.add(m[0]);
    }
    const files = await readdir(dir).catch(() => [] as string[]);
    for (const name of files.filter((n) => n.endsWith('.qcow2'))) {
      const backing = await qcow2BackingFile(path.join(dir, name)).catch(() => null);
      for (const m of backing?.matchAll(DIGEST) ?? []) pinned.add(m[0]);
    }
  }
  return pinned;
}

const VM_RECORDS = [DESIRED_FILE, RUN_FILE];
const SNAPSHOT_RECORDS = [SNAPSHOT_RECORD];

/** The backing file a qcow2 header names (offset at byte 8, length at byte 16); null when none. */
export async function qcow2BackingFile(file: string): Promise<string | null> {
  const fh = await open(file, 'r');
  try {
    const header = Buffer.alloc(20);
    const { bytesRead } = await fh.read(header, 0, header.length, 0);
    if (bytesRead < header.length || header.readUInt32BE(0) !== QCOW2_MAGIC) return null;
    const offset = Number(header.readBigUInt64BE(8));
    const length = header.readUInt32BE(16);
    if (offset === 0 || length === 0 || length > MAX_BACKING_NAME) return null;
    const name = Buffer.alloc(length);
    await fh.read(name, 0, length, offset);
    return name.toString('utf8');
  } finally {
    await fh.close();
  }
}
