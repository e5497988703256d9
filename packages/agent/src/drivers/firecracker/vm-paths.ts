import { join } from 'node:path';
import type { RunRecord, VmSpec } from '../types';
import { inJail, type JailLayout, jailLayout } from './jail';

/**
 * Every file of one Firecracker VM, as host paths, and the path Firecracker itself is given for
 * each (the same path when unjailed, the in-chroot path when jailed). Console files stay in the
 * VM folder even when jailed: Firecracker receives them as open fds, never by name.
 */
export interface VmPaths {
  mode: 'direct' | 'jailer';
  vmDir: string;
  jail: (JailLayout & { uid: number; gid: number }) | null;
  apiSocket: string;
  consoleFifo: string;
  consoleLog: string;
  stderrLog: string;
  logPath: string;
  metricsPath: string;
  vsockPath: string;
  /**
   * The memory a Diff restore merged from its chain: mapped by the restored VM for its whole
   * life, so it stays until the VM's next boot or restore.
   */
  restoredMemory: string;
  /** What the current VMM run's memory builds on (the base of its next Diff snapshot). */
  lineageFile: string;
  /** Where the jailed copies of artifacts go (null when unjailed: the spec's own paths are used). */
  staged: { kernel: string; initrd: string; disk(id: string): string; snapshotDir: string } | null;
  /** The path to hand to Firecracker for a host path. */
  api(hostPath: string): string;
}

export function vmPaths(
  vmDir: string,
  jail: { chrootBaseDir: string; firecrackerBin: string; vmId: string; uid: number; gid: number } | null,
): VmPaths {
  const console = {
    vmDir,
    consoleFifo: join(vmDir, 'console.in'),
    consoleLog: join(vmDir, 'console.log'),
    stderrLog: join(vmDir, 'firecracker.stderr'),
    restoredMemory: join(vmDir, 'memory.merged'),
    lineageFile: join(vmDir, 'snapshot-lineage.json'),
  };
  if (!jail) {
    return {
      mode: 'direct',
      ...console,
      jail: null,
      apiSocket: join(vmDir, 'firecracker.sock'),
      logPath: join(vmDir, 'firecracker.log'),
      metricsPath: join(vmDir, 'metrics.json'),
      vsockPath: join(vmDir, 'vsock.sock'),
      staged: null,
      api: (p) => p,
    };
  }
  const layout = jailLayout(jail.chrootBaseDir, jail.firecrackerBin, jail.vmId);
  const r = layout.root;
  return {
    mode: 'jailer',
    ...console,
    jail: { ...layout, uid: jail.uid, gid: jail.gid },
    apiSocket: join(r, 'api.sock'),
    logPath: join(r, 'firecracker.log'),
    metricsPath: join(r, 'metrics.json'),
    vsockPath: join(r, 'vsock.sock'),
    staged: {
      kernel: join(r, 'boot', 'vmlinux'),
      initrd: join(r, 'boot', 'initrd'),
      disk: (id) => join(r, 'disks', id),
      snapshotDir: join(r, 'snapshot'),
    },
    api: (p) => inJail(layout, p),
  };
}

/** The Firecracker-specific part of a RunRecord. */
export interface FirecrackerRecordExtra {
  mode: 'direct' | 'jailer';
  firecrackerVersion: string;
  consoleLog: string;
  stderrLog: string;
  logPath: string;
  metricsPath: string;
  vsockPath?: string;
  trackDirtyPages: boolean;
  jail?: {
    instanceDir: string;
    root: string;
    uid: number;
    gid: number;
    chrootBaseDir: string;
    firecrackerBin: string;
  };
}

export function recordExtra(
  paths: VmPaths,
  version: string,
  spec: Pick<VmSpec, 'vsockCid'>,
  trackDirtyPages: boolean,
  jailSource: { chrootBaseDir: string; firecrackerBin: string } | null,
): FirecrackerRecordExtra {
  return {
    mode: paths.mode,
    firecrackerVersion: version,
    consoleLog: paths.consoleLog,
    stderrLog: paths.stderrLog,
    logPath: paths.logPath,
    metricsPath: paths.metricsPath,
    ...(spec.vsockCid !== undefined ? { vsockPath: paths.vsockPath } : {}),
    trackDirtyPages,
    ...(paths.jail && jailSource
      ? {
          jail: {
            instanceDir: paths.jail.instanceDir,
            root: paths.jail.root,
            uid: paths.jail.uid,
            gid: paths.jail.gid,
            ...jailSource,
          },
        }
      : {}),
  };
}

/** Rebuilds the paths of a VM from its record (after an agent restart). */
export function pathsFromRecord(record: RunRecord): { paths: VmPaths; extra: FirecrackerRecordExtra } {
  const extra = record.extra as unknown as FirecrackerRecordExtra | undefined;
  if (!extra || (extra.mode !== 'direct' && extra.mode !== 'jailer')) {
    throw new Error(`run record of ${record.vmId} is not a Firecracker record`);
  }
  const paths = vmPaths(
    record.vmDir,
    extra.jail
      ? {
          chrootBaseDir: extra.jail.chrootBaseDir,
          firecrackerBin: extra.jail.firecrackerBin,
          vmId: record.vmId,
          uid: extra.jail.uid,
          gid: extra.jail.gid,
        }
      : null,
  );
  return { paths, extra };
}
