import { readFileSync } from 'node:fs';
import type { BuiltinGuest as TestGuest } from '@nqvm/builtin-guest';

/** The QEMU binary that {@link qemuArgsForTestGuest} is written for. */
export const TEST_GUEST_QEMU = 'qemu-system-x86_64';

/** `cpu MHz` of the first CPU in /proc/cpuinfo text, in kHz. */
export function parseTscKhz(cpuinfo: string): number {
  const m = /^cpu MHz\s*:\s*([0-9.]+)/m.exec(cpuinfo);
  if (!m) throw new Error('no "cpu MHz" line in /proc/cpuinfo');
  return Math.round(Number(m[1]) * 1000);
}

/**
 * The host's TSC frequency in kHz, for the guest's `tsc_early_khz=`: under TCG a busy host
 * otherwise makes the guest's clock calibration hang forever.
 */
export function hostTscKhz(): number {
  return parseTscKhz(readFileSync('/proc/cpuinfo', 'utf8'));
}

/**
 * Kernel command line for the test guest. `root=/dev/vda` makes the initramfs switch to the
 * root disk when one is attached (it stays in the initramfs otherwise); `panic=-1` turns a
 * panic into a reboot, which `-no-reboot` turns into a QEMU exit.
 *
 * @example
 * guestBootArgs('nqvm.ip=10.0.2.15/24 nqvm.gw=10.0.2.2 nqvm.hostname=web1')
 */
export function guestBootArgs(extra?: string): string {
  const base = `console=ttyS0 quiet panic=-1 tsc_early_khz=${hostTscKhz()} root=/dev/vda rw`;
  return extra?.trim() ? `${base} ${extra.trim()}` : base;
}

export interface TestGuestQemuOptions {
  /** Guest RAM, default 128. */
  memMib?: number;
  /** Serial console on a unix socket (QEMU listens); default: QEMU's stdin/stdout. */
  serialSocket?: string;
  /** QMP on a unix socket (QEMU listens). */
  qmpSocket?: string;
  /**
   * Raw disk attached read-write as /dev/vda. Default: the cached `g.rootfs` with
   * `snapshot=on` (writes go to a throw-away overlay). `false`: no disk, initramfs only.
   */
  rootDisk?: string | false;
  /** Extra kernel command line, e.g. `nqvm.ip=... nqvm.hostname=...`. */
  append?: string;
}

/** QEMU splits option values on commas; a literal comma is written twice. */
function qemuValue(path: string): string {
  return path.replaceAll(',', ',,');
}

/**
 * Arguments (without the binary, {@link TEST_GUEST_QEMU}) that boot the test guest on a TCG
 * microvm. Append your own `-netdev`/`-device` pairs for networking.
 *
 * @example
 * spawn(TEST_GUEST_QEMU, qemuArgsForTestGuest(guest, { serialSocket: s, qmpSocket: q }));
 */
export function qemuArgsForTestGuest(g: TestGuest, o: TestGuestQemuOptions = {}): string[] {
  const args = [
    '-accel',
    'tcg',
    '-M',
    'microvm',
    '-cpu',
    'max',
    '-m',
    String(o.memMib ?? 128),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-kernel',
    g.kernel,
    '-initrd',
    g.initrd,
    '-append',
    guestBootArgs(o.append),
    '-serial',
    o.serialSocket ? `unix:${qemuValue(o.serialSocket)},server=on,wait=off` : 'stdio',
  ];
  if (o.qmpSocket) args.push('-qmp', `unix:${qemuValue(o.qmpSocket)},server=on,wait=off`);
  if (o.rootDisk !== false) {
    const file = qemuValue(o.rootDisk ?? g.rootfs);
    const snapshot = o.rootDisk === undefined ? ',snapshot=on' : '';
    args.push(
      '-drive',
      `id=root,file=${file},format=raw,if=none${snapshot}`,
      '-device',
      'virtio-blk-device,drive=root',
    );
  }
  return args;
}
