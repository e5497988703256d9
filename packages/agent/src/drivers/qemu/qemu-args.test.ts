import { describe, expect, it } from 'vitest';
import type { VmSpec } from '../types';
import { buildQemuArgs, checkSpec, guestCmdline, incomingFromFileUri, migrateToFileUri } from './qemu-args';

const spec: VmSpec = {
  id: 'a1b2c3d4-0000-4000-8000-000000000001',
  generation: 1,
  vcpu: 2,
  memMib: 256,
  kernelPath: '/images/vmlinuz',
  initrdPath: '/images/initrd.img',
  bootArgs: 'console=ttyS0 quiet',
  disks: [
    { id: 'cidata', path: '/vms/x/cidata.img', format: 'raw', readOnly: true, isRoot: false },
    { id: 'root', path: '/vms/x/root,1.qcow2', format: 'qcow2', readOnly: false, isRoot: true },
  ],
  nics: [{ id: 'eth0', tap: 'nq3f2a9c1d0e', mac: '02:AA:bb:cc:dd:ee' }],
  vmDir: '/var/lib/nqvm/vms/x',
};

/** The value following `flag`, for each occurrence. */
function values(args: string[], flag: string): string[] {
  return args.flatMap((a, i) => (a === flag ? [args[i + 1] ?? ''] : []));
}

describe('buildQemuArgs', () => {
  it('builds a microvm with direct kernel boot, QEMU-held console and QMP in vmDir', () => {
    const args = buildQemuArgs({ spec, accel: 'tcg', tscKhz: 2_596_154 });
    expect(values(args, '-M')).toEqual(['microvm']);
    expect(values(args, '-accel')).toEqual(['tcg']);
    expect(values(args, '-cpu')).toEqual(['max']);
    expect(values(args, '-smp')).toEqual(['2']);
    expect(values(args, '-m')).toEqual(['256']);
    expect(args).toEqual(expect.arrayContaining(['-nodefaults', '-no-user-config', '-no-reboot']));
    expect(values(args, '-display')).toEqual(['none']);
    expect(values(args, '-kernel')).toEqual(['/images/vmlinuz']);
    expect(values(args, '-initrd')).toEqual(['/images/initrd.img']);
    expect(values(args, '-append')).toEqual(['console=ttyS0 quiet tsc_early_khz=2596154']);
    expect(values(args, '-chardev')).toEqual([
      'socket,id=con0,path=/var/lib/nqvm/vms/x/console.sock,server=on,wait=off,logfile=/var/lib/nqvm/vms/x/console.log,logappend=on',
    ]);
    expect(values(args, '-serial')).toEqual(['chardev:con0']);
    expect(values(args, '-qmp')).toEqual(['unix:/var/lib/nqvm/vms/x/qmp.sock,server=on,wait=off']);
    expect(values(args, '-pidfile')).toEqual(['/var/lib/nqvm/vms/x/qemu.pid']);
    expect(args).not.toContain('-incoming');
  });

  it('attaches disks (root first, commas doubled) and TAP NICs on virtio-mmio', () => {
    const args = buildQemuArgs({ spec, accel: 'tcg' });
    expect(values(args, '-drive')).toEqual([
      'id=disk-root,file=/vms/x/root,,1.qcow2,format=qcow2,if=none,werror=stop,rerror=report',
      'id=disk-cidata,file=/vms/x/cidata.img,format=raw,if=none,readonly=on,werror=stop,rerror=report',
    ]);
    expect(values(args, '-netdev')).toEqual(['tap,id=net-eth0,ifname=nq3f2a9c1d0e,script=no,downscript=no']);
    expect(values(args, '-device')).toEqual([
      'virtio-blk-device,drive=disk-root',
      'virtio-blk-device,drive=disk-cidata',
      'virtio-net-device,netdev=net-eth0,mac=02:aa:bb:cc:dd:ee',
    ]);
  });

  it('uses the host CPU and no tsc_early_khz under KVM', () => {
    const args = buildQemuArgs({ spec, accel: 'kvm', tscKhz: 2_596_154 });
    expect(values(args, '-accel')).toEqual(['kvm']);
    expect(values(args, '-cpu')).toEqual(['host']);
    expect(values(args, '-append')).toEqual(['console=ttyS0 quiet']);
  });

  it('restores paused from a state file, and sizes the TCG cache when asked', () => {
    const args = buildQemuArgs({
      spec,
      accel: 'tcg',
      tcgTbSizeMib: 64,
      incomingStatePath: '/snaps/s1/vmstate',
    });
    expect(values(args, '-accel')).toEqual(['tcg,tb-size=64']);
    expect(values(args, '-incoming')).toEqual(["exec:cat '/snaps/s1/vmstate'"]);
    expect(args).toContain('-S');
  });

  it('adds a virtio-serial agent channel when the spec asks for one', () => {
    const args = buildQemuArgs({ spec: { ...spec, vsockCid: 3 }, accel: 'tcg' });
    expect(values(args, '-device')).toEqual(
      expect.arrayContaining(['virtio-serial-device', 'virtserialport,chardev=agent0,name=org.nqvm.agent']),
    );
  });
});

describe('guestCmdline', () => {
  it('adds tsc_early_khz under TCG only when absent and known', () => {
    expect(guestCmdline('console=ttyS0', 'tcg', 1000)).toBe('console=ttyS0 tsc_early_khz=1000');
    expect(guestCmdline('tsc_early_khz=5 quiet', 'tcg', 1000)).toBe('tsc_early_khz=5 quiet');
    expect(guestCmdline('quiet', 'tcg')).toBe('quiet');
    expect(guestCmdline('quiet', 'kvm', 1000)).toBe('quiet');
  });
});

describe('migration URIs', () => {
  it('quote the state path for the shell QEMU runs', () => {
    expect(migrateToFileUri('/a b/state')).toBe("exec:cat > '/a b/state'");
    expect(incomingFromFileUri('/a b/state')).toBe("exec:cat '/a b/state'");
    expect(() => migrateToFileUri("/x'; rm -rf /")).toThrow();
  });
});

describe('checkSpec', () => {
  it('accepts a sound spec', () => {
    expect(checkSpec(spec)).toEqual([]);
  });

  it('names every problem', () => {
    const problems = checkSpec({
      ...spec,
      id: 'bad id!',
      vcpu: 0,
      memMib: 8,
      kernelPath: 'relative/vmlinuz',
      vmDir: "/tmp/it's",
      bootArgs: 'a\nb',
      disks: [
        { id: 'root', path: '/a', format: 'vmdk' as 'raw', readOnly: false, isRoot: true },
        { id: 'root', path: '/b', format: 'raw', readOnly: false, isRoot: true },
      ],
      nics: [{ id: 'eth0', tap: 'a-name-far-too-long-for-linux', mac: 'zz:00:00:00:00:00' }],
    });
    expect(problems).toHaveLength(11);
  });
});
