import { isAbsolute, join } from 'node:path';
import type { VmSpec } from '../types';

/** Where a QEMU VM keeps its host-side files, all inside the agent-owned `vmDir`. */
export interface QemuVmPaths {
  qmpSocket: string;
  consoleSocket: string;
  /** Console output as QEMU logs it (O_APPEND), rotated by the agent's ConsoleHub. */
  consoleLog: string;
  pidFile: string;
  /** QEMU's own stdout/stderr. */
  vmmLog: string;
  /** virtio-serial host-to-guest channel, when the spec asks for one. */
  agentSocket: string;
}

export function qemuVmPaths(vmDir: string): QemuVmPaths {
  return {
    qmpSocket: join(vmDir, 'qmp.sock'),
    consoleSocket: join(vmDir, 'console.sock'),
    consoleLog: join(vmDir, 'console.log'),
    pidFile: join(vmDir, 'qemu.pid'),
    vmmLog: join(vmDir, 'qemu.log'),
    agentSocket: join(vmDir, 'agent.sock'),
  };
}

export type QemuAccel = 'kvm' | 'tcg';

export interface QemuLaunch {
  spec: VmSpec;
  accel: QemuAccel;
  /** Host TSC frequency; added to the guest command line as `tsc_early_khz` under TCG. */
  tscKhz?: number;
  /** TCG translation cache size; QEMU's default (1 GiB) costs host RSS as it fills. */
  tcgTbSizeMib?: number;
  /** Restore: the saved state file, loaded with `-incoming exec:cat FILE`; the VM stays paused. */
  incomingStatePath?: string;
}

