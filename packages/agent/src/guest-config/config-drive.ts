/**
 * The NoCloud config drive: a small vfat file system labelled CIDATA holding meta-data,
 * user-data and network-config, made with mkfs.vfat and filled with mtools' mcopy (no mount,
 * no root). vfat rather than iso9660: every kernel that runs cloud-init reads it, and the
 * tools are in dosfstools and mtools. cloud-init matches the label without regard to case.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { CloudInitData } from './cloud-config';
import { runTool } from './host-tools';

export const CONFIG_DRIVE_LABEL = 'CIDATA';
const MIN_KIB = 1024;

function driveFiles(data: CloudInitData): Array<[name: string, text: string]> {
  const files: Array<[string, string]> = [
    ['meta-data', data.metaData],
    ['user-data', data.userData],
  ];
  if (data.networkConfig !== null) files.push(['network-config', data.networkConfig]);
  return files;
}

/**
 * Writes the config drive image to `file` (replacing it).
 *
 * @example
 * await writeConfigDrive(path.join(vmDir, 'cidata.img'), cloudInitData(spec.guest_config));
 */
export async function writeConfigDrive(
  file: string,
  data: CloudInitData,
  extra: ReadonlyArray<[name: string, content: string | Uint8Array]> = [],
): Promise<void> {
  await writeVfatImage(file, CONFIG_DRIVE_LABEL, [...driveFiles(data), ...extra]);
}

/** Beside an image: the digest of what it was made from, so an unchanged drive is kept. */
const digestFile = (file: string) => `${file}.sha256`;

function digestOf(label: string, files: ReadonlyArray<[name: string, content: string | Uint8Array]>): string {
  const hash = createHash('sha256').update(label).update('\0');
  for (const [name, content] of files) hash.update(name).update('\0').update(content).update('\0');
  return hash.digest('hex');
}

/**
 * Writes a small vfat image labelled `label` holding `files` to `file` (replacing it): built
 * under a temporary name, then renamed, so a VM never sees half a drive. An image made from the
 * same label and files is kept as it is (VMs attach it read-only): every start of a VM asks for
 * its drive again, and making one costs two process starts.
 */
export async function writeVfatImage(
  file: string,
  label: string,
  files: ReadonlyArray<[name: string, content: string | Uint8Array]>,
): Promise<void> {
  const digest = digestOf(label, files);
  const made = await readFile(digestFile(file), 'utf8').catch(() => null);
  if (made === digest && existsSync(file)) return;
  // Gone before the image changes: a digest never vouches for an image it was not made with.
  await rm(digestFile(file), { force: true });
  const bytes = files.reduce((n, [, content]) => n + Buffer.byteLength(content), 0);
  // Twice the data plus room for the FAT and the directory, in whole MiB.
  const kib = Math.max(MIN_KIB, Math.ceil((bytes * 2 + 256 * 1024) / (1024 * 1024)) * 1024);
  const staging = await mkdtemp(path.join(tmpdir(), 'nqvm-cidata-'));
  const image = `${file}.tmp`;
  try {
    await rm(image, { force: true });
    await runTool('mkfs.vfat', ['-n', label, '-C', image, String(kib)]);
    const sources = files.map(([name]) => path.join(staging, name));
    await Promise.all(files.map(([, content], i) => writeFile(sources[i]!, content, { mode: 0o600 })));
    // One mcopy for all of them: each run of it costs a process start.
    if (sources.length) await runTool('mcopy', ['-i', image, '-o', ...sources, '::/']);
    // It holds the guest user's password hash and the guest agent's token: the VMM reads it, no one else.
    await chmod(image, 0o600);
    await rename(image, file);
    await writeFile(digestFile(file), digest, { mode: 0o600 });
  } catch (err) {
    await rm(image, { force: true });
    throw err;
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}
