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
export { readFirecrackerMetrics } from './metrics';
export type { FirecrackerRecordExtra } from './vm-paths';
