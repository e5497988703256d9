// The test guest is the built-in guest (@nqvm/builtin-guest); the tests know it by these names.
export {
  BOOT_MARKER,
  type BuiltinGuest as TestGuest,
  BuiltinGuestBuildError as TestGuestBuildError,
  type ContainerInit,
  type EnsureBuiltinGuestOptions as EnsureTestGuestOptions,
  ensureBuiltinGuest as ensureTestGuest,
  ensureContainerInit,
  GUEST_AGENT_PATH,
  GUEST_MODULES,
} from '@nqvm/builtin-guest';
export { type CloudInitGuest, ensureCloudInitGuest } from './cloud-init-guest';
export { busyboxLayer, type ContainerImageOptions, writeBusyboxRootfs } from './container-image';
export {
  guestBootArgs,
  hostTscKhz,
  qemuArgsForTestGuest,
  TEST_GUEST_QEMU,
  type TestGuestQemuOptions,
} from './qemu-args';
