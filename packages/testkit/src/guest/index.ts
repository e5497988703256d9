export {
  type EnsureTestGuestOptions,
  ensureTestGuest,
  type TestGuest,
  TestGuestBuildError,
} from './ensure-test-guest';
export { BOOT_MARKER, GUEST_MODULES } from './guest-files';
export {
  guestBootArgs,
  hostTscKhz,
  qemuArgsForTestGuest,
  TEST_GUEST_QEMU,
  type TestGuestQemuOptions,
} from './qemu-args';
