/**
 * Finding processes from tests and benchmarks: which VMMs run for a VM, and whether anything
 * is left behind. Reads /proc; zombies and the calling process do not count.
 */
import fs from 'node:fs';

/** Live processes whose NUL-separated command line satisfies `match`. */
export function pidsWhere(match: (cmdline: string) => boolean): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const cmdline = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      const state = fs.readFileSync(`/proc/${entry}/stat`, 'utf8').split(') ')[1]?.[0];
      if (state !== 'Z' && match(cmdline)) pids.push(Number(entry));
    } catch {
      // The process ended while we looked.
    }
  }
  return pids;
}

/** QEMU processes running one VM, found by the `-name nqvm-<id>` the QEMU driver gives them. */
export function qemuPidsOf(vmId: string): number[] {
  return pidsWhere((c) => c.includes(`nqvm-${vmId}`) && /(^|\/)qemu-system[^\0]*\0/.test(c));
}
