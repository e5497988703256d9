import type { AgentGuestConfig } from '@nqvm/api';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { cloudInitData, mergeCloudConfig, userData } from './cloud-config';
import { GuestConfigError } from './guest-values';

const HASH =
  '$6$abcdefgh$l5Rv6.qDmLOjiCGNTWfV3njd1blJysIMTWYBMlKPb8Q/5GULHVOHSoixqE0C/RG3kz23RqbGDouGTQSz0MyXl/';
const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH5ewXwHgG1P1R2x5gLx8p6V3pYgS7d1mJ1yq1m4k3Qx alice@laptop';

function config(over: Partial<AgentGuestConfig> = {}): AgentGuestConfig {
  return {
    mode: 'auto',
    instance_id: '5b0c1a52-3f0e-4b8e-9f43-0c6f1f1f9d10',
    hostname: 'cfg-test',
    username: 'alice',
    password_hash: HASH,
    ssh_authorized_keys: [KEY],
    user_data: null,
    network_config: null,
    ...over,
  };
}

/** The parts of a multipart/mixed document: their headers and bodies. */
function mimeParts(doc: string): Array<{ type: string; body: string }> {
  const boundary = /boundary="([^"]+)"/.exec(doc)![1]!;
  const chunks = doc.split(`--${boundary}`);
  expect(chunks.at(-1)!.startsWith('--')).toBe(true);
  return chunks.slice(1, -1).map((chunk) => {
    const [head, ...rest] = chunk.replace(/^\n/, '').split('\n\n');
    return { type: /Content-Type: ([^;\n]+)/i.exec(head!)![1]!, body: rest.join('\n\n').trimEnd() };
  });
}

describe('cloud-init documents', () => {
  it('writes the account with the hash (never a plaintext field), keys, sudo and password SSH', () => {
    const text = userData(config());
    expect(text.startsWith('#cloud-config\n')).toBe(true);
    expect(parse(text)).toEqual({
      hostname: 'cfg-test',
      preserve_hostname: false,
      users: [
        {
          name: 'alice',
          passwd: HASH,
          lock_passwd: false,
          ssh_authorized_keys: [KEY],
          sudo: 'ALL=(ALL) ALL',
        },
      ],
      ssh_pwauth: true,
    });
    // Long keys stay on one line: no YAML folding.
    expect(text.split('\n')).toContain(`      - ${KEY}`);
  });

  it('gives keys-only users passwordless sudo, and puts settings on root when no user is named', () => {
    const keysOnly = parse(userData(config({ password_hash: null })));
    expect(keysOnly.users[0]).toEqual({
      name: 'alice',
      ssh_authorized_keys: [KEY],
      sudo: 'ALL=(ALL) NOPASSWD:ALL',
    });
    expect(keysOnly).not.toHaveProperty('ssh_pwauth');

    const root = parse(userData(config({ username: null })));
    expect(root.users).toEqual([
      { name: 'root', passwd: HASH, lock_passwd: false, ssh_authorized_keys: [KEY] },
    ]);
    expect(root.disable_root).toBe(false);

    const padded = parse(userData(config({ ssh_authorized_keys: [`  ${KEY} \n`, ' '] })));
    expect(padded.users[0].ssh_authorized_keys).toEqual([KEY]);

    const hostOnly = parse(
      userData(config({ username: null, password_hash: null, ssh_authorized_keys: [''] })),
    );
    expect(hostOnly).toEqual({ hostname: 'cfg-test', preserve_hostname: false });
  });

  it('deep-merges maps, concatenates lists and lets the user override scalars', () => {
    expect(
      mergeCloudConfig(
        {
          users: [{ name: 'a' }],
          runcmd: ['one'],
          write_files: [],
          ssh: { a: 1, b: { c: 2 } },
          hostname: 'x',
        },
        { users: [{ name: 'b' }], runcmd: ['two'], ssh: { b: { d: 3 } }, hostname: 'y', timezone: 'UTC' },
      ),
    ).toEqual({
      users: [{ name: 'a' }, { name: 'b' }],
      runcmd: ['one', 'two'],
      write_files: [],
      ssh: { a: 1, b: { c: 2, d: 3 } },
      hostname: 'y',
      timezone: 'UTC',
    });
  });

  it("merges the user's #cloud-config into ours", () => {
    const merged = parse(
      userData(
        config({
          user_data:
            '#cloud-config\nusers:\n  - name: bob\n    shell: /bin/bash\nruncmd:\n  - [touch, /tmp/x]\npackage_update: true\n',
        }),
      ),
    );
    expect(merged.users.map((u: { name: string }) => u.name)).toEqual(['alice', 'bob']);
    expect(merged.runcmd).toEqual([['touch', '/tmp/x']]);
    expect(merged.package_update).toBe(true);
    expect(merged.hostname).toBe('cfg-test');
  });

  it('ships a script as the second part of a MIME multipart', () => {
    const doc = userData(config({ user_data: '#!/bin/sh\necho hello > /tmp/hello\n' }));
    expect(doc).toMatch(/^Content-Type: multipart\/mixed; boundary="[^"]+"\nMIME-Version: 1\.0\n/);
    const parts = mimeParts(doc);
    expect(parts.map((p) => p.type)).toEqual(['text/cloud-config', 'text/x-shellscript']);
    expect(parse(parts[0]!.body).users[0].passwd).toBe(HASH);
    expect(parts[1]!.body).toBe('#!/bin/sh\necho hello > /tmp/hello');
  });

  it('nests a MIME document as it is, and types other formats by their first line', () => {
    const inner =
      'Content-Type: multipart/mixed; boundary="inner"\nMIME-Version: 1.0\n\n--inner\nContent-Type: text/x-shellscript\n\n#!/bin/sh\ntrue\n--inner--\n';
    const nested = mimeParts(userData(config({ user_data: inner })));
    expect(nested[1]).toEqual({ type: 'multipart/mixed', body: expect.stringContaining('--inner--') });
    expect(mimeParts(userData(config({ user_data: '#cloud-boothook\necho\n' })))[1]!.type).toBe(
      'text/cloud-boothook',
    );
    expect(mimeParts(userData(config({ user_data: '#include\nhttp://x/y\n' })))[1]!.type).toBe(
      'text/x-include-url',
    );
  });

  it('refuses user cloud-config that is not YAML or not a map', () => {
    expect(() => userData(config({ user_data: '#cloud-config\nusers: [\n' }))).toThrow(GuestConfigError);
    expect(() => userData(config({ user_data: '#cloud-config\n- a\n- b\n' }))).toThrow(/must be a YAML map/);
    expect(parse(userData(config({ user_data: '#cloud-config\n' }))).hostname).toBe('cfg-test');
  });

  it('writes meta-data and network-config v2', () => {
    const network = { version: 2, ethernets: { eth0: { addresses: ['10.0.0.5/24'], gateway4: '10.0.0.1' } } };
    const data = cloudInitData(config({ network_config: network }));
    expect(parse(data.metaData)).toEqual({
      'instance-id': '5b0c1a52-3f0e-4b8e-9f43-0c6f1f1f9d10',
      'local-hostname': 'cfg-test',
    });
    expect(parse(data.networkConfig!)).toEqual(network);
    expect(cloudInitData(config()).networkConfig).toBeNull();
  });
});
