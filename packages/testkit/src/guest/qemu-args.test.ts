import type { BuiltinGuest as TestGuest } from '@nqvm/builtin-guest';
import { describe, expect, it } from 'vitest';
import { guestBootArgs, hostTscKhz, parseTscKhz, qemuArgsForTestGuest } from './qemu-args';

const guest: TestGuest = {
  dir: '/cache/abc',
  kernel: '/cache/abc/vmlinuz',
  initrd: '/cache/abc/initrd.img',
  rootfs: '/cache/abc/rootfs.ext4',
  kernelVersion: '6.1.0-56-cloud-amd64',
};

function valueAfter(args: string[], flag: string): string | undefined {
  const i = args.indexOf(flag);
  return i >= 0 ? args[i + 1] : undefined;
}

describe('tsc_early_khz', () => {
  it('parses the first cpu MHz line', () => {
    expect(parseTscKhz('processor\t: 0\ncpu MHz\t\t: 2596.154\ncpu MHz\t\t: 1.0\n')).toBe(2596154);
    expect(() => parseTscKhz('processor : 0\n')).toThrow(/cpu MHz/);
  });

  it('reads this host', () => {
    expect(hostTscKhz()).toBeGreaterThan(100_000);
  });
});

describe('guestBootArgs', () => {
  it('has the console, the TSC frequency and the root disk', () => {
    const args = guestBootArgs();
    expect(args).toMatch(/^console=ttyS0 /);
    expect(args).toContain(`tsc_early_khz=${hostTscKhz()}`);
    expect(args).toContain('root=/dev/vda');
  });

  it('appends extra parameters', () => {
    expect(guestBootArgs(' nqvm.hostname=web1 ')).toMatch(/ nqvm\.hostname=web1$/);
  });
});

describe('qemuArgsForTestGuest', () => {
  it('boots a TCG microvm with the cached root disk as a throw-away snapshot', () => {
    const args = qemuArgsForTestGuest(guest);
    expect(valueAfter(args, '-accel')).toBe('tcg');
    expect(valueAfter(args, '-M')).toBe('microvm');
    expect(valueAfter(args, '-m')).toBe('128');
    expect(valueAfter(args, '-kernel')).toBe(guest.kernel);
    expect(valueAfter(args, '-initrd')).toBe(guest.initrd);
    expect(valueAfter(args, '-append')).toContain('tsc_early_khz=');
    expect(valueAfter(args, '-serial')).toBe('stdio');
    expect(valueAfter(args, '-drive')).toBe(`id=root,file=${guest.rootfs},format=raw,if=none,snapshot=on`);
    expect(valueAfter(args, '-device')).toBe('virtio-blk-device,drive=root');
    expect(args).not.toContain('-qmp');
  });

  it('uses sockets, a writable disk and escapes commas', () => {
    const args = qemuArgsForTestGuest(guest, {
      memMib: 256,
      serialSocket: '/run/a,b/serial.sock',
      qmpSocket: '/run/q.sock',
      rootDisk: '/vm/disk.img',
      append: 'nqvm.ip=10.0.0.2/24',
    });
    expect(valueAfter(args, '-m')).toBe('256');
    expect(valueAfter(args, '-serial')).toBe('unix:/run/a,,b/serial.sock,server=on,wait=off');
    expect(valueAfter(args, '-qmp')).toBe('unix:/run/q.sock,server=on,wait=off');
    expect(valueAfter(args, '-drive')).toBe('id=root,file=/vm/disk.img,format=raw,if=none');
    expect(valueAfter(args, '-append')).toMatch(/ nqvm\.ip=10\.0\.0\.2\/24$/);
  });

  it('attaches no disk when rootDisk is false', () => {
    const args = qemuArgsForTestGuest(guest, { rootDisk: false });
    expect(args).not.toContain('-drive');
    expect(args).not.toContain('-device');
  });
});
