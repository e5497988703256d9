export { type CloudInitGuest, ensureCloudInitGuest } from './cloud-init-guest';
export { busyboxLayer, type ContainerImageOptions, writeBusyboxRootfs } from './container-image';
export { CONTAINER_DRIVE_LABEL, type ContainerInit, ensureContainerInit } from './container-init';
export {
  type EnsureTestGuestOptions,
  ensureTestGuest,
  type TestGuest,
  TestGuestBuildError,
} from './ensure-test-guest';
export { BOOT_MARKER, GUEST_AGENT_PATH, GUEST_MODULES } from './guest-files';
export {
  guestBootArgs,
  hostTscKhz,
  qemuArgsForTestGuest,
  TEST_GUEST_QEMU,
  type TestGuestQemuOptions,
} from './qemu-args';
