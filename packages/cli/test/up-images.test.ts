/**
 * `nqvm up` registers the built-in guest as the default images, inspected like an import: the
 * bzImage kernel gets the vmlinux Firecracker loads, the rootfs is known to lack cloud-init, and
 * a second start changes nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { client, startManager, type TestManager } from '../../manager/test/harness';
import { registerBuiltinGuest } from '../src/commands/up';

describe('nqvm up: the built-in guest images', () => {
  let t: TestManager;
  beforeAll(async () => {
    t = await startManager('sqlite');
  }, 120_000);
  afterAll(async () => t?.close());

  it('registers kernel (with its vmlinux), initrd and rootfs as defaults, idempotently', async () => {
    await registerBuiltinGuest(t.manager, () => undefined);
    const api = client(t.url, t.adminToken);
    const first = (await api.get('/api/v1/images?limit=50')).body.items as Array<{
      id: string;
      name: string;
      kind: string;
      status: string;
      is_default: boolean;
      format: string;
      metadata: { vmlinux?: { sha256: string; size_bytes: number }; has_cloud_init?: boolean };
    }>;
    const byName = Object.fromEntries(first.map((i) => [i.name, i]));
    expect(byName['builtin-kernel']).toMatchObject({
      kind: 'kernel',
      status: 'ready',
      is_default: true,
      format: 'bzimage',
    });
    expect(byName['builtin-kernel']?.metadata.vmlinux?.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(byName['builtin-initrd']).toMatchObject({ kind: 'initrd', status: 'ready', is_default: true });
    expect(byName['builtin-rootfs']).toMatchObject({
      kind: 'rootfs',
      status: 'ready',
      is_default: true,
      format: 'ext4',
    });
    expect(byName['builtin-rootfs']?.metadata.has_cloud_init).toBe(false);
    // The container init is there for containers, and is not the default initrd.
    expect(byName['builtin-container-init']).toMatchObject({
      kind: 'initrd',
      status: 'ready',
      is_default: false,
    });

    // The vmlinux is served to agents by its digest.
    const hosts = t.manager.services.images;
    const blob = await hosts.fileOf(byName['builtin-kernel']?.metadata.vmlinux?.sha256 as string);
    expect(blob.size).toBe(byName['builtin-kernel']?.metadata.vmlinux?.size_bytes);

    await registerBuiltinGuest(t.manager, () => undefined);
    const second = (await api.get('/api/v1/images?limit=50')).body.items as Array<{
      id: string;
      name: string;
    }>;
    expect(second.map((i) => [i.name, i.id]).sort()).toEqual(first.map((i) => [i.name, i.id]).sort());
  }, 120_000);
});
