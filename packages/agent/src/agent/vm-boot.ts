/**
 * A VM's boot as a named pipeline of agent steps around the driver's own: choose the VMM,
 * prepare the folder, resolve the images, make the VM's disk, boot, persist the run record.
 * A failure undoes what this boot made and names the step; the VM's existing disk survives.
 */
import { constants } from 'node:fs';
import { access, mkdir, readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { AgentImageRef, AgentVmCommand } from '@nqvm/api';
import { runPipeline } from '../drivers/pipeline';
import type { DiskSpec, VmHandle, VmmDriver, VmmKind, VmSpec } from '../drivers/types';
import type { DriverSet } from './driver-set';
import { clearDir, DESIRED_FILE, RUN_FILE, writeJsonAtomic } from './state-files';
import { createRootDisk, rootDiskFile, rootDiskSpec } from './vm-disk';

export interface BootRequest {
  id: string;
  vmDir: string;
  command: AgentVmCommand;
  drivers: DriverSet;
  /** Writes `desired.json` with the VM's latest command (which may be newer than `command`). */
  persistDesired: () => Promise<void>;
  signal?: AbortSignal;
}

export interface BootedVm {
  handle: VmHandle;
  driver: VmmDriver;
}

/** Forced stop of a VMM this boot started, before anyone watches it. */
const UNDO_STOP_TIMEOUT_MS = 5_000;

/** The kernel command line when the manager sends none. */
export function defaultBootArgs(kind: VmmKind, hasRootDisk: boolean): string {
  const base =
    kind === 'firecracker' ? 'console=ttyS0 reboot=k panic=1 pci=off' : 'console=ttyS0 reboot=k panic=1';
  return hasRootDisk ? `${base} root=/dev/vda rw` : base;
}

/** The VMM an existing root disk was made for: a VM keeps its VMM for the life of its disk. */
async function existingDiskKind(vmDir: string): Promise<VmmKind | null> {
  for (const kind of ['qemu', 'firecracker'] as const) {
    if (await exists(path.join(vmDir, rootDiskFile(kind)))) return kind;
  }
  return null;
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

async function resolveImage(role: string, ref: AgentImageRef): Promise<string> {
  if (!ref.path) throw new Error(`${role} image ${ref.id} has no path on this host`);
  if (!path.isAbsolute(ref.path))
    throw new Error(`${role} image ${ref.id}: path ${ref.path} is not absolute`);
  let size: number;
  try {
    const st = await stat(ref.path);
    if (!st.isFile()) throw new Error('not a regular file');
    size = st.size;
    await access(ref.path, constants.R_OK);
  } catch (err) {
    throw new Error(
      `${role} image ${ref.id} is missing or unreadable at ${ref.path}: ${(err as Error).message}`,
    );
  }
  if (ref.size_bytes !== null && ref.size_bytes !== size) {
    throw new Error(`${role} image ${ref.id} at ${ref.path} holds ${size} bytes, expected ${ref.size_bytes}`);
  }
  return ref.path;
}

/**
 * Boots the VM of `command`; resolves once the VMM runs and `run.json` is written.
 *
 * @example
 * const { handle, driver } = await bootVm({ id, vmDir, command, drivers, persistDesired });
 */
export async function bootVm(req: BootRequest): Promise<BootedVm> {
  const { id, vmDir, command, drivers } = req;
  const spec = command.spec;
  let driver: VmmDriver | null = null;
  let kernelPath = '';
  let initrdPath: string | undefined;
  let rootImage: string | null = null;
  let disk: DiskSpec | null = null;
  let createdDisk = false;
  let handle: VmHandle | null = null;
  let keep = new Set<string>();

  await runPipeline(
    [
      {
        name: 'choose-vmm',
        run: async () => {
          const onDisk = await existingDiskKind(vmDir);
          if (onDisk && spec.vmm && spec.vmm !== onDisk) {
            throw new Error(`the VM's disk was made for ${onDisk}; it cannot boot under ${spec.vmm}`);
          }
          driver = await drivers.choose(spec.vmm ?? onDisk);
        },
      },
      {
        name: 'prepare-dir',
        run: async () => {
          await mkdir(vmDir, { recursive: true, mode: 0o700 });
          // What exists now (the disk, earlier console logs) is the VM's; the rest is this boot's.
          keep = new Set([...(await readdir(vmDir)), DESIRED_FILE]);
          keep.delete(RUN_FILE);
        },
        undo: () => clearDir(vmDir, keep),
      },
      {
        name: 'resolve-images',
        run: async () => {
          kernelPath = await resolveImage('kernel', spec.kernel);
          initrdPath = spec.initrd ? await resolveImage('initrd', spec.initrd) : undefined;
          rootImage = spec.rootfs ? await resolveImage('rootfs', spec.rootfs) : null;
        },
      },
      {
        name: 'prepare-disk',
        run: async () => {
          if (!rootImage || !driver) return;
          disk = rootDiskSpec(vmDir, driver.kind);
          if (await exists(disk.path)) return;
          createdDisk = true;
          await createRootDisk(driver.kind, rootImage, disk.path, spec.disk_size_mib);
        },
        undo: async () => {
          if (createdDisk && disk) await rm(disk.path, { force: true });
        },
      },
      {
        name: 'boot-vmm',
        run: async () => {
          if (!driver) throw new Error('no VMM chosen');
          const vmSpec: VmSpec = {
            id,
            generation: command.generation,
            vcpu: spec.vcpu,
            memMib: spec.mem_mib,
            kernelPath,
            initrdPath,
            bootArgs: spec.boot_args ?? defaultBootArgs(driver.kind, disk !== null),
            disks: disk ? [disk] : [],
            nics: [],
            vmDir,
          };
          handle = await driver.boot(vmSpec, req.signal);
        },
        undo: async () => {
          if (handle && driver)
            await driver.shutdown(handle, { graceful: false, timeoutMs: UNDO_STOP_TIMEOUT_MS });
        },
      },
      {
        name: 'persist-run-record',
        run: async () => {
          if (!handle) throw new Error('no VMM handle');
          await writeJsonAtomic(path.join(vmDir, RUN_FILE), handle.record);
          await req.persistDesired();
        },
        undo: () => rm(path.join(vmDir, RUN_FILE), { force: true }),
      },
    ],
    req.signal,
  );
  if (!handle || !driver) throw new Error('boot pipeline ended without a VMM');
  return { handle, driver };
}
