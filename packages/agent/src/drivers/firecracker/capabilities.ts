/**
 * What each Firecracker version accepts, so the driver never sends an endpoint or a field the
 * running version lacks. `since` is the earliest version proven by the official specs of 1.1.0,
 * 1.13.1 and 1.16.1 (capabilities.test.ts checks every row's evidence against them) or stated in
 * Firecracker's notes; between two spec files the driver stays conservative.
 */

export const MIN_FIRECRACKER_VERSION = '1.1.0';

export type FirecrackerFeature =
  | 'snapshot-mem-backend'
  | 'entropy'
  | 'cpu-config'
  | 'serial-input-tty-or-fifo'
  | 'acpi-devices'
  | 'huge-pages'
  | 'logger-trace-off'
  | 'snapshot-network-overrides'
  | 'snapshot-load-track-dirty-pages'
  | 'diff-snapshot-without-dirty-tracking'
  | 'mmds-imds-compat'
  | 'serial-out'
  | 'pmem'
  | 'memory-hotplug'
  | 'nic-mtu'
  | 'snapshot-vsock-override'
  | 'snapshot-clock-realtime';

export type CapabilityEvidence =
  | { endpoint: string }
  | { field: [definition: string, property: string] }
  | { notes: string };

export interface CapabilityRow {
  feature: FirecrackerFeature;
  since: string;
  evidence: CapabilityEvidence;
  /** What the driver does with it. */
  use: string;
}

export const CAPABILITY_TABLE: readonly CapabilityRow[] = [
  {
    feature: 'snapshot-mem-backend',
    since: '1.1.0',
    evidence: { field: ['SnapshotLoadParams', 'mem_backend'] },
    use: 'snapshot load sends mem_backend {File}, never the deprecated mem_file_path',
  },
  {
    feature: 'entropy',
    since: '1.4.0',
    evidence: { endpoint: 'PUT /entropy' },
    use: 'boot adds a virtio-rng device',
  },
  { feature: 'cpu-config', since: '1.4.0', evidence: { endpoint: 'PUT /cpu-config' }, use: 'reported only' },
  {
    feature: 'serial-input-tty-or-fifo',
    since: '1.5.0',
    evidence: { notes: 'serial input is wired only from a TTY or FIFO stdin' },
    use: 'stdin is always a FIFO opened read-write',
  },
  {
    feature: 'acpi-devices',
    since: '1.8.0',
    evidence: { notes: 'virtio-mmio devices also described in ACPI tables' },
    use: 'reported: older versions need CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES in the guest kernel',
  },
  {
    feature: 'huge-pages',
    since: '1.13.1',
    evidence: { field: ['MachineConfiguration', 'huge_pages'] },
    use: 'reported only',
  },
  {
    feature: 'logger-trace-off',
    since: '1.13.1',
    evidence: { field: ['Logger', 'module'] },
    use: 'the driver only sends levels every version knows',
  },
  {
    feature: 'snapshot-network-overrides',
    since: '1.13.1',
    evidence: { field: ['SnapshotLoadParams', 'network_overrides'] },
    use: 'restore points each NIC at the TAP of the new spec',
  },
  {
    feature: 'snapshot-load-track-dirty-pages',
    since: '1.13.1',
    evidence: { field: ['SnapshotLoadParams', 'track_dirty_pages'] },
    use: 'restore sends track_dirty_pages, else the older enable_diff_snapshots',
  },
  {
    feature: 'diff-snapshot-without-dirty-tracking',
    since: '1.13.0',
    evidence: { notes: 'diff snapshots through mincore(2) when track_dirty_pages is off' },
    use: 'Diff snapshots allowed without track_dirty_pages',
  },
  {
    feature: 'mmds-imds-compat',
    since: '1.13.1',
    evidence: { field: ['MmdsConfig', 'imds_compat'] },
    use: 'reported only',
  },
  { feature: 'serial-out', since: '1.16.1', evidence: { endpoint: 'PUT /serial' }, use: 'reported only' },
  { feature: 'pmem', since: '1.16.1', evidence: { endpoint: 'PUT /pmem/{id}' }, use: 'reported only' },
  {
    feature: 'memory-hotplug',
    since: '1.16.1',
    evidence: { endpoint: 'PUT /hotplug/memory' },
    use: 'reported only',
  },
  {
    feature: 'nic-mtu',
    since: '1.16.1',
    evidence: { field: ['NetworkInterface', 'mtu'] },
    use: 'reported only',
  },
  {
    feature: 'snapshot-vsock-override',
    since: '1.16.1',
    evidence: { field: ['SnapshotLoadParams', 'vsock_override'] },
    use: 'restore points vsock at the new socket path',
  },
  {
    feature: 'snapshot-clock-realtime',
    since: '1.16.1',
    evidence: { field: ['SnapshotLoadParams', 'clock_realtime'] },
    use: 'reported only',
  },
];

export function parseVersion(v: string): [number, number, number] | null {
  const m = /^v?(\d+)\.(\d+)\.(\d+)/.exec(v.trim());
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : null;
}

export function versionAtLeast(version: string, min: string): boolean {
  const a = parseVersion(version);
  const b = parseVersion(min);
  if (!a || !b) return false;
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i]! > b[i]!;
  return true;
}

export interface FirecrackerCapabilities {
  version: string;
  has(feature: FirecrackerFeature): boolean;
  /** Features for DriverInfo.features. */
  features: FirecrackerFeature[];
  /** Logger levels accepted by every supported version. */
  loggerLevel: 'Error' | 'Warning' | 'Info' | 'Debug';
}

/**
 * @example
 * capabilitiesFor('1.1.0').has('entropy'); // false: PUT /entropy came with 1.4
 */
export function capabilitiesFor(version: string): FirecrackerCapabilities {
  const features = CAPABILITY_TABLE.filter((r) => versionAtLeast(version, r.since)).map((r) => r.feature);
  const set = new Set(features);
  return { version, has: (f) => set.has(f), features, loggerLevel: 'Info' };
}

/** A feature the running Firecracker version lacks: reported, never sent. */
export class FirecrackerFeatureUnavailableError extends Error {
  readonly code = 'FIRECRACKER_FEATURE_UNAVAILABLE';
  constructor(
    readonly feature: string,
    readonly version: string,
    detail: string,
  ) {
    super(`Firecracker ${version} does not offer ${feature}: ${detail}`);
    this.name = 'FirecrackerFeatureUnavailableError';
  }
}
