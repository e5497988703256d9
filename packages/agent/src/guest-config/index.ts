export { type CloudInitData, cloudInitData, mergeCloudConfig, metaData, userData } from './cloud-config';
export { CONFIG_DRIVE_LABEL, writeConfigDrive } from './config-drive';
export {
  type AppliedGuestConfig,
  applyGuestConfig,
  CONFIG_DRIVE_FILE,
  type GuestConfigPlan,
  type GuestConfigTarget,
  planGuestConfig,
  RECORD_FILE,
  wantsInjection,
} from './guest-config';
export { checkGuestConfig, GuestConfigError, guestAccount } from './guest-values';
export { type InjectResult, injectGuestConfig } from './inject';
export { MMDS_MAX_BYTES, mmdsDocument } from './mmds';
