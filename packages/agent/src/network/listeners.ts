/**
 * Which local ports are taken, from /proc/net/{tcp,tcp6,udp,udp6}: a port forward must not
 * shadow a service the host already runs.
 */

/** TCP_LISTEN in /proc/net/tcp's `st` column. */
const TCP_LISTEN = '0A';

/**
 * Local ports of the sockets in one /proc/net table: listening ones for TCP, every bound one
 * for UDP (UDP has no listen state).
 *
 * @example
 * takenPorts(await readFile('/proc/net/tcp', 'utf8'), 'tcp'); // Set { 22, 5432 }
 */
export function takenPorts(table: string, proto: 'tcp' | 'udp'): Set<number> {
  const ports = new Set<number>();
  for (const line of table.split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/);
    const local = fields[1];
    const state = fields[3];
    if (!local || !state) continue;
    if (proto === 'tcp' && state !== TCP_LISTEN) continue;
    const port = Number.parseInt(local.slice(local.lastIndexOf(':') + 1), 16);
    if (Number.isInteger(port) && port > 0) ports.add(port);
  }
  return ports;
}

export function procNetFiles(proto: 'tcp' | 'udp'): string[] {
  return [`/proc/net/${proto}`, `/proc/net/${proto}6`];
}
