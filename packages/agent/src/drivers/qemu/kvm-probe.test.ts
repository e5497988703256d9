import { describe, expect, it } from 'vitest';
import { kvmProbeFirmware, probeKvm, runProbeFirmware } from './kvm-probe';

describe('KVM probe', () => {
  it('builds a 64 KiB ROM with a jump at the reset vector', () => {
    const rom = kvmProbeFirmware();
    expect(rom.length).toBe(0x10000);
    expect(rom.subarray(0xfff0, 0xfff3)).toEqual(Buffer.from([0xe9, 0x0d, 0x00]));
    expect(rom.includes('NQVM-KVM-OK\n')).toBe(true);
  });

  it('runs to its marker on an accelerator that works (TCG proves the firmware right)', async () => {
    const result = await runProbeFirmware('qemu-system-x86_64', ['-accel', 'tcg', '-cpu', 'max'], 10_000);
    expect(result, result.reason).toMatchObject({ ok: true });
  });

  it('reports failure with a reason when QEMU cannot start the guest', async () => {
    const result = await runProbeFirmware(
      'qemu-system-x86_64',
      ['-accel', 'tcg', '-cpu', 'no-such-cpu'],
      5_000,
    );
    expect(result.ok).toBe(false);
    expect(result.reason).toMatch(/no-such-cpu|unable to find CPU model/i);
    const missing = await runProbeFirmware('/nonexistent/qemu', [], 5_000);
    expect(missing).toMatchObject({ ok: false });
  });

  it('answers for this host within its deadline', async () => {
    const started = Date.now();
    const result = await probeKvm('qemu-system-x86_64', 2_000);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(typeof result.ok).toBe('boolean');
    expect(result.reason.length).toBeGreaterThan(0);
  });
});
