/**
 * Firecracker refuses API resource ids (`drive_id`, `iface_id`) with anything but `_` and
 * alphanumerics ("API Resource IDs can only contain alphanumeric characters and underscores.",
 * its `checked_id`), while nqvm's disk ids hold `-` (`vol-0a1b2c3d`). The driver gives each id
 * to Firecracker with every other character made `_`; the VM spec keeps nqvm's own id.
 *
 * @example
 * firecrackerId('vol-0a1b2c3d'); // 'vol_0a1b2c3d'
 */
export function firecrackerId(id: string): string {
  return id.replace(/[^A-Za-z0-9_]/g, '_');
}

/**
 * Whether an id Firecracker reported (or a snapshot recorded: before the mapping, the simulator
 * let `vol-0a1b2c3d` through) names the spec's device.
 */
export function sameFirecrackerId(recorded: string, specId: string): boolean {
  return firecrackerId(recorded) === firecrackerId(specId);
}

/** Refuses ids that would reach Firecracker empty or as one id for two devices. */
export function checkFirecrackerIds(what: 'disk' | 'NIC', devices: { id: string }[]): void {
  const seen = new Map<string, string>();
  for (const { id } of devices) {
    if (id === '') throw new Error(`a ${what} has an empty id`);
    const mapped = firecrackerId(id);
    const other = seen.get(mapped);
    if (other !== undefined) {
      throw new Error(`${what}s ${other} and ${id} would both be Firecracker id ${mapped}`);
    }
    seen.set(mapped, id);
  }
}
