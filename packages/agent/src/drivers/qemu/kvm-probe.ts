import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Whether KVM can run an ordinary guest, decided by running one: the mere presence of /dev/kvm
 * proves nothing (a paravirtualised nested KVM such as kvm_pvm opens fine, then emulates every
 * privileged-mode guest instruction, so a Debian kernel crawls for a minute and dies).
 *
 * The probe boots a 64 KiB firmware image that does what every x86 kernel does first (real mode
 * -> protected mode -> long mode with paging), then spins 50 million loop iterations and prints
 * a marker on COM1. Natively that takes ~20 ms; under instruction emulation (measured on kvm_pvm:
 * ~1.2 us per iteration) it would take a minute, so a 2 s deadline separates the two with a wide
 * margin on both sides. QEMU failing to start the vCPU at all (e.g. "failed to set MSR 0x10a"
 * with `-cpu host` on kvm_pvm) fails the probe within milliseconds.
 */

export const KVM_PROBE_MARKER = 'NQVM-KVM-OK';

/**
 * Code at the start of the ROM (mapped at 0xffff0000), assembled with GNU as from
 * `kvm-probe-firmware.S` beside this file:
 * `as --64 -o p.o kvm-probe-firmware.S && ld -m elf_x86_64 -e 0xffff0000 -Ttext=0xffff0000 --oformat binary -o p.bin p.o`
 */
const FIRMWARE_CODE =
  'fa2e660f0116e8000f20c06683c8010f22c066ea1a00ffff080066b810008ed88ec08ed0bf0010000031c0b900100000' +
  'f3abc7050010000003200000c7050020000003300000c7051820000003400000c7050030000083000000c705f84f0000' +
  '8300e0ff0f20e083c8200f22e0b8001000000f22d8b9800000c00f320d000100000f300f20c00d000000800f22c0ea95' +
  '00ffff1800b980f0fa02ffc975fc488d350f00000066baf803ac84c07403eeebf8f4ebfd4e51564d2d4b564d2d4f4b0a' +
  '008db400008d74000000000000000000ffff0000009acf00ffff00000092cf00ffff0000009aaf001f00c800ffff';
/** At the reset vector (ROM offset 0xfff0): a 16-bit `jmp` to the start of the ROM. */
const RESET_VECTOR = 'e90d00';

/** The probe firmware image: QEMU requires a multiple of 64 KiB for `-bios`. */
export function kvmProbeFirmware(): Buffer {
  const rom = Buffer.alloc(0x10000);
  Buffer.from(FIRMWARE_CODE, 'hex').copy(rom, 0);
  Buffer.from(RESET_VECTOR, 'hex').copy(rom, 0xfff0);
  return rom;
}

export interface ProbeResult {
  ok: boolean;
  /** Why it failed (or "marker after N ms"), for the host report. */
  reason: string;
  elapsedMs: number;
}

/**
 * Runs the probe firmware under the given accelerator arguments and waits for its marker.
 *
 * @example
 * await runProbeFirmware('qemu-system-x86_64', ['-accel', 'kvm', '-cpu', 'host'], 2_000);
 */
export async function runProbeFirmware(
  qemuBinary: string,
  accelArgs: readonly string[],
  timeoutMs: number,
): Promise<ProbeResult> {
  const dir = await mkdtemp(join(tmpdir(), 'nqvm-kvm-probe-'));
  const firmware = join(dir, 'probe.rom');
  await writeFile(firmware, kvmProbeFirmware());
  const started = performance.now();
  const elapsed = () => Math.round(performance.now() - started);
  try {
    return await new Promise<ProbeResult>((resolve) => {
      // Under coreutils `timeout`, in a process group of its own: a probe that spins (emulated
      // KVM) ends even when the agent is killed before its own deadline fires.
      const child = spawn(
        'timeout',
        [
          '--signal=KILL',
          `${Math.ceil(timeoutMs / 1000) + 3}s`,
          qemuBinary,
          ...accelArgs,
          '-M',
          'microvm',
          '-m',
          '16',
          '-nodefaults',
          '-no-user-config',
          '-display',
          'none',
          '-bios',
          firmware,
          '-serial',
          'stdio',
        ],
        { stdio: ['pipe', 'pipe', 'pipe'], detached: true },
      );
      let out = '';
      let err = '';
      let settled = false;
      const finish = (result: ProbeResult) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        try {
          if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
        } catch {
          // The group is gone already.
        }
        resolve(result);
      };
      const timer = setTimeout(
        () => finish({ ok: false, reason: `no probe marker within ${timeoutMs} ms`, elapsedMs: elapsed() }),
        timeoutMs,
      );
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
        out += chunk;
        if (out.includes(KVM_PROBE_MARKER))
          finish({ ok: true, reason: `marker after ${elapsed()} ms`, elapsedMs: elapsed() });
      });
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
        err += chunk;
      });
      child.on('error', (e) =>
        finish({ ok: false, reason: `cannot run ${qemuBinary}: ${e.message}`, elapsedMs: elapsed() }),
      );
      child.on('exit', (code, signal) => {
        const why = err.trim().split('\n')[0] || `exited with ${signal ?? `code ${code}`}`;
        finish({ ok: false, reason: `qemu stopped before the probe marker: ${why}`, elapsedMs: elapsed() });
      });
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Probes KVM with the CPU model the driver boots KVM guests with. */
export async function probeKvm(qemuBinary: string, timeoutMs = 2_000): Promise<ProbeResult> {
  try {
    await access('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch (e) {
    return { ok: false, reason: `/dev/kvm is not usable: ${(e as Error).message}`, elapsedMs: 0 };
  }
  return runProbeFirmware(qemuBinary, ['-accel', 'kvm', '-cpu', 'host'], timeoutMs);
}
