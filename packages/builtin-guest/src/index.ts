/**
 * The built-in guest that `nqvm up` registers as the default images, so a newcomer's first VM
 * needs no download: Debian's cloud kernel, a busybox initramfs and root disk, and the init that
 * container microVMs boot, all built from the host's Debian packages and cached. The tests boot
 * the same guest (through @nqvm/testkit); the build's parts are exported for their fixtures.
 */
export { isProcessAlive, tryLock } from './build-lock';
export {
  type BuiltinGuest,
  BuiltinGuestBuildError,
  type EnsureBuiltinGuestOptions,
  ensureBuiltinGuest,
} from './builtin-guest';
export { CONTAINER_DRIVE_LABEL, type ContainerInit, ensureContainerInit, HOST_TINI } from './container-init';
export { HOST_BUSYBOX } from './debian-packages';
export { BOOT_MARKER, GUEST_AGENT_PATH, GUEST_MODULES, type GuestFile } from './guest-files';
export { busyboxApplets, rootfsTree, writeExt4Image } from './guest-images';
export { HostCommandError, runHost, runHostBinary } from './host-command';
