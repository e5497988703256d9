/**
 * Snapshot names are unique per VM, and the built `nqvm snapshot` commands find a snapshot by
 * id, by a name only one VM's snapshot has, or as VM/NAME (or NAME with --vm for a restore); a
 * name several VMs share is refused as ambiguous, saying how to name one. Against a real manager
 * and a stand-in agent (no guest boots).
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Snapshot } from '@nqvm/api';
import { registerPathImage } from '@nqvm/manager/images/images';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { client, startManager, type TestManager } from '../../manager/test/harness';
import { until } from '../../manager/test/helpers';
import { StandInAgent } from '../../manager/test/stand-in-agent';
import { cli } from './stack';

describe('snapshot names per VM through the CLI', () => {
  let t: TestManager;
  let api: ReturnType<typeof client>;
  let host: StandInAgent;
  let nqvm: ReturnType<typeof cli>;
  const snaps: Record<string, Snapshot> = {};

  beforeAll(async () => {
    t = await startManager('sqlite');
    api = client(t.url, t.adminToken);
    nqvm = cli(t);
    for (const kind of ['kernel', 'rootfs'] as const) {
      const file = path.join(t.dataDir, kind);
      fs.writeFileSync(file, Buffer.alloc(4096, 1));
      await registerPathImage(t.manager.services.store, { name: kind, kind, path: file, isDefault: true });
    }
    host = await StandInAgent.join(
      t.url,
      t.adminToken,
      t.manager.services.managerKey.publicKeyPem,
      'names-host',
    );
    for (const vm of ['web1', 'web2']) {
      const created = await nqvm(['vm', 'create', vm, '--no-network', '-o', 'json']);
      expect(created.code, created.stderr).toBe(0);
      const snap = await nqvm(['snapshot', 'create', vm, '--name', 'before', '-o', 'json']);
      expect(snap.code, snap.stderr).toBe(0);
      snaps[vm] = JSON.parse(snap.stdout);
    }
  });
  afterAll(async () => {
    await host?.close();
    await t?.close();
  });

  it('two VMs each have a snapshot "before"; a third of the same VM is refused naming the VM', async () => {
    expect(snaps.web1).toMatchObject({ name: 'before', vm_name: 'web1', status: 'ready' });
    expect(snaps.web2).toMatchObject({ name: 'before', vm_name: 'web2', status: 'ready' });
    const again = await nqvm(['snapshot', 'create', 'web2', '--name', 'before']);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('NAME_TAKEN: VM web2 has a snapshot named "before"');
  });

  it('a shared name is ambiguous; VM/NAME, --vm and the id say which', async () => {
    const shared = await nqvm(['snapshot', 'show', 'before']);
    expect(shared.code).toBe(1);
    expect(shared.stderr).toMatch(
      /NAME_AMBIGUOUS: 2 snapshots are named "before" .*say which as VM\/NAME \(e\.g\. web\d\/before\)/,
    );
    for (const [args, vm] of [
      [['snapshot', 'show', 'web2/before'], 'web2'],
      [['snapshot', 'show', `${snaps.web1!.vm_id}/before`], 'web1'],
      [['snapshot', 'show', snaps.web2!.id], 'web2'],
    ] as const) {
      const r = await nqvm([...args, '-o', 'json']);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).id).toBe(snaps[vm]!.id);
    }
    const restored = await nqvm(['snapshot', 'restore', 'before', '--vm', 'web1', '--yes', '-o', 'json']);
    expect(restored.code, restored.stderr).toBe(0);
    expect(host.commands.get(snaps.web1!.vm_id!)!.at(-1)).toMatchObject({
      restore: { snapshot_id: snaps.web1!.id },
    });
    const clone = await nqvm(['snapshot', 'instantiate', 'web2/before', '--name', 'web2-copy', '--no-wait']);
    expect(clone.code, clone.stderr).toBe(0);
    const copy = await until(
      'the clone',
      async () => (await api.get('/api/v1/vms?name=web2-copy')).body.items[0],
    );
    expect(JSON.parse((await t.manager.services.vms.getRow(copy.id)).spec).source_snapshot_id).toBe(
      snaps.web2!.id,
    );
    const missing = await nqvm(['snapshot', 'show', 'web1/after']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('SNAPSHOT_NOT_FOUND: no snapshot named "after" of VM web1');
  });

  it('once only one snapshot has the name, the name alone finds it', async () => {
    await until(
      'the clone to run',
      async () => (await api.get('/api/v1/vms?name=web2-copy')).body.items[0]?.state === 'running',
    );
    const del = await nqvm(['snapshot', 'delete', 'web2/before']);
    expect(del.code, del.stderr).toBe(0);
    const shown = await nqvm(['snapshot', 'show', 'before', '-o', 'json']);
    expect(shown.code, shown.stderr).toBe(0);
    expect(JSON.parse(shown.stdout).id).toBe(snaps.web1!.id);
  });
});
