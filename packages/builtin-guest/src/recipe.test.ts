import { describe, expect, it } from 'vitest';
import { BOOT_MARKER, GUEST_MODULES } from './guest-files';
import { type BusyboxSource, type DebianPackage, defaultRecipe, kernelVersionOf, recipeKey } from './recipe';

const kernel: DebianPackage = { name: 'linux-image-6.1.0-56-cloud-amd64', version: '6.1.192-2' };
const busybox: BusyboxSource = { name: 'busybox-static', version: '1:1.35.0-4', from: 'host' };
const agent = { sha256: 'a'.repeat(64) };

describe('recipeKey', () => {
  it('is stable for the same inputs', () => {
    expect(recipeKey(defaultRecipe(kernel, busybox, agent))).toBe(
      recipeKey(defaultRecipe(kernel, busybox, agent)),
    );
    expect(recipeKey(defaultRecipe(kernel, busybox, agent))).toMatch(/^[0-9a-f]{16}$/);
  });

  it('changes when the init script changes', () => {
    const recipe = defaultRecipe(kernel, busybox, agent);
    const edited = {
      ...recipe,
      initramfsFiles: recipe.initramfsFiles.map((f) =>
        f.path === 'init' ? { ...f, text: `${f.text}echo edited\n` } : f,
      ),
    };
    expect(edited.initramfsFiles.find((f) => f.path === 'init')?.text).not.toBe(
      recipe.initramfsFiles.find((f) => f.path === 'init')?.text,
    );
    expect(recipeKey(edited)).not.toBe(recipeKey(recipe));
  });

  it('changes with the module list, a package version and the busybox source', () => {
    const base = recipeKey(defaultRecipe(kernel, busybox, agent));
    const recipe = defaultRecipe(kernel, busybox, agent);
    expect(recipeKey({ ...recipe, modules: GUEST_MODULES.slice(1) })).not.toBe(base);
    expect(recipeKey(defaultRecipe({ ...kernel, version: '6.1.192-3' }, busybox, agent))).not.toBe(base);
    expect(recipeKey(defaultRecipe(kernel, { ...busybox, from: 'download' }, agent))).not.toBe(base);
    expect(recipeKey(defaultRecipe(kernel, busybox, { sha256: 'b'.repeat(64) }))).not.toBe(base);
  });
});

describe('defaultRecipe', () => {
  it('loads the modules in dependency order and prints the marker', () => {
    const init = defaultRecipe(kernel, busybox, agent).initramfsFiles.find((f) => f.path === 'init')!.text;
    expect(init).toContain(`for m in ${GUEST_MODULES.join(' ')}; do`);
    expect(GUEST_MODULES.indexOf('virtio_ring')).toBeLessThan(GUEST_MODULES.indexOf('virtio_blk'));
    expect(GUEST_MODULES).toContain('button');
    const rc = defaultRecipe(kernel, busybox, agent).rootfsFiles.find((f) => f.path === 'etc/nqvm/rc')!.text;
    expect(rc).toContain(BOOT_MARKER);
    expect(rc).toContain('acpid');
  });

  it('gives the root disk busybox init and a minimal /etc', () => {
    const paths = defaultRecipe(kernel, busybox, agent).rootfsFiles.map((f) => f.path);
    expect(paths).toEqual(
      expect.arrayContaining(['etc/inittab', 'etc/passwd', 'etc/group', 'etc/shadow', 'etc/hostname']),
    );
  });
});

it('kernelVersionOf strips the package prefix', () => {
  expect(kernelVersionOf(kernel)).toBe('6.1.0-56-cloud-amd64');
});
