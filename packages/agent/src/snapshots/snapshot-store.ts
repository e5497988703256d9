/**
 * The snapshots this host keeps: `<state dir>/snapshots/<uuid>/`, each with the driver's files
 * (state, memory, disk copies) and `nqvm-snapshot.json`, the agent's record of what the
 * snapshot is and what a restore or a clone needs (size, VMM, NIC identities, the guest
 * agent's token). A folder without a record is an unfinished snapshot and is removed.
 * Every path derives from a validated UUID.
 */
import { readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { AgentSnapshot } from '@nqvm/api';
import { isVmId, readJsonFile, writeJsonAtomic } from '../agent/state-files';
import type { SnapshotFiles } from '../drivers/types';

export const SNAPSHOT_RECORD = 'nqvm-snapshot.json';

/** A NIC as the guest knew it when the snapshot was taken: its memory still holds these. */
export interface SnapshotNic {
  nic_index: number;
  mac: string;
  ip: string | null;
  prefix_len: number | null;
  gateway: string | null;
}

export interface SnapshotRecord extends AgentSnapshot {
  /** The driver's files, relative to the snapshot folder. */
  files: { state: string; memory: string | null };
  nics: SnapshotNic[];
  hostname: string | null;
  /** The root disk's format (a clone's disk gets it); null for a VM without a root disk. */
  root_disk_format: 'raw' | 'qcow2' | null;
  /** The guest agent's token in the guest's memory (a clone authenticates with it once). */
  guest_agent_token: string | null;
  /** Image digests the snapshot's disks and restore need in the image cache. */
  image_digests: string[];
}

export class SnapshotStore {
  readonly root: string;

  constructor(stateDir: string) {
    this.root = path.join(stateDir, 'snapshots');
  }

  /** `<root>/<id>`; throws on anything but a lowercase UUID. */
  dirOf(id: string): string {
    if (!isVmId(id)) throw new Error(`not a snapshot id: ${JSON.stringify(id)}`);
    return path.join(this.root, id);
  }

  /** The id of the stored snapshot a file of the store belongs to; null for a file elsewhere. */
  idOf(file: string): string | null {
    const rel = path.relative(this.root, file).split(path.sep);
    return rel.length === 2 && isVmId(rel[0]!) ? rel[0]! : null;
  }

  async get(id: string): Promise<SnapshotRecord | null> {
    return (await readJsonFile(path.join(this.dirOf(id), SNAPSHOT_RECORD)).catch(
      () => null,
    )) as SnapshotRecord | null;
  }

  async list(): Promise<SnapshotRecord[]> {
    const names = await readdir(this.root).catch(() => [] as string[]);
    const records = await Promise.all(names.filter(isVmId).map((id) => this.get(id)));
    return records.filter((r): r is SnapshotRecord => r !== null);
  }

  async save(record: SnapshotRecord): Promise<void> {
    await writeJsonAtomic(path.join(this.dirOf(record.id), SNAPSHOT_RECORD), record);
  }

  async remove(id: string): Promise<void> {
    await rm(this.dirOf(id), { recursive: true, force: true });
  }

  /** Folders of snapshots that never finished (the agent stopped while taking them). */
  async removeUnfinished(): Promise<string[]> {
    const names = await readdir(this.root).catch(() => [] as string[]);
    const removed: string[] = [];
    for (const id of names.filter(isVmId)) {
      if (await this.get(id)) continue;
      await this.remove(id);
      removed.push(id);
    }
    return removed;
  }

  /** The driver's view of a snapshot: its files and, for a Diff, the chain it builds on. */
  async filesOf(record: SnapshotRecord): Promise<SnapshotFiles> {
    const dir = this.dirOf(record.id);
    const files: SnapshotFiles = {
      statePath: path.join(dir, record.files.state),
      ...(record.files.memory ? { memPath: path.join(dir, record.files.memory) } : {}),
      type: record.type,
    };
    if (record.type === 'Diff' && record.parent_id) {
      const parent = await this.get(record.parent_id);
      if (parent?.status !== 'ready')
        throw new Error(`snapshot ${record.id} builds on ${record.parent_id}, which this host no longer has`);
      files.base = await this.filesOf(parent);
    }
    return files;
  }

  /** Ready snapshots that build on `id`. */
  async childrenOf(id: string): Promise<string[]> {
    return (await this.list()).filter((r) => r.parent_id === id && r.status === 'ready').map((r) => r.id);
  }
}

/**
 * Bytes a folder's files take on disk, by what they hold: sparse files (memory, disk copies)
 * count their allocated blocks, not their length.
 */
export async function allocatedBytes(file: string): Promise<number> {
  const st = await stat(file).catch(() => null);
  return st ? st.blocks * 512 : 0;
}
