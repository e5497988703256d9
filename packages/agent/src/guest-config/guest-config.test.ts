import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { AgentGuestConfig } from '@nqvm/api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { ext4Image } from '../../test/support/guest-config';
import {
  applyGuestConfig,
  CONFIG_DRIVE_FILE,
  planGuestConfig,
  RECORD_FILE,
  wantsInjection,
} from './guest-config';

const run = promisify(execFile);
const HASH =
  '$6$abcdefgh$l5Rv6.qDmLOjiCGNTWfV3njd1blJysIMTWYBMlKPb8Q/5GULHVOHSoixqE0C/RG3kz23RqbGDouGTQSz0MyXl/';

let dir: string;
let n = 0;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'nqvm-guest-config-test-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function config(over: Partial<AgentGuestConfig> = {}): AgentGuestConfig {
  return {
    mode: 'auto',
    instance_id: '0f6a3c1e-8d57-4b8e-a1e4-5c9b2d7f3a10',
    hostname: 'cfg-test',
    username: 'alice',
    password_hash: HASH,
    ssh_authorized_keys: ['ssh-ed25519 AAAAC3Nza test'],
    user_data: null,
    network_config: null,
    ...over,
  };
}

/** A VM folder with a raw ext4 root disk. */
async function vm(): Promise<{ vmDir: string; root: string }> {
  const vmDir = path.join(dir, `vm${++n}`);
  const tree = path.join(vmDir, 'tree');
  await mkdir(path.join(tree, 'etc'), { recursive: true });
  await writeFile(path.join(tree, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await writeFile(path.join(tree, 'etc/shadow'), 'root:*:19000:0:99999:7:::\n');
  const root = path.join(vmDir, 'root.raw');
  await run('truncate', ['-s', '8M', root]);
  await run('mkfs.ext4', ['-q', '-F', '-E', 'root_owner=0:0', '-d', tree, root]);
  return { vmDir, root };
}

const cat = async (img: string, p: string) => (await run('debugfs', ['-R', `cat ${p}`, img])).stdout;

describe('planGuestConfig', () => {
  const editable = { vmm: 'qemu' as const, hasCloudInit: null, editableRoot: true };
  it.each([
    ['none', editable, { configDrive: false, mmds: false, inject: false }],
    ['cloud-init', editable, { configDrive: true, mmds: false, inject: false }],
    [
      'cloud-init',
      { ...editable, vmm: 'firecracker' as const },
      { configDrive: true, mmds: true, inject: false },
    ],
    ['inject', editable, { configDrive: false, mmds: false, inject: true }],
    ['auto', editable, { configDrive: true, mmds: false, inject: true }],
    ['auto', { ...editable, hasCloudInit: false }, { configDrive: true, mmds: false, inject: true }],
    ['auto', { ...editable, hasCloudInit: true }, { configDrive: true, mmds: false, inject: false }],
    ['auto', { ...editable, editableRoot: false }, { configDrive: true, mmds: false, inject: false }],
    ['auto', { ...editable, vmm: 'firecracker' as const }, { configDrive: true, mmds: true, inject: true }],
  ] as const)('%s on %o', (mode, target, plan) => {
    expect(planGuestConfig(config({ mode }), target)).toEqual(plan);
  });

  it('refuses inject without an editable root disk; says which configs want a raw disk', () => {
    expect(() => planGuestConfig(config({ mode: 'inject' }), { ...editable, editableRoot: false })).toThrow(
      /mode inject needs a root disk holding ext4/,
    );
    expect(wantsInjection(config({ mode: 'inject' }), true)).toBe(true);
    expect(wantsInjection(config({ mode: 'auto' }), null)).toBe(true);
    expect(wantsInjection(config({ mode: 'auto' }), true)).toBe(false);
    expect(wantsInjection(config({ mode: 'cloud-init' }), false)).toBe(false);
    expect(wantsInjection(null, false)).toBe(false);
  });
});

describe('applyGuestConfig', () => {
  it('auto: a config drive and an injection, then only the drive while the settings stay the same', async () => {
    const { vmDir, root } = await vm();
    const target = {
      vmDir,
      vmm: 'qemu' as const,
      hasCloudInit: null,
      rootDisk: { path: root, editable: true, created: true },
    };
    const first = await applyGuestConfig({ ...target, config: config() });
    const drive = path.join(vmDir, CONFIG_DRIVE_FILE);
    expect(first.configDrive).toEqual({
      id: 'cidata',
      path: drive,
      format: 'raw',
      readOnly: true,
      isRoot: false,
    });
    expect(first.mmds).toBeNull();
    expect(first.injected).toContain('/etc/shadow');
    expect(parse((await run('mtype', ['-i', drive, '::/user-data'])).stdout).users[0].passwd).toBe(HASH);
    expect(await cat(root, '/etc/hostname')).toBe('cfg-test\n');
    expect(JSON.parse(await readFile(path.join(vmDir, RECORD_FILE), 'utf8')).injected_hash).toMatch(
      /^[0-9a-f]{64}$/,
    );

    const again = await applyGuestConfig({
      ...target,
      rootDisk: { ...target.rootDisk, created: false },
      config: config(),
    });
    expect(again.injected).toBeNull();
    expect(again.configDrive).not.toBeNull();
    // A disk made anew is written again whatever the record says (here it holds it all already).
    expect((await applyGuestConfig({ ...target, config: config() })).injected).toEqual([]);

    // A new user-data changes the drive only; a new host name is injected again.
    const userData = await applyGuestConfig({
      ...target,
      rootDisk: { ...target.rootDisk, created: false },
      config: config({ user_data: '#cloud-config\nruncmd: [date]\n' }),
    });
    expect(userData.injected).toBeNull();
    expect((await run('mtype', ['-i', drive, '::/user-data'])).stdout).toContain('runcmd');
    const renamed = await applyGuestConfig({
      ...target,
      rootDisk: { ...target.rootDisk, created: false },
      config: config({ hostname: 'other' }),
    });
    expect(renamed.injected).toEqual(['/etc/hostname', '/etc/hosts']);
    expect(await cat(root, '/etc/hostname')).toBe('other\n');
  });

  it('firecracker cloud-init: MMDS data beside the drive, and no edit of the disk', async () => {
    const { vmDir, root } = await vm();
    const applied = await applyGuestConfig({
      vmDir,
      vmm: 'firecracker',
      hasCloudInit: true,
      rootDisk: { path: root, editable: true, created: true },
      config: config({ mode: 'cloud-init' }),
    });
    expect(applied.injected).toBeNull();
    expect(applied.mmds).toEqual({
      latest: {
        'meta-data': { 'instance-id': '0f6a3c1e-8d57-4b8e-a1e4-5c9b2d7f3a10', 'local-hostname': 'cfg-test' },
        'user-data': expect.stringContaining(`passwd: ${HASH}`),
      },
    });
    expect(await cat(root, '/etc/hostname')).toBe('');
  });

  it('none removes an earlier drive; auto without an editable disk says so; too much MMDS data is left out', async () => {
    const { vmDir, root } = await vm();
    const base = { vmDir, hasCloudInit: null, rootDisk: { path: root, editable: false, created: false } };
    const auto = await applyGuestConfig({ ...base, vmm: 'qemu', config: config() });
    expect(auto.injected).toBeNull();
    expect(auto.notes).toEqual([expect.stringMatching(/config drive alone carries them/)]);
    expect(await readdir(vmDir)).toContain(CONFIG_DRIVE_FILE);

    const none = await applyGuestConfig({ ...base, vmm: 'qemu', config: config({ mode: 'none' }) });
    expect(none).toEqual({ configDrive: null, mmds: null, injected: null, notes: [] });
    expect(await readdir(vmDir)).not.toContain(CONFIG_DRIVE_FILE);

    const big = await applyGuestConfig({
      ...base,
      vmm: 'firecracker',
      config: config({ mode: 'cloud-init', user_data: `#!/bin/sh\n${'echo x\n'.repeat(9000)}` }),
    });
    expect(big.mmds).toBeNull();
    expect(big.notes).toEqual([expect.stringMatching(/MMDS left empty/)]);
    expect(big.configDrive).not.toBeNull();
  });

  it('a VM whose address changes is injected again; its drive carries network-config v1', async () => {
    const vmDir = path.join(dir, `net${++n}`);
    await mkdir(vmDir, { recursive: true });
    const root = await ext4Image(vmDir, {
      '/etc/passwd': 'root:x:0:0:root:/root:/bin/sh\n',
      '/etc/shadow': 'root:*:19000:0:99999:7:::\n',
      '/sbin/ifup': '#!/bin/true\n',
      '/etc/network/interfaces': 'source /etc/network/interfaces.d/*\n',
      '/etc/network/interfaces.d': { dir: true },
    });
    const network = (address: string) => ({
      version: 2,
      ethernets: {
        eth0: {
          match: { macaddress: '02:fc:00:00:00:01' },
          'set-name': 'eth0',
          dhcp4: false,
          addresses: [address],
        },
      },
    });
    const target = {
      vmDir,
      vmm: 'qemu' as const,
      hasCloudInit: false,
      rootDisk: { path: root, editable: true, created: false },
    };
    const first = await applyGuestConfig({
      ...target,
      config: config({ network_config: network('10.213.0.2/24') }),
    });
    expect(first.injected).toContain('/etc/network/interfaces.d/nqvm');
    const drive = path.join(vmDir, CONFIG_DRIVE_FILE);
    expect(parse((await run('mtype', ['-i', drive, '::/network-config'])).stdout)).toMatchObject({
      version: 1,
      config: [{ type: 'physical', name: 'eth0', subnets: [{ type: 'static', address: '10.213.0.2/24' }] }],
    });

    const moved = await applyGuestConfig({
      ...target,
      config: config({ network_config: network('10.213.0.7/24') }),
    });
    expect(moved.injected).toEqual(['/etc/network/interfaces.d/nqvm']);
    expect(await cat(root, '/etc/network/interfaces.d/nqvm')).toContain('address 10.213.0.7/24');
  });

  it('auto still boots an image that is no OS root (notes why); inject refuses it', async () => {
    const vmDir = path.join(dir, `bare${++n}`);
    await mkdir(vmDir, { recursive: true });
    const root = path.join(vmDir, 'root.raw');
    await run('mkfs.ext4', ['-q', '-F', root, '8M']);
    const target = {
      vmDir,
      vmm: 'qemu' as const,
      hasCloudInit: null,
      rootDisk: { path: root, editable: true, created: true },
    };
    const auto = await applyGuestConfig({ ...target, config: config() });
    expect(auto.injected).toBeNull();
    expect(auto.configDrive).not.toBeNull();
    expect(auto.notes).toEqual([expect.stringMatching(/not written into the root disk: .*no \/etc/)]);
    expect(JSON.parse(await readFile(path.join(vmDir, RECORD_FILE), 'utf8'))).toMatchObject({
      injected_hash: null,
      notes: auto.notes,
    });
    await expect(applyGuestConfig({ ...target, config: config({ mode: 'inject' }) })).rejects.toThrow(
      /no \/etc/,
    );
  });

  it('refuses hostile settings before writing anything', async () => {
    const { vmDir, root } = await vm();
    await expect(
      applyGuestConfig({
        vmDir,
        vmm: 'qemu',
        hasCloudInit: null,
        rootDisk: { path: root, editable: true, created: true },
        config: config({ hostname: 'bad host' }),
      }),
    ).rejects.toThrow(/is not a host name/);
    expect(await readdir(vmDir)).not.toContain(CONFIG_DRIVE_FILE);
  });
});