const SPEC_ID = /^[A-Za-z0-9][A-Za-z0-9-]{0,63}$/;
const DISK_ID = /^[a-z0-9-]{1,32}$/;
const NIC_ID = /^[a-z0-9-]{1,15}$/;
const TAP_NAME = /^[A-Za-z0-9_.-]{1,15}$/;
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
/** Paths reach QEMU's option parser and, for migration, /bin/sh: keep them plain. */
const SAFE_PATH = /^\/[^\0'\n\r]*$/;

/** What is wrong with a spec for QEMU, as human-readable problems (empty when it is fine). */
export function checkSpec(spec: VmSpec): string[] {
  const problems: string[] = [];
  const path = (what: string, p: string | undefined) => {
    if (!p || !isAbsolute(p) || !SAFE_PATH.test(p)) problems.push(`${what} must be a plain absolute path`);
  };
  if (!SPEC_ID.test(spec.id)) problems.push('id must be [A-Za-z0-9-], at most 64 characters');
  if (!Number.isInteger(spec.vcpu) || spec.vcpu < 1 || spec.vcpu > 64) problems.push('vcpu must be 1..64');
  if (!Number.isInteger(spec.memMib) || spec.memMib < 16) problems.push('memMib must be an integer >= 16');
  path('vmDir', spec.vmDir);
  path('kernelPath', spec.kernelPath);
  if (spec.initrdPath !== undefined) path('initrdPath', spec.initrdPath);
  if (/[\0\n\r]/.test(spec.bootArgs)) problems.push('bootArgs must be one line');
  const seen = new Set<string>();
  for (const d of spec.disks) {
    if (!DISK_ID.test(d.id) || seen.has(`d:${d.id}`))
      problems.push(`disk id "${d.id}" is invalid or repeated`);
    seen.add(`d:${d.id}`);
    if (d.format !== 'raw' && d.format !== 'qcow2')
      problems.push(`disk ${d.id}: format must be raw or qcow2`);
    path(`disk ${d.id} path`, d.path);
  }
  if (spec.disks.filter((d) => d.isRoot).length > 1) problems.push('at most one disk can be the root disk');
  for (const n of spec.nics) {
    if (!NIC_ID.test(n.id) || seen.has(`n:${n.id}`)) problems.push(`nic id "${n.id}" is invalid or repeated`);
    seen.add(`n:${n.id}`);
    if (!TAP_NAME.test(n.tap)) problems.push(`nic ${n.id}: tap name must be 1-15 of [A-Za-z0-9_.-]`);
    if (!MAC.test(n.mac)) problems.push(`nic ${n.id}: mac must look like 02:00:00:00:00:01`);
  }
  return problems;
}

/**
 * What a disk error does. A write the host cannot complete (its disk is full, or failing) pauses
 * the guest instead of failing in it: the guest's file system never sees a lost write (ext4
 * would go read-only, an application would lose data), and QEMU retries the write on resume.
 * The agent resumes a guest paused for a full disk once space returns. A failed read is
 * reported to the guest: there is no data to keep safe, and a pause would have no remedy.
 */
export const DRIVE_ERROR_POLICY = 'werror=stop,rerror=report';

/** The QEMU drive id of disk `diskId` (BLOCK_IO_ERROR events name it as their `device`). */
export function driveId(diskId: string): string {
  return `disk-${diskId}`;
}

/** Commas separate QEMU sub-options; a literal comma in a value is written twice. */
function optValue(value: string): string {
  return value.replaceAll(',', ',,');
}

/** Single-quotes a path for the `/bin/sh -c` QEMU runs behind `exec:` migration URIs. */
export function shellQuote(value: string): string {
  if (value.includes("'")) throw new Error(`cannot quote a path holding a single quote: ${value}`);
  return `'${value}'`;
}

/** `bootArgs`, plus `tsc_early_khz=` under TCG when absent: without it a busy host hangs the guest. */
export function guestCmdline(bootArgs: string, accel: QemuAccel, tscKhz?: number): string {
  const args = bootArgs.trim();
  if (accel !== 'tcg' || !tscKhz || /(^|\s)tsc_early_khz=/.test(args)) return args;
  return `${args} tsc_early_khz=${Math.round(tscKhz)}`.trim();
}

/** The `-incoming` URI that loads a state file saved by {@link migrateToFileUri}. */
export function incomingFromFileUri(statePath: string): string {
  return `exec:cat ${shellQuote(statePath)}`;
}

/** The `migrate` URI that saves the VM state to a file (QEMU 7.2 has no `file:` URI). */
export function migrateToFileUri(statePath: string): string {
  return `exec:cat > ${shellQuote(statePath)}`;
}

/**
 * The full `qemu-system-x86_64` argument list for a microVM: direct kernel boot, virtio-mmio
 * devices, the serial console held by QEMU itself (a socket server that logs to a file), QMP.
 *
 * @example
 * spawn('qemu-system-x86_64', buildQemuArgs({ spec, accel: 'tcg', tscKhz: 2_596_154 }), { detached: true });
 */
export function buildQemuArgs(launch: QemuLaunch): string[] {
  const { spec, accel } = launch;
  const p = qemuVmPaths(spec.vmDir);
  const accelOpt = accel === 'tcg' && launch.tcgTbSizeMib ? `tcg,tb-size=${launch.tcgTbSizeMib}` : accel;
  const args = [
    '-name',
    `nqvm-${spec.id}`,
    '-accel',
    accelOpt,
    '-M',
    'microvm',
    '-cpu',
    accel === 'kvm' ? 'host' : 'max',
    '-smp',
    String(spec.vcpu),
    '-m',
    String(spec.memMib),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    // A guest reboot ends the process, as with Firecracker; the restart policy decides what next.
    '-no-reboot',
    '-kernel',
    spec.kernelPath,
    ...(spec.initrdPath ? ['-initrd', spec.initrdPath] : []),
    '-append',
    guestCmdline(spec.bootArgs, accel, launch.tscKhz),
    '-chardev',
    `socket,id=con0,path=${optValue(p.consoleSocket)},server=on,wait=off,logfile=${optValue(p.consoleLog)},logappend=on`,
    '-serial',
    'chardev:con0',
    '-qmp',
    `unix:${optValue(p.qmpSocket)},server=on,wait=off`,
    '-pidfile',
    p.pidFile,
  ];
  // The root disk first, so the guest names it /dev/vda.
  const disks = [...spec.disks].sort((a, b) => Number(b.isRoot) - Number(a.isRoot));
  for (const d of disks) {
    args.push(
      '-drive',
      `id=${driveId(d.id)},file=${optValue(d.path)},format=${d.format},if=none${d.readOnly ? ',readonly=on' : ''},${DRIVE_ERROR_POLICY}`,
      '-device',
      `virtio-blk-device,drive=${driveId(d.id)}`,
    );
  }
  for (const n of spec.nics) {
    args.push(
      '-netdev',
      `tap,id=net-${n.id},ifname=${n.tap},script=no,downscript=no`,
      '-device',
      `virtio-net-device,netdev=net-${n.id},mac=${n.mac.toLowerCase()}`,
    );
  }
  if (spec.vsockCid !== undefined) {
    args.push(
      '-device',
      'virtio-serial-device',
      '-chardev',
      `socket,id=agent0,path=${optValue(p.agentSocket)},server=on,wait=off`,
      '-device',
      'virtserialport,chardev=agent0,name=org.nqvm.agent',
    );
  }
  if (launch.incomingStatePath) {
    args.push('-S', '-incoming', incomingFromFileUri(launch.incomingStatePath));
  }
  return args;
}
