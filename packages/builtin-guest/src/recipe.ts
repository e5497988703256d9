import { createHash } from 'node:crypto';
import { GUEST_MODULES, type GuestFile, initramfsFiles, rootfsFiles } from './guest-files';

/**
 * Bump when the TypeScript that assembles the images changes in a way the guest can see
 * (layout, links, mkfs options): the text inputs below are hashed, the builder code is not.
 */
const RECIPE_FORMAT = 1;

export interface DebianPackage {
  name: string;
  version: string;
}

export interface BusyboxSource extends DebianPackage {
  /** `host`: the installed busybox-static's /bin/busybox; `download`: fetched and extracted. */
  from: 'host' | 'download';
}

/** Everything the cached built-in guest is made from; its hash names the cache folder. */
export interface GuestRecipe {
  format: number;
  kernel: DebianPackage;
  busybox: BusyboxSource;
  modules: readonly string[];
  /** The nqvm guest agent binary both images carry (its sha256; it is built from C at first use). */
  guestAgent: { sha256: string };
  initramfsFiles: readonly GuestFile[];
  rootfsFiles: readonly GuestFile[];
  rootfsMiB: number;
}

export function defaultRecipe(
  kernel: DebianPackage,
  busybox: BusyboxSource,
  guestAgent: { sha256: string },
): GuestRecipe {
  return {
    format: RECIPE_FORMAT,
    kernel,
    busybox,
    modules: GUEST_MODULES,
    guestAgent,
    initramfsFiles: initramfsFiles(GUEST_MODULES),
    rootfsFiles: rootfsFiles(),
    rootfsMiB: 64,
  };
}

/** A short, stable hash of the recipe: the name of its cache folder. */
export function recipeKey(recipe: GuestRecipe): string {
  return createHash('sha256').update(JSON.stringify(recipe)).digest('hex').slice(0, 16);
}

/** `linux-image-6.1.0-41-cloud-amd64` -> `6.1.0-41-cloud-amd64` */
export function kernelVersionOf(kernel: DebianPackage): string {
  return kernel.name.replace(/^linux-image-/, '');
}
