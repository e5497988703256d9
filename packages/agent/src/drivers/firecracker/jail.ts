import { createHash } from 'node:crypto';
import { chown, link, mkdir, rename, rm, unlink } from 'node:fs/promises';
import { basename, dirname, join, relative } from 'node:path';
import { runTool } from './process';

/**
 * Where the jailer puts a VM: `<chroot-base>/<exec-file name>/<id>/root/`. Every path handed to
 * the API is the in-chroot form of a file under `root`.
 */
export interface JailLayout {
  instanceDir: string;
  root: string;
}

export function jailLayout(chrootBaseDir: string, firecrackerBin: string, vmId: string): JailLayout {
  const instanceDir = join(chrootBaseDir, basename(firecrackerBin), vmId);
  return { instanceDir, root: join(instanceDir, 'root') };
}

/** The path Firecracker sees for a host path under the chroot root. */
export function inJail(layout: JailLayout, hostPath: string): string {
  const rel = relative(layout.root, hostPath);
  if (rel.startsWith('..')) throw new Error(`${hostPath} is outside the jail ${layout.root}`);
  return `/${rel}`;
}

/** A sparse, reflinked-where-possible copy (Node's copyFile writes every byte). */
export async function cloneFile(src: string, dst: string): Promise<void> {
  await mkdir(dirname(dst), { recursive: true });
  await runTool('cp', ['--reflink=auto', '--sparse=always', '--', src, dst], 10 * 60_000);
}

/**
 * Puts `src` at `dst` inside the chroot: a hard link (same inode, instant); across file systems
 * a copy, which is only right for files the VM does not write.
 */
export async function stageIntoJail(src: string, dst: string, writable: boolean): Promise<'link' | 'copy'> {
  await mkdir(dirname(dst), { recursive: true });
  await unlink(dst).catch(() => {});
  try {
    await link(src, dst);
    return 'link';
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
  }
  if (writable) {
    throw new Error(
      `${src} is on another file system than the jail (${dst}): a copy would not receive the VM's writes; keep the chroot base dir on the disks' file system`,
    );
  }
  await cloneFile(src, dst);
  return 'copy';
}

/** Moves a file out of the jail, copying (with `copy`) when it crosses file systems. */
export async function moveFile(
  src: string,
  dst: string,
  copy: (src: string, dst: string) => Promise<void> = cloneFile,
): Promise<void> {
  await mkdir(dirname(dst), { recursive: true });
  try {
    await rename(src, dst);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
    await copy(src, dst);
    await unlink(src);
  }
}

/** chown when we can (the agent runs as root in production; tests may not). */
export async function chownIfRoot(path: string, uid: number, gid: number): Promise<void> {
  if (process.getuid?.() === 0) await chown(path, uid, gid);
}

export async function removeJail(layout: JailLayout): Promise<void> {
  await rm(layout.instanceDir, { recursive: true, force: true });
}

/**
 * Hands each jailed VM its own uid/gid (same number) from a range, so no two VMs share an
 * identity. The first candidate derives from the VM id, so a VM usually gets the same ids back.
 */
export class JailIdAllocator {
  private readonly byVm = new Map<string, number>();
  private readonly taken = new Set<number>();

  constructor(
    readonly first: number,
    readonly count: number,
  ) {}

  allocate(vmId: string): number {
    const existing = this.byVm.get(vmId);
    if (existing !== undefined) return existing;
    const start = createHash('sha256').update(vmId).digest().readUInt32BE(0) % this.count;
    for (let i = 0; i < this.count; i++) {
      const id = this.first + ((start + i) % this.count);
      if (!this.taken.has(id)) {
        this.claim(vmId, id);
        return id;
      }
    }
    throw new Error(`no free jail uid left in ${this.first}..${this.first + this.count - 1}`);
  }

  /** Records the id of an adopted VM. */
  claim(vmId: string, id: number): void {
    this.byVm.set(vmId, id);
    this.taken.add(id);
  }

  release(vmId: string): void {
    const id = this.byVm.get(vmId);
    if (id === undefined) return;
    this.byVm.delete(vmId);
    this.taken.delete(id);
  }
}
