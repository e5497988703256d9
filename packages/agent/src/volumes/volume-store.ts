/**
 * Volumes on this host: one sparse raw file per volume, `<stateDir>/volumes/<id>.raw`, made at
 * first use (with an ext4 file system when asked) and kept across VM deletes until the manager
 * deletes the volume. A grown volume is extended in place (and its ext4 grown offline); one is
 * never made again while its file exists. Commands run with argument arrays, never a shell.
 */
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { AgentVolume } from '@nqvm/api';
import { isVmId } from '../agent/state-files';
import type { DiskSpec } from '../drivers/types';
import { growExtFilesystem, runTool } from '../host/disk-tools';

const MiB = 1024 * 1024;
/** The ext2/3/4 superblock magic and where it sits. */
const EXT_MAGIC = 0xef53;
const EXT_MAGIC_OFFSET = 1080;
/** ext4 labels hold at most 16 bytes. */
const LABEL_MAX = 16;

export interface EnsuredVolume {
  file: string;
  /** This call made the file (a failed boot removes it again). */
  created: boolean;
}

/**
 * The file system label of a volume: its name reduced to [A-Za-z0-9_-], at most 16 characters
 * (the name is user text; mkfs gets only these characters).
 *
 * @example
 * volumeLabel('postgres data 2024'); // 'postgres-data-20'
 */
export function volumeLabel(name: string): string {
  const label = name
    .replace(/[^A-Za-z0-9_-]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, LABEL_MAX);
  return label || 'nqvm-volume';
}

/**
 * The disk a volume is attached as: `vol-<first 8 hex of its id>`, raw, never the root. QEMU
 * snapshots record this id; the Firecracker driver hands it to Firecracker as `vol_<hex>` (its
 * resource ids take no `-`, see drivers/firecracker/resource-id.ts).
 */
export function volumeDiskSpec(volume: AgentVolume, file: string): DiskSpec {
  return {
    id: `vol-${volume.id.slice(0, 8)}`,
    path: file,
    format: 'raw',
    readOnly: volume.read_only,
    isRoot: false,
  };
}

export class VolumeStore {
  readonly dir: string;

  constructor(stateDir: string) {
    this.dir = path.join(stateDir, 'volumes');
  }

  /** `<stateDir>/volumes/<id>.raw`; throws on anything but a lowercase UUID. */
  fileOf(id: string): string {
    if (!isVmId(id)) throw new Error(`not a volume id: ${JSON.stringify(id)}`);
    return path.join(this.dir, `${id}.raw`);
  }

  /**
   * Makes the volume's file when it does not exist (sparse, `size_mib` long, ext4 when asked),
   * grows it when `size_mib` grew; never shrinks or reformats an existing one.
   *
   * @example
   * const { file, created } = await volumes.ensure({ id, name: 'data', size_mib: 1024, filesystem: 'ext4', read_only: false });
   */
  async ensure(volume: AgentVolume): Promise<EnsuredVolume> {
    const file = this.fileOf(volume.id);
    const bytes = volume.size_mib * MiB;
    const st = await stat(file).catch(() => null);
    if (st) {
      if (st.size < bytes) await grow(file, bytes, volume.filesystem === 'ext4');
      return { file, created: false };
    }
    // Made under another name and renamed: a crash never leaves a half-formatted volume.
    const tmp = `${file}.new`;
    try {
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
      const fh = await open(tmp, 'w', 0o600);
      try {
        await fh.truncate(bytes);
      } finally {
        await fh.close();
      }
      if (volume.filesystem === 'ext4') {
        await runTool('mkfs.ext4', ['-q', '-F', '-L', volumeLabel(volume.name), '--', tmp]);
      }
      await rename(tmp, file);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    return { file, created: true };
  }

  /** Removes the volume's file; false when there was none. */
  async remove(id: string): Promise<boolean> {
    const file = this.fileOf(id);
    const existed = (await stat(file).catch(() => null)) !== null;
    await rm(file, { force: true });
    return existed;
  }
}

/** Extends the file; grows its file system when it was made ext4 and still holds one. */
async function grow(file: string, bytes: number, ext4: boolean): Promise<void> {
  const fh = await open(file, 'r+');
  let holdsExt = false;
  try {
    await fh.truncate(bytes);
    const magic = Buffer.alloc(2);
    const { bytesRead } = await fh.read(magic, 0, 2, EXT_MAGIC_OFFSET);
    holdsExt = bytesRead === 2 && magic.readUInt16LE(0) === EXT_MAGIC;
  } finally {
    await fh.close();
  }
  if (!ext4 || !holdsExt) return;
  await growExtFilesystem(file);
}
