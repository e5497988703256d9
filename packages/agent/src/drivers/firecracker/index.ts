export { FirecrackerApiClient, FirecrackerApiError } from './api-client';
export {
  CAPABILITY_TABLE,
  type CapabilityEvidence,
  type CapabilityRow,
  capabilitiesFor,
  type FirecrackerCapabilities,
  type FirecrackerFeature,
  FirecrackerFeatureUnavailableError,
  MIN_FIRECRACKER_VERSION,
  versionAtLeast,
} from './capabilities';
export { type FirecrackerConsole, openFirecrackerConsole } from './console';
export {
  type BootStats,
  FirecrackerDriver,
  type FirecrackerDriverLogger,
  type FirecrackerDriverOptions,
  type FirecrackerVmHandle,
} from './driver';
export {
  copyWrittenExtents,
  type FileExtent,
  GUEST_PAGE_SIZE,
  type MemoryMergeStats,
  mergeMemoryLayers,
  writtenExtents,
} from './memory-merge';
export { readFirecrackerMetrics } from './metrics';
export {
  resolveSnapshotChain,
  SnapshotChainError,
  type SnapshotLayer,
  type SnapshotManifest,
} from './snapshot-chain';
export type { FirecrackerRecordExtra } from './vm-paths';
export { connectFirecrackerVsock, FirecrackerVsockError } from './vsock';
