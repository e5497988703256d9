/**
 * A VM's boot as a named pipeline of agent steps around the driver's own: choose the VMM,
 * prepare the folder, resolve the images, make the VM's disk, attach volumes, write the guest
 * configuration (config drive, offline edits, MMDS data), boot, persist the run record.
 * A failure undoes what this boot made and names the step; the VM's existing disk survives.
 */
import { mkdir, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { AgentVmCommand, AgentVmSpec } from '@nqvm/api';
import { ensureGuestAgent, type GuestAgentClient } from '@nqvm/guest-agent';
import { writeContainerDrive } from '../containers/container-run';
import { runPipeline } from '../drivers/pipeline';
import type {
  DiskSpec,
  NicSpec,
  SnapshotFiles,
  StepTiming,
  VmHandle,
  VmmDriver,
  VmmKind,
  VmSpec,
} from '../drivers/types';
import { applyGuestConfig, wantsInjection } from '../guest-config';
import type { ImageCache } from '../images/image-cache';
import type { HostNetwork } from '../network';
import type { SnapshotRecord } from '../snapshots/snapshot-store';
import { type VolumeStore, volumeDiskSpec } from '../volumes/volume-store';
import type { DriverSet } from './driver-set';
import { connectGuest, GUEST_CID, guestAgentToken } from './guest-channel';
import { needsReaddress, readdressGuest } from './guest-readdress';
import { errorMessage } from './logger';
import { clearDir, DESIRED_FILE, RUN_FILE, writeJsonAtomic } from './state-files';
import {
  createRootDisk,
  defaultRootDiskFormat,
  isExtFilesystem,
  ROOT_DISK_RECORD,
  readRootDisk,
  rootDiskSpec,
  writeRootDiskRecord,
} from './vm-disk';
import { networkBootArgs, prepareVmNetwork, removeVmNetwork } from './vm-network';

export interface BootRequest {
  id: string;
  vmDir: string;
  command: AgentVmCommand;
  drivers: DriverSet;
  /** Finds or fetches the kernel, initrd and rootfs. */
  images: ImageCache;
  /** The host's volume files. */
  volumes: VolumeStore;
  /** The host's networking; without it a VM with NICs does not boot. */
  network?: HostNetwork;
  /** Writes `desired.json` with the VM's latest command (which may be newer than `command`). */
  persistDesired: () => Promise<void>;
  /** Boot from this snapshot instead of cold (the command restores). */
  restore?: RestoreSource;
  signal?: AbortSignal;
}

/** A snapshot to restore, of this VM or (a clone) of another one. */
export interface RestoreSource {
  record: SnapshotRecord;
  files: SnapshotFiles;
}

export interface BootedVm {
  handle: VmHandle;
  driver: VmmDriver;
  /** What the boot could not do but did not fail for (e.g. a clone that kept its old addresses). */
  notes: string[];
  /** A clone's guest agent connection, authenticated with the clone's own token once re-identified. */
  guest: GuestAgentClient | null;
  /**
   * How long each step took, in order; the driver's own steps follow `boot-vmm` as
   * `boot-vmm.<step>` (parts of it, not added to it).
   */
  steps: StepTiming[];
}

/** A clone's guest agent is asked to re-address its NICs within this time. */
const READDRESS_TIMEOUT_MS = 15_000;

/** Forced stop of a VMM this boot started, before anyone watches it. */
const UNDO_STOP_TIMEOUT_MS = 5_000;

/** The kernel command line when the manager sends none. */
export function defaultBootArgs(kind: VmmKind, hasRootDisk: boolean): string {
  const base =
    kind === 'firecracker' ? 'console=ttyS0 reboot=k panic=1 pci=off' : 'console=ttyS0 reboot=k panic=1';
  return hasRootDisk ? `${base} root=/dev/vda rw` : base;
}

/**
 * A container VM's command line: its disk is the root the init mounts, the host name and the
 * first NIC's address for the init to set (DHCP for a bridged NIC), and how the VM ends when
 * the process exits (Firecracker ends its process on a guest reboot, not on a power-off).
 */
export function containerBootArgs(kind: VmmKind, spec: AgentVmSpec): string {
  const nic = spec.nics[0];
  const hostname =
    spec.name
      .replace(/[^a-zA-Z0-9-]/g, '-')
      .slice(0, 63)
      .replace(/-+$/, '') || 'container';
  return [
    defaultBootArgs(kind, true),
    'quiet',
    `nqvm.hostname=${hostname}`,
    networkBootArgs(spec) || (nic ? 'nqvm.dhcp=1' : ''),
    kind === 'firecracker' ? 'nqvm.halt=reboot' : '',
  ]
    .filter(Boolean)
    .join(' ');
}

/** The VMM an existing root disk was made for: a VM keeps its VMM for the life of its disk. */
async function existingDiskKind(vmDir: string): Promise<VmmKind | null> {
  return (await readRootDisk(vmDir))?.vmm ?? null;
}

/**
 * Boots the VM of `command`; resolves once the VMM runs and `run.json` is written.
 *
 * @example
 * const { handle, driver } = await bootVm({ id, vmDir, command, drivers, persistDesired });
 */
export async function bootVm(req: BootRequest): Promise<BootedVm> {
  const { id, vmDir, command, drivers, restore } = req;
  const spec = command.spec;
  const notes: string[] = [];
  let guest: GuestAgentClient | null = null;
  let driver: VmmDriver | null = null;
  let kernelPath = '';
  let initrdPath: string | undefined;
  let rootImage: string | null = null;
  let disk: DiskSpec | null = null;
  let createdDisk = false;
  /** Disks after the root one (volumes, the config drive), attached in this order. */
  const extraDisks: DiskSpec[] = [];
  const createdVolumes: string[] = [];
  let mmds: Record<string, unknown> | undefined;
  let nics: NicSpec[] = [];
  let handle: VmHandle | null = null;
  let keep = new Set<string>();

  const timings = await runPipeline(
    [
      {
        name: 'choose-vmm',
        run: async () => {
          const onDisk = await existingDiskKind(vmDir);
          const wanted = restore?.record.vmm ?? spec.vmm;
          if (onDisk && wanted && wanted !== onDisk) {
            throw new Error(`the VM's disk was made for ${onDisk}; it cannot boot under ${wanted}`);
          }
          driver = await drivers.choose(wanted ?? onDisk);
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
          const opts = { forFirecracker: driver?.kind === 'firecracker' };
          kernelPath = await req.images.resolve(spec.kernel, 'kernel', opts);
          initrdPath = spec.initrd ? await req.images.resolve(spec.initrd, 'initrd', opts) : undefined;
          rootImage = spec.rootfs ? await req.images.resolve(spec.rootfs, 'rootfs', opts) : null;
        },
      },
      {
        name: 'prepare-disk',
        run: async () => {
          if (!rootImage || !driver) return;
          const onDisk = await readRootDisk(vmDir);
          if (restore) {
            // The driver copies the snapshot's disk into place; here only its name and format.
            const format = restore.record.root_disk_format;
            if (!format) return;
            if (onDisk && onDisk.format !== format) {
              await rm(rootDiskSpec(vmDir, onDisk.vmm, onDisk.format).path, { force: true });
            }
            disk = rootDiskSpec(vmDir, driver.kind, format);
            createdDisk = onDisk === null;
            if (format !== defaultRootDiskFormat(driver.kind))
              await writeRootDiskRecord(vmDir, { vmm: driver.kind, format });
            return;
          }
          if (onDisk) {
            disk = rootDiskSpec(vmDir, onDisk.vmm, onDisk.format);
            return;
          }
          // debugfs cannot write inside a qcow2 overlay: a disk to edit offline is a raw copy.
          const raw =
            wantsInjection(spec.guest_config, spec.rootfs?.has_cloud_init ?? null) &&
            (await isExtFilesystem(rootImage));
          const format = raw ? 'raw' : defaultRootDiskFormat(driver.kind);
          const unusual = format !== defaultRootDiskFormat(driver.kind);
          disk = rootDiskSpec(vmDir, driver.kind, format);
          createdDisk = true;
          await createRootDisk(driver.kind, rootImage, disk.path, spec.disk_size_mib, { format });
          // Only a raw disk for QEMU needs saying so: the file name tells the other layouts.
          if (unusual) await writeRootDiskRecord(vmDir, { vmm: driver.kind, format });
        },
        undo: async () => {
          if (!createdDisk || !disk) return;
          await rm(disk.path, { force: true });
          await rm(path.join(vmDir, ROOT_DISK_RECORD), { force: true });
        },
      },
      {
        name: 'prepare-volumes',
        run: async () => {
          for (const volume of spec.volumes) {
            const { file, created } = await req.volumes.ensure(volume);
            if (created) createdVolumes.push(file);
            extraDisks.push(volumeDiskSpec(volume, file));
          }
        },
        // A volume outlives its VMs, but one this boot made holds nothing yet.
        undo: async () => {
          await Promise.all(createdVolumes.map((f) => rm(f, { force: true })));
        },
      },
      {
        name: 'guest-config',
        run: async () => {
          if (!driver || !spec.guest_config) return;
          const root = disk as DiskSpec | null;
          // A restored guest booted long ago: only a config drive (its device is in the state).
          const config =
            restore && spec.guest_config.mode === 'inject'
              ? { ...spec.guest_config, mode: 'none' as const }
              : spec.guest_config;
          const applied = await applyGuestConfig({
            vmDir,
            vmm: driver.kind,
            config,
            hasCloudInit: spec.rootfs?.has_cloud_init ?? null,
            rootDisk:
              root && !restore
                ? {
                    path: root.path,
                    editable: root.format === 'raw' && (await isExtFilesystem(root.path)),
                    created: createdDisk,
                  }
                : null,
            agentToken: await guestAgentToken(vmDir),
            // Offered to guests that may run cloud-init; built once (cached) from its C source. A
            // host that cannot build it boots the VM without it.
            ...(spec.rootfs?.has_cloud_init !== false
              ? {
                  guestAgentBinary: await ensureGuestAgent().then(
                    (b) => b.path,
                    () => undefined,
                  ),
                }
              : {}),
          });
          if (applied.configDrive) extraDisks.push(applied.configDrive);
          mmds = applied.mmds ?? undefined;
        },
      },
      {
        name: 'container-drive',
        run: async () => {
          if (!spec.container) return;
          const file = await writeContainerDrive(vmDir, spec.container, await guestAgentToken(vmDir));
          extraDisks.push({ id: 'ctr', path: file, format: 'raw', readOnly: true, isRoot: false });
        },
      },
      {
        name: 'prepare-network',
        run: async () => {
          if (!spec.nics.length && !spec.port_forwards.length) return;
          if (!req.network) throw new Error('this agent has no host networking for the VM’s NICs');
          const made = await prepareVmNetwork(req.network, id, spec);
          nics = made.nics;
          if (made.refusedForwards) notes.push(`port forward not applied: ${made.refusedForwards}`);
        },
        // A failed boot leaves no TAP or forward behind; the next boot makes them again.
        undo: async () => {
          if (req.network) await removeVmNetwork(req.network, id, spec);
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
            bootArgs:
              spec.boot_args ??
              (spec.container
                ? containerBootArgs(driver.kind, spec)
                : [defaultBootArgs(driver.kind, disk !== null), networkBootArgs(spec)]
                    .filter(Boolean)
                    .join(' ')),
            disks: [...(disk ? [disk] : []), ...extraDisks],
            nics,
            vmDir,
            vsockCid: GUEST_CID,
            ...(mmds ? { mmds } : {}),
          };
          handle = restore
            ? await driver.restore(vmSpec, restore.files)
            : await driver.boot(vmSpec, req.signal);
        },
        undo: async () => {
          if (handle && driver)
            await driver.shutdown(handle, { graceful: false, timeoutMs: UNDO_STOP_TIMEOUT_MS });
        },
      },
      {
        // A clone's guest wakes up as the snapshot's VM: its own identity comes now.
        name: 'readdress-guest',
        run: async () => {
          if (!restore || !handle || restore.record.vm_id === id) return;
          const done = await readdress(handle, restore.record, spec, await guestAgentToken(vmDir));
          if (typeof done === 'string') notes.push(done);
          else guest = done;
        },
        undo: () => guest?.close(),
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
  const vmmSteps = (handle as VmHandle).bootSteps ?? [];
  const steps = timings.flatMap((t) =>
    t.name === 'boot-vmm' ? [t, ...vmmSteps.map((s) => ({ name: `boot-vmm.${s.name}`, ms: s.ms }))] : [t],
  );
  return { handle, driver, notes, guest, steps };
}

/**
 * Gives a clone's guest its own MACs, addresses and host name, then its own guest agent token;
 * answers the connection, now authenticated with that token (kept open: the VM's first exec
 * needs no new handshake), or why it could not (the clone runs, cut off by the anti-spoofing
 * rules until its guest reconfigures its NICs).
 */
async function readdress(
  handle: VmHandle,
  snapshot: SnapshotRecord,
  spec: BootRequest['command']['spec'],
  token: string,
): Promise<GuestAgentClient | string> {
  const readdressing = needsReaddress(snapshot.nics, spec.nics);
  const kept = readdressing
    ? "the clone's NICs keep the snapshot's MAC and address"
    : "the clone keeps the snapshot's host name and guest agent token";
  if (!snapshot.guest_agent_token) return `${kept}: the snapshot's guest ran no nqvm guest agent`;
  try {
    const guest = await connectGuest(handle.record, snapshot.guest_agent_token, READDRESS_TIMEOUT_MS);
    try {
      const nics = readdressing ? spec.nics : [];
      await readdressGuest(guest, snapshot.nics, nics, spec.guest_config?.hostname ?? null);
      await guest.setToken(token);
    } catch (err) {
      guest.close();
      throw err;
    }
    return guest;
  } catch (err) {
    return `${kept}: ${errorMessage(err)}`;
  }
}
