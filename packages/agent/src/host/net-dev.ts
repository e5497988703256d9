import { readFile } from 'node:fs/promises';

/** The counters of one network interface, as the kernel counts them on the host side. */
export interface InterfaceCounters {
  rxBytes: number;
  rxPackets: number;
  txBytes: number;
  txPackets: number;
}

/**
 * Parses `/proc/net/dev` (the same counters as `/sys/class/net/IF/statistics`), by interface.
 *
 * @example
 * parseNetDev(text).get('nq0a1b2c3d')?.rxBytes; // bytes the host received on that TAP
 */
export function parseNetDev(text: string): Map<string, InterfaceCounters> {
  const out = new Map<string, InterfaceCounters>();
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const name = line.slice(0, colon).trim();
    const f = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .map(Number);
    if (!name || f.length < 10 || f.some((n) => !Number.isFinite(n))) continue;
    out.set(name, { rxBytes: f[0]!, rxPackets: f[1]!, txBytes: f[8]!, txPackets: f[9]! });
  }
  return out;
}

/**
 * The interfaces' counters in the network namespace of process `pid` (a VMM sees its TAPs
 * where it opened them, also when the agent put VM networks in another namespace); an empty
 * map when the process is gone.
 */
export async function readNetDevOf(pid: number): Promise<Map<string, InterfaceCounters>> {
  try {
    return parseNetDev(await readFile(`/proc/${pid}/net/dev`, 'utf8'));
  } catch {
    return new Map();
  }
}
