/**
 * A VM's own writable root disk, made from a shared read-only image without a full byte copy:
 * a qcow2 overlay for QEMU, a reflink or sparse copy grown to size for Firecracker (raw only),
 * and for QEMU too when the disk must be edited offline (debugfs cannot write inside a qcow2).
 * Commands run with argument arrays, never through a shell, never with sudo.
 */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import type { DiskSpec, VmmKind } from '../drivers/types';
import { growExtFilesystem, isExtFilesystem, runTool } from '../host/disk-tools';
import { readJsonFile, writeJsonAtomic } from './state-files';

const MiB = 1024 * 1024;

export type RootDiskFormat = DiskSpec['format'];

/**
 * Beside a root disk whose file name does not tell its VMM (root.raw made for QEMU): the VMM
 * it was made for. Without it, root.qcow2 means QEMU and root.raw Firecracker, as before.
 */
export const ROOT_DISK_RECORD = 'disk.json';

export interface RootDiskRecord {
  vmm: VmmKind;
  format: RootDiskFormat;
}

export function defaultRootDiskFormat(kind: VmmKind): RootDiskFormat {
  return kind === 'qemu' ? 'qcow2' : 'raw';
}

export function rootDiskFile(kind: VmmKind, format: RootDiskFormat = defaultRootDiskFormat(kind)): string {
  return format === 'qcow2' ? 'root.qcow2' : 'root.raw';
}

export function rootDiskSpec(
  vmDir: string,
  kind: VmmKind,
  format: RootDiskFormat = defaultRootDiskFormat(kind),
): DiskSpec {
  if (kind === 'firecracker' && format !== 'raw') throw new Error('Firecracker reads raw disks only');
  return {
    id: 'root',
    path: path.join(vmDir, rootDiskFile(kind, format)),
    format,
    readOnly: false,
    isRoot: true,
  };
}

async function fileExists(p: string): Promise<boolean> {
  return stat(p).then(
    (st) => st.isFile(),
    () => false,
  );
}

/**
 * The VM's existing root disk: what `disk.json` says, or for folders made before it existed,
 * what the file name implied (root.qcow2 for QEMU, root.raw for Firecracker). Null when the
 * disk file is absent.
 *
 * @example
 * const onDisk = await readRootDisk(vmDir); // { vmm: 'qemu', format: 'raw' }
 */
export async function readRootDisk(vmDir: string): Promise<RootDiskRecord | null> {
  const saved = (await readJsonFile(path.join(vmDir, ROOT_DISK_RECORD)).catch(
    () => null,
  )) as Partial<RootDiskRecord> | null;
  if (
    (saved?.vmm === 'qemu' || saved?.vmm === 'firecracker') &&
    (saved.format === 'raw' || saved.format === 'qcow2')
  ) {
    const record: RootDiskRecord = { vmm: saved.vmm, format: saved.format };
    return (await fileExists(path.join(vmDir, rootDiskFile(record.vmm, record.format)))) ? record : null;
  }
  for (const vmm of ['qemu', 'firecracker'] as const) {
    if (await fileExists(path.join(vmDir, rootDiskFile(vmm))))
      return { vmm, format: defaultRootDiskFormat(vmm) };
  }
  return null;
}

export async function writeRootDiskRecord(vmDir: string, record: RootDiskRecord): Promise<void> {
  await writeJsonAtomic(path.join(vmDir, ROOT_DISK_RECORD), record);
}

export { isExtFilesystem };

export interface CreateRootDiskOptions {
  /** Default: qcow2 for QEMU, raw for Firecracker (which takes nothing else). */
  format?: RootDiskFormat;
}

/**
 * Creates `target` from the raw `image`. A larger `sizeMib` grows the disk: the qcow2 overlay
 * gets that virtual size (the guest grows its file system), the raw copy is extended and, when it
 * holds ext4, its file system too. A smaller size than the image keeps the image's size.
 *
 * @example
 * await createRootDisk('qemu', '/var/lib/nqvm/images/ab12.ext4', `${vmDir}/root.qcow2`, 2048);
 * await createRootDisk('qemu', image, `${vmDir}/root.raw`, null, { format: 'raw' });
 */
export async function createRootDisk(
  kind: VmmKind,
  image: string,
  target: string,
  sizeMib: number | null,
  options: CreateRootDiskOptions = {},
): Promise<void> {
  const format = options.format ?? defaultRootDiskFormat(kind);
  if (kind === 'firecracker' && format !== 'raw') throw new Error('Firecracker reads raw disks only');
  const imageBytes = (await stat(image)).size;
  const grow = sizeMib !== null && sizeMib * MiB > imageBytes;
  if (format === 'qcow2') {
    const args = ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', image, target];
    if (grow) args.push(`${sizeMib}M`);
    await runTool('qemu-img', args);
    return;
  }
  // Node's fs.copyFile writes every byte; cp keeps holes and reflinks where the file system can.
  await runTool('cp', ['--reflink=auto', '--sparse=always', '--', image, target]);
  if (!grow) return;
  await runTool('truncate', ['-s', `${sizeMib}M`, '--', target]);
  if (await isExtFilesystem(target)) await growExtFilesystem(target);
}
