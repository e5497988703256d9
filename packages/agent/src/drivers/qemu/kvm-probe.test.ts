import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { kvmProbeFirmware, probeKvm, runProbeFirmware } from './kvm-probe';

/** Pids of the QEMUs named `marker` (not the processes that merely mention it). */
function probePids(marker: string): number[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        const argv = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
        return argv[0]!.includes('qemu-system') && argv.includes(marker);
      } catch {
        return false;
      }
    })
    .map(Number);
}

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

  it('leaves no probe behind when its owner dies before the deadline', async () => {
    const module = fileURLToPath(new URL('./kvm-probe.ts', import.meta.url));
    const marker = `probe-owner-${process.pid}-${Date.now()}`;
    // -S: the vCPU never starts, so the marker never comes (as on an emulated KVM).
    const owner = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        '-e',
        `import { runProbeFirmware } from ${JSON.stringify(module)};
         await runProbeFirmware('qemu-system-x86_64', ['-accel', 'tcg', '-S', '-name', ${JSON.stringify(marker)}], 2000);`,
      ],
      { stdio: 'ignore' },
    );
    const deadline = Date.now() + 15_000;
    while (probePids(marker).length === 0) {
      if (Date.now() > deadline) throw new Error('the probe QEMU never started');
      await sleep(50);
    }
    owner.kill('SIGKILL');
    while (probePids(marker).length > 0) {
      if (Date.now() > deadline + 10_000)
        throw new Error(`probe QEMU ${probePids(marker)} outlived its owner`);
      await sleep(100);
    }
  }, 40_000);
});
