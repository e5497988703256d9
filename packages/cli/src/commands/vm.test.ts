/**
 * `nqvm vm ...` against a real manager (SQLite, no hosts): the NICs `vm create` asks for
 * (the default network unless told otherwise), and what --no-wait prints (the operation id).
 * VMs are created stopped or left queued, so no guest boots.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliTestManager, startCliTestManager } from './testing-manager';

describe.sequential('nqvm vm', () => {
  let m: CliTestManager;
  let defaultNet: string;
  let lan: string;

  beforeAll(async () => {
    m = await startCliTestManager('vm');
    const d = await m.api('POST', '/api/v1/networks', {
      name: 'default-net',
      kind: 'isolated',
      cidr: '10.79.0.0/24',
      is_default: true,
    });
    expect(d.status, JSON.stringify(d.body)).toBe(201);
    defaultNet = d.body.id;
    const l = await m.api('POST', '/api/v1/networks', {
      name: 'lan',
      kind: 'isolated',
      cidr: '10.80.0.0/24',
    });
    expect(l.status).toBe(201);
    lan = l.body.id;
  });
  afterAll(async () => {
    await m?.close();
  });

  const nicsOf = async (name: string) => {
    const vm = (await m.api('GET', `/api/v1/vms?name=${name}`)).body.items.find(
      (v: { name: string }) => v.name === name,
    );
    return vm.networks.map((n: { network_id: string; ip: string | null }) => [n.network_id, n.ip]);
  };

  it('vm create without network flags gets one NIC on the default network, as the API and UI do', async () => {
    const r = await m.nqvm('-o', 'json', 'vm', 'create', 'plain', '--no-start');
    expect(r.code, r.err).toBe(0);
    const nics = await nicsOf('plain');
    expect(nics).toHaveLength(1);
    expect(nics[0][0]).toBe(defaultNet);
  });

  it('--no-network makes a VM without NICs', async () => {
    const r = await m.nqvm('-o', 'json', 'vm', 'create', 'offline', '--no-start', '--no-network');
    expect(r.code, r.err).toBe(0);
    expect(await nicsOf('offline')).toEqual([]);
  });

  it('--network NAME_OR_ID[=IP] is repeatable and sets the address', async () => {
    const r = await m.nqvm(
      '-o',
      'json',
      'vm',
      'create',
      'multi',
      '--no-start',
      '--network',
      'lan=10.80.0.42',
      '--network',
      defaultNet,
    );
    expect(r.code, r.err).toBe(0);
    expect(await nicsOf('multi')).toEqual([
      [lan, '10.80.0.42'],
      [defaultNet, expect.any(String)],
    ]);
  });

  it('contradicting or malformed network flags exit 2 and create nothing', async () => {
    for (const args of [
      ['--network', 'lan', '--no-network'],
      ['--no-network', '--network', 'lan'],
      ['--network', 'lan='],
      ['--network', '=10.80.0.9'],
    ]) {
      const r = await m.nqvm('vm', 'create', 'bad', '--no-start', ...args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.err).toMatch(/--network/);
    }
    const unknown = await m.nqvm('vm', 'create', 'bad', '--no-start', '--network', 'nope');
    expect(unknown.code).toBe(1);
    expect(unknown.err).toContain('NETWORK_NOT_FOUND');
    expect((await m.api('GET', '/api/v1/vms?name=bad')).body.items).toEqual([]);
  });

  it('--no-wait -o json prints the operation with the VM; a table names it on stderr', async () => {
    // No host: the create stays queued, so the answer is all there is to follow.
    const json = await m.nqvm('-o', 'json', 'vm', 'create', 'queued-json', '--no-wait');
    expect(json.code, json.err).toBe(0);
    const body = json.json();
    expect(body.vm.name).toBe('queued-json');
    const op = await m.api('GET', `/api/v1/operations/${body.operation.id}`);
    expect(op.status).toBe(200);
    expect(op.body).toMatchObject({ kind: 'vm.create', target: { type: 'vm', id: body.vm.id } });

    const yaml = await m.nqvm('-o', 'yaml', 'vm', 'stop', 'queued-json', '--no-wait', '--force');
    expect(yaml.code, yaml.err).toBe(0);
    expect(yaml.out).toMatch(/^operation:\n {2}id: [0-9a-f-]{36}$/m);

    const table = await m.nqvm('vm', 'create', 'queued-table', '--no-wait');
    expect(table.code, table.err).toBe(0);
    expect(table.out).toMatch(/^name: +queued-table$/m);
    const id = /operation ([0-9a-f-]{36}) queued \(follow: nqvm op wait \1\)/.exec(table.err)?.[1];
    expect(id).toBeDefined();
    expect((await m.api('GET', `/api/v1/operations/${id}`)).body.target.type).toBe('vm');

    const del = await m.nqvm('-o', 'json', 'vm', 'delete', 'queued-table', '--force', '--no-wait');
    expect(del.code, del.err).toBe(0);
    expect(del.json().operation.id).toMatch(/^[0-9a-f-]{36}$/);
  });
});
