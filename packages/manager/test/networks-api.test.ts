/**
 * Networks and port forwards over HTTP on both datastores: validation (hostile names, bad and
 * overlapping prefixes), IPAM (lowest free address, requested addresses, an exhausted pool,
 * release on VM delete), the default network, deleting a network in use, port forward
 * conflicts, and what a host's agent (a stand-in) is sent and reports back.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Network, nicMac, PortForward, Vm } from '@nqvm/api';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerPathImage } from '../src/images/images';
import { client, DATASTORES, startManager, type TestManager } from './harness';
import { expectError, until } from './helpers';
import { StandInAgent } from './stand-in-agent';

const StrictNetwork = Network.strict();
const StrictVm = Vm.strict();

describe.concurrent.each(DATASTORES)('networks API on %s', (kind) => {
  let t: TestManager;
  let api: ReturnType<typeof client>;

  beforeAll(async () => {
    t = await startManager(kind);
    api = client(t.url, t.adminToken);
  });
  afterAll(async () => {
    await t?.close();
  });

  const db = () => t.manager.services.store.db;
  const mkNetwork = async (body: Record<string, unknown>): Promise<Network> => {
    const r = await api.post('/api/v1/networks', body);
    expect(r.status, r.text).toBe(201);
    return StrictNetwork.parse(r.body);
  };
  const mkVm = async (name: string, networks?: unknown): Promise<Vm> => {
    const r = await api.post('/api/v1/vms', {
      name,
      start: false,
      ...(networks !== undefined ? { networks } : {}),
    });
    expect(r.status, r.text).toBe(202);
    return StrictVm.parse(r.body.vm);
  };
  const delVm = async (id: string) => {
    const r = await api.del(`/api/v1/vms/${id}`);
    expect(r.status, r.text).toBe(202);
  };
  const counts = async () => ({
    networks: (await db().selectFrom('networks').select('id').execute()).length,
    vms: (await db().selectFrom('vms').select('id').execute()).length,
    nics: (await db().selectFrom('vm_nics').select('vm_id').execute()).length,
  });

  describe.sequential('networks', () => {
    it('creates a nat network with its gateway defaulting to the first host, gets, renames, lists', async () => {
      const n = await mkNetwork({ name: 'net-a', kind: 'nat', cidr: '10.50.0.0/24' });
      expect(n).toMatchObject({
        kind: 'nat',
        cidr: '10.50.0.0/24',
        gateway: '10.50.0.1',
        dhcp: false,
        bridge: null,
        is_default: false,
        nic_count: 0,
      });
      const renamed = await api.patch(`/api/v1/networks/${n.id}`, { name: 'net-a2' });
      expect(renamed.status, renamed.text).toBe(200);
      expect(StrictNetwork.parse(renamed.body).name).toBe('net-a2');
      const list = await api.get('/api/v1/networks?name=net-a');
      expect(list.body.items.map((x: Network) => x.id)).toEqual([n.id]);
      const del = await api.del(`/api/v1/networks/${n.id}`);
      expect(del.body).toEqual({ id: n.id, deleted: true });
      expectError(await api.get(`/api/v1/networks/${n.id}`), 404, 'NETWORK_NOT_FOUND');
    });

    it('refuses hostile or over-long names, bad prefixes and gateways with 400, creating nothing', async () => {
      const before = await counts();
      for (const name of ['a;rm -rf /', '$(reboot)', 'x`id`', 'a b', '-lead', 'n'.repeat(64), '']) {
        expectError(
          await api.post('/api/v1/networks', { name, kind: 'nat', cidr: '10.60.0.0/24' }),
          400,
          'VALIDATION_FAILED',
        );
      }
      for (const body of [
        { name: 'bad1', kind: 'nat', cidr: '10.60.0.1/24' },
        { name: 'bad2', kind: 'nat', cidr: '10.60.0.0/31' },
        { name: 'bad3', kind: 'nat', cidr: '10.60.0.0/24', gateway: '10.61.0.1' },
        { name: 'bad4', kind: 'nat', cidr: '10.60.0.0/24', gateway: '10.60.0.255' },
        { name: 'bad5', kind: 'nat' },
        { name: 'bad6', kind: 'bridged' },
        { name: 'bad7', kind: 'bridged', bridge: 'br0;ls' },
        { name: 'bad8', kind: 'bridged', bridge: 'br0', cidr: '10.60.0.0/24' },
        { name: 'bad9', kind: 'isolated', cidr: '10.60.0.0/24', uplink: 'eth0' },
      ]) {
        expectError(await api.post('/api/v1/networks', body), 400, 'VALIDATION_FAILED');
      }
      expectError(await mkVmRaw('bad;vm'), 400, 'VALIDATION_FAILED');
      expect(await counts()).toEqual(before);
    });

    it('refuses interface names an argument list could misread, and reserved prefixes, creating nothing', async () => {
      const before = await counts();
      const names = [
        '-h',
        '..',
        '.',
        '-json',
        '.hidden',
        'a/b',
        'eth0:1',
        'br 0',
        'br\t0',
        'x'.repeat(16),
        '',
      ];
      for (const name of names) {
        for (const body of [
          { name: 'ifn', kind: 'bridged', bridge: name },
          { name: 'ifn', kind: 'bridged', uplink: name },
          { name: 'ifn', kind: 'nat', cidr: '10.62.0.0/24', uplink: name },
        ]) {
          const r = await api.post('/api/v1/networks', body);
          expectError(r, 400, 'VALIDATION_FAILED');
          expect(r.body.error.details.fields[0].path, r.text).toMatch(/^body\.(bridge|uplink)$/);
        }
      }
      const reserved: Array<[string, string]> = [
        ['127.0.0.0/24', '127.0.0.0/8'],
        ['127.0.0.0/8', '127.0.0.0/8'],
        ['0.0.0.0/8', '0.0.0.0/8'],
        ['0.0.0.0/24', '0.0.0.0/8'],
        ['169.254.0.0/16', '169.254.0.0/16'],
        ['169.254.10.0/24', '169.254.0.0/16'],
        ['224.0.0.0/24', '224.0.0.0/4'],
        ['239.10.0.0/16', '224.0.0.0/4'],
        ['240.0.0.0/8', '240.0.0.0/4'],
        ['255.255.255.0/24', '240.0.0.0/4'],
      ];
      for (const [cidr, range] of reserved) {
        for (const kind of ['nat', 'isolated']) {
          const r = await api.post('/api/v1/networks', { name: 'rsv', kind, cidr });
          expectError(r, 400, 'NETWORK_CIDR_RESERVED');
          expect(r.body.error.details.reserved).toBe(range);
          expect(r.body.error.message).toContain(cidr);
        }
      }
      expect(await counts()).toEqual(before);
      // Right beside loopback is an ordinary prefix.
      const neighbour = await mkNetwork({ name: 'rsv-ok', kind: 'isolated', cidr: '126.0.0.0/8' });
      // PATCH changes only the name and the default flag: no way around the checks.
      for (const body of [{ cidr: '127.0.0.0/24' }, { uplink: '-json' }, { bridge: 'br0' }]) {
        expectError(await api.patch(`/api/v1/networks/${neighbour.id}`, body), 400, 'VALIDATION_FAILED');
      }
      expect(StrictNetwork.parse((await api.get(`/api/v1/networks/${neighbour.id}`)).body)).toEqual(
        neighbour,
      );
      expect((await api.del(`/api/v1/networks/${neighbour.id}`)).status).toBe(200);
    });

    it('refuses a prefix overlapping another network with 409', async () => {
      const n = await mkNetwork({ name: 'ov-1', kind: 'isolated', cidr: '10.70.0.0/16' });
      for (const cidr of ['10.70.5.0/24', '10.0.0.0/8', '10.70.0.0/16']) {
        const r = await api.post('/api/v1/networks', { name: 'ov-2', kind: 'nat', cidr });
        expectError(r, 409, 'NETWORK_OVERLAP');
        expect(r.body.error.details.network_id).toBe(n.id);
      }
      await mkNetwork({ name: 'ov-3', kind: 'nat', cidr: '10.71.0.0/24' });
      expectError(
        await api.post('/api/v1/networks', { name: 'ov-1', kind: 'nat', cidr: '10.72.0.0/24' }),
        409,
        'NAME_TAKEN',
      );
    });
  });

  const mkVmRaw = (name: string) => api.post('/api/v1/vms', { name, start: false });

  describe.sequential('IPAM', () => {
    it('hands out the lowest free address, skipping the gateway, with deterministic MACs', async () => {
      const n = await mkNetwork({ name: 'ipam-1', kind: 'nat', cidr: '10.80.0.0/29', gateway: '10.80.0.3' });
      const a = await mkVm('ipam-a', [{ network_id: n.id }]);
      const b = await mkVm('ipam-b', [{ network_id: n.id }]);
      const c = await mkVm('ipam-c', [{ network_id: n.id }]);
      expect([a, b, c].map((v) => v.networks[0]!.ip)).toEqual(['10.80.0.1', '10.80.0.2', '10.80.0.4']);
      expect(a.networks[0]!.mac).toBe(nicMac(a.id, 0));
      expect(a.networks[0]!.mac).toMatch(/^02(:[0-9a-f]{2}){5}$/);
      // A freed address is the lowest again.
      await delVm(a.id);
      const d = await mkVm('ipam-d', [{ network_id: n.id }]);
      expect(d.networks[0]!.ip).toBe('10.80.0.1');
      expect((await api.get(`/api/v1/networks/${n.id}`)).body.nic_count).toBe(3);
    });

    it('gives a requested address when free and inside, 409 otherwise', async () => {
      const n = await mkNetwork({ name: 'ipam-2', kind: 'isolated', cidr: '10.81.0.0/24' });
      const a = await mkVm('req-a', [{ network_id: n.id, ip: '10.81.0.77' }]);
      expect(a.networks[0]!.ip).toBe('10.81.0.77');
      const before = await counts();
      expectError(
        await api.post('/api/v1/vms', {
          name: 'req-b',
          start: false,
          networks: [{ network_id: n.id, ip: '10.81.0.77' }],
        }),
        409,
        'ADDRESS_IN_USE',
      );
      expectError(
        await api.post('/api/v1/vms', {
          name: 'req-c',
          start: false,
          networks: [{ network_id: n.id, ip: '10.81.0.1' }],
        }),
        409,
        'ADDRESS_IN_USE',
      );
      for (const ip of ['10.82.0.5', '10.81.0.0', '10.81.0.255'])
        expectError(
          await api.post('/api/v1/vms', {
            name: 'req-d',
            start: false,
            networks: [{ network_id: n.id, ip }],
          }),
          409,
          'CONFLICT',
        );
      expectError(
        await api.post('/api/v1/vms', {
          name: 'req-e',
          start: false,
          networks: [{ network_id: '00000000-0000-4000-8000-000000000000' }],
        }),
        400,
        'VALIDATION_FAILED',
      );
      expect(await counts()).toEqual(before);
    });

    it('answers 409 with a clear message when the pool is exhausted, creating nothing', async () => {
      const n = await mkNetwork({ name: 'ipam-3', kind: 'nat', cidr: '10.83.0.0/30' });
      const only = await mkVm('ex-a', [{ network_id: n.id }]);
      expect(only.networks[0]!.ip).toBe('10.83.0.2');
      const before = await counts();
      const r = await api.post('/api/v1/vms', {
        name: 'ex-b',
        start: false,
        networks: [{ network_id: n.id }],
      });
      expectError(r, 409, 'ADDRESS_POOL_EXHAUSTED');
      expect(r.body.error.message).toContain('no free address');
      expect(await counts()).toEqual(before);
      await delVm(only.id);
      expect((await mkVm('ex-c', [{ network_id: n.id }])).networks[0]!.ip).toBe('10.83.0.2');
    });

    it('refuses to delete a network NICs use with 409, and deletes it once the VMs are gone', async () => {
      const n = await mkNetwork({ name: 'inuse', kind: 'nat', cidr: '10.84.0.0/24' });
      const vm = await mkVm('inuse-a', [{ network_id: n.id }]);
      const r = await api.del(`/api/v1/networks/${n.id}`);
      expectError(r, 409, 'NETWORK_IN_USE');
      expect(r.body.error.details.vm_ids).toEqual([vm.id]);
      await delVm(vm.id);
      expect((await db().selectFrom('vm_nics').selectAll().where('vm_id', '=', vm.id).execute()).length).toBe(
        0,
      );
      expect((await api.del(`/api/v1/networks/${n.id}`)).status).toBe(200);
    });

    it('puts VMs created without networks on the default network; [] means none', async () => {
      const plain = await mkVm('nodef-a');
      expect(plain.networks).toEqual([]);
      const n = await mkNetwork({ name: 'def', kind: 'nat', cidr: '10.85.0.0/24', is_default: true });
      const a = await mkVm('def-a');
      expect(a.networks).toEqual([{ network_id: n.id, ip: '10.85.0.2', mac: nicMac(a.id, 0) }]);
      expect((await mkVm('def-b', [])).networks).toEqual([]);
      // Only one default: a second one takes it over.
      const other = await mkNetwork({
        name: 'def2',
        kind: 'isolated',
        cidr: '10.86.0.0/24',
        is_default: true,
      });
      expect((await api.get(`/api/v1/networks/${n.id}`)).body.is_default).toBe(false);
      expect((await mkVm('def-c')).networks[0]!.network_id).toBe(other.id);
      await api.patch(`/api/v1/networks/${other.id}`, { is_default: false });
    });
  });

  describe.sequential('port forwards', () => {
    it('adds, lists and removes forwards; the same port twice is 409; they go with the VM', async () => {
      const n = await mkNetwork({ name: 'pf-net', kind: 'nat', cidr: '10.90.0.0/24' });
      const a = await mkVm('pf-a', [{ network_id: n.id }]);
      const b = await mkVm('pf-b', [{ network_id: n.id }]);
      const r = await api.post(`/api/v1/vms/${a.id}/port-forwards`, { host_port: 18080, guest_port: 80 });
      expect(r.status, r.text).toBe(201);
      const pf = PortForward.strict().parse(r.body);
      expect(pf).toMatchObject({ vm_id: a.id, proto: 'tcp', nic_index: 0, host_port: 18080, guest_port: 80 });
      const generation = (await api.get(`/api/v1/vms/${a.id}`)).body.generation;
      expect(generation).toBe(a.generation + 1);
      expectError(
        await api.post(`/api/v1/vms/${b.id}/port-forwards`, { host_port: 18080, guest_port: 22 }),
        409,
        'PORT_IN_USE',
      );
      expectError(
        await api.post(`/api/v1/vms/${a.id}/port-forwards`, { host_port: 18080, guest_port: 81 }),
        409,
        'PORT_IN_USE',
      );
      // Another protocol is another port.
      const udp = await api.post(`/api/v1/vms/${b.id}/port-forwards`, {
        host_port: 18080,
        guest_port: 53,
        proto: 'udp',
      });
      expect(udp.status, udp.text).toBe(201);
      expectError(
        await api.post(`/api/v1/vms/${a.id}/port-forwards`, {
          host_port: 18081,
          guest_port: 80,
          nic_index: 1,
        }),
        400,
        'VALIDATION_FAILED',
      );
      expectError(
        await api.post(`/api/v1/vms/${a.id}/port-forwards`, { host_port: 0, guest_port: 80 }),
        400,
        'VALIDATION_FAILED',
      );
      expect(
        (await api.get(`/api/v1/vms/${a.id}/port-forwards`)).body.items.map((x: PortForward) => x.id),
      ).toEqual([pf.id]);
      expect((await api.del(`/api/v1/vms/${a.id}/port-forwards/${pf.id}`)).body).toEqual({
        id: pf.id,
        deleted: true,
      });
      expectError(await api.del(`/api/v1/vms/${a.id}/port-forwards/${pf.id}`), 404, 'PORT_FORWARD_NOT_FOUND');
      expect(
        (await api.post(`/api/v1/vms/${a.id}/port-forwards`, { host_port: 18080, guest_port: 80 })).status,
      ).toBe(201);
      await delVm(a.id);
      await delVm(b.id);
      expect((await db().selectFrom('port_forwards').selectAll().execute()).length).toBe(0);
    });
  });

  describe.sequential('on a host', () => {
    let agent: StandInAgent;
    /** A second host with more free memory (the scheduler's favourite) and other interfaces. */
    let other: StandInAgent;
    beforeAll(async () => {
      const kernel = path.join(t.dataDir, 'vmlinux');
      fs.writeFileSync(kernel, Buffer.alloc(4096, 1));
      await registerPathImage(t.manager.services.store, {
        name: 'k',
        kind: 'kernel',
        path: kernel,
        isDefault: true,
      });
      const host = async (name: string, memMib: number, interfaces: Array<[string, string, boolean]>) => {
        const a = await StandInAgent.join(
          t.url,
          t.adminToken,
          t.manager.services.managerKey.publicKeyPem,
          name,
          memMib,
        );
        await a.reportInterfaces(interfaces.map(([n, k, up]) => ({ name: n, kind: k, up })));
        return a;
      };
      agent = await host(`net-${kind}`, 16_384, [
        ['eth0', 'ether', true],
        ['br-lan', 'bridge', true],
        ['br-av', 'bridge', true],
        ['br-x', 'bridge', true],
      ]);
      other = await host(`net2-${kind}`, 32_768, [
        ['eth0', 'ether', true],
        ['eth1', 'ether', false],
        ['br-x', 'ether', true],
      ]);
    });
    afterAll(async () => {
      await agent?.close();
      await other?.close();
    });

    const vmState = async (id: string) => (await api.get(`/api/v1/vms/${id}`)).body as Vm;
    const failedWith = (id: string) =>
      until('the VM failed', async () => {
        const v = await vmState(id);
        return v.state === 'failed' ? v : undefined;
      });

    it('refuses a network naming an interface no host reports (or not as a bridge), creating nothing', async () => {
      const before = await counts();
      const cases: Array<[Record<string, unknown>, string, RegExp]> = [
        [
          { kind: 'bridged', uplink: 'eth5' },
          'uplink',
          /no host reports an interface eth5 \(the hosts report net-[a-z]+: eth0, br-lan, br-av, br-x; net2-[a-z]+: eth0, eth1, br-x\)/,
        ],
        [
          { kind: 'nat', cidr: '10.96.0.0/24', uplink: 'wan9' },
          'uplink',
          /no host reports an interface wan9/,
        ],
        [{ kind: 'bridged', bridge: 'br-none' }, 'bridge', /no host reports a bridge br-none/],
        [{ kind: 'bridged', bridge: 'eth1' }, 'bridge', /it is no bridge on net2-.* \(ether\)/],
        [
          { kind: 'bridged', uplink: 'br-lan' },
          'uplink',
          /it is a bridge on net-[a-z]+: join it as the network's bridge/,
        ],
      ];
      for (const [body, field, message] of cases) {
        const r = await api.post('/api/v1/networks', { name: 'gone', ...body });
        expectError(r, 422, 'NETWORK_INTERFACE_NOT_FOUND');
        expect(r.body.error.message).toMatch(message);
        expect(r.body.error.details.fields[0].path).toBe(`body.${field}`);
      }
      expect(await counts()).toEqual(before);
    });

    it('shows where each network is available and places its VMs there, or says why not', async () => {
      const hostIds = [agent.hostId, other.hostId].sort();
      const nat = await mkNetwork({ name: 'av-nat', kind: 'nat', cidr: '10.97.0.0/24' });
      const iso = await mkNetwork({ name: 'av-iso', kind: 'isolated', cidr: '10.98.0.0/24' });
      const joined = await mkNetwork({ name: 'av-br', kind: 'bridged', bridge: 'br-av' });
      const enslaved = await mkNetwork({ name: 'av-up', kind: 'bridged', uplink: 'eth1' });
      // br-x is a bridge on the first host, an ordinary interface (so an uplink) only on the second.
      const upBrLan = await mkNetwork({ name: 'av-up2', kind: 'bridged', uplink: 'br-x' });
      expect([...nat.available_on].sort()).toEqual(hostIds);
      expect([...iso.available_on].sort()).toEqual(hostIds);
      expect(joined.available_on).toEqual([agent.hostId]);
      expect(enslaved.available_on).toEqual([other.hostId]);
      expect(upBrLan.available_on).toEqual([other.hostId]);
      const listed = (await api.get('/api/v1/networks?name=av-')).body.items as Network[];
      expect(Object.fromEntries(listed.map((n) => [n.name, n.available_on.length]))).toEqual({
        'av-nat': 2,
        'av-iso': 2,
        'av-br': 1,
        'av-up': 1,
        'av-up2': 1,
      });

      // The second host has more free memory, yet a VM on av-br can only run where br-av is.
      const onBridge = await mkVm('av-vm1', [{ network_id: nat.id }, { network_id: joined.id }]);
      await api.post(`/api/v1/vms/${onBridge.id}/start`, {});
      const placed1 = await until('av-vm1 placed', async () => (await vmState(onBridge.id)).host_id);
      expect(placed1).toBe(agent.hostId);
      const onUplink = await mkVm('av-vm2', [{ network_id: enslaved.id }]);
      await api.post(`/api/v1/vms/${onUplink.id}/start`, {});
      expect(await until('av-vm2 placed', async () => (await vmState(onUplink.id)).host_id)).toBe(
        other.hostId,
      );

      // Both networks at once: no host has both.
      const both = await mkVm('av-vm3', [{ network_id: joined.id }, { network_id: enslaved.id }]);
      await api.post(`/api/v1/vms/${both.id}/start`, {});
      const v3 = await failedWith(both.id);
      expect(v3.last_error).toMatch(
        /no ready host has all of bridge br-av for network av-br, uplink eth1 for network av-up/,
      );

      // The uplink's only host is cordoned: the refusal names the uplink and where it is.
      expect((await api.post(`/api/v1/hosts/${other.hostId}/cordon`, {})).status).toBe(200);
      try {
        const v4 = await mkVm('av-vm4', [{ network_id: enslaved.id }]);
        await api.post(`/api/v1/vms/${v4.id}/start`, {});
        expect((await failedWith(v4.id)).last_error).toMatch(
          new RegExp(`no ready host has uplink eth1 for network av-up \\(only net2-${kind}: cordoned\\)`),
        );
      } finally {
        expect((await api.post(`/api/v1/hosts/${other.hostId}/uncordon`, {})).status).toBe(200);
      }

      // The interface goes away: the network is available nowhere and a new VM on it is refused.
      await other.reportInterfaces([{ name: 'eth0', kind: 'ether', up: true }]);
      const after = StrictNetwork.parse((await api.get(`/api/v1/networks/${enslaved.id}`)).body);
      expect(after.available_on).toEqual([]);
      const v5 = await mkVm('av-vm5', [{ network_id: enslaved.id }]);
      await api.post(`/api/v1/vms/${v5.id}/start`, {});
      expect((await failedWith(v5.id)).last_error).toMatch(
        /^no ready host has uplink eth1 for network av-up$/,
      );
      expect((await vmState(v5.id)).host_id).toBeNull();
    }, 120_000);

    it('sends NICs, forwards and a network-config; takes bridged addresses from reports', async () => {
      const nat = await mkNetwork({
        name: 'h-nat',
        kind: 'nat',
        cidr: '10.95.0.0/24',
        dns_servers: ['9.9.9.9'],
      });
      const lan = await mkNetwork({ name: 'h-lan', kind: 'bridged', bridge: 'br-lan' });
      const r = await api.post('/api/v1/vms', {
        name: 'h-a',
        networks: [{ network_id: nat.id }, { network_id: lan.id }],
      });
      expect(r.status, r.text).toBe(202);
      const id = r.body.vm.id as string;
      await api.post(`/api/v1/vms/${id}/port-forwards`, { host_port: 2222, guest_port: 22 });
      await api.post(`/api/v1/vms/${id}/port-forwards`, { host_port: 8443, guest_port: 443, nic_index: 1 });
      const spec = await until('a spec with the forward', async () => {
        const s = agent.specs.get(id);
        return s?.port_forwards.length ? s : undefined;
      });
      const mac0 = nicMac(id, 0);
      const mac1 = nicMac(id, 1);
      expect(spec.nics).toEqual([
        {
          nic_index: 0,
          mac: mac0,
          ip: '10.95.0.2',
          prefix_len: 24,
          gateway: '10.95.0.1',
          dns: ['10.95.0.1'],
          network: {
            id: nat.id,
            kind: 'nat',
            cidr: '10.95.0.0/24',
            gateway: '10.95.0.1',
            dhcp: false,
            dns: true,
            dns_servers: ['9.9.9.9'],
          },
        },
        {
          nic_index: 1,
          mac: mac1,
          ip: null,
          prefix_len: null,
          gateway: null,
          dns: [],
          network: { id: lan.id, kind: 'bridged', bridge: 'br-lan', dhcp: false, dns: false },
        },
      ]);
      // The bridged NIC's forward waits for its address.
      expect(spec.port_forwards).toEqual([
        { id: expect.any(String), proto: 'tcp', host_port: 2222, guest_ip: '10.95.0.2', guest_port: 22 },
      ]);
      expect(spec.guest_config?.network_config).toEqual({
        version: 2,
        ethernets: {
          eth0: {
            match: { macaddress: mac0 },
            'set-name': 'eth0',
            dhcp4: false,
            addresses: ['10.95.0.2/24'],
            routes: [{ to: '0.0.0.0/0', via: '10.95.0.1' }],
            nameservers: { addresses: ['10.95.0.1'] },
          },
          eth1: { match: { macaddress: mac1 }, 'set-name': 'eth1', dhcp4: true },
        },
      });

      const report = agent.vms.get(id)!;
      agent.vms.set(id, { ...report, nics: [{ nic_index: 1, ip: '192.168.7.44' }] });
      const vm = await until('the bridged address on the VM', async () => {
        const v = (await api.get(`/api/v1/vms/${id}`)).body;
        return v.networks[1]?.ip === '192.168.7.44' ? StrictVm.parse(v) : undefined;
      });
      expect(vm.networks[0]!.ip).toBe('10.95.0.2');
      const withBoth = await until('the bridged forward sent', async () => {
        const s = agent.specs.get(id);
        return s && s.port_forwards.length === 2 ? s : undefined;
      });
      expect(withBoth.port_forwards[1]).toMatchObject({
        host_port: 8443,
        guest_ip: '192.168.7.44',
        guest_port: 443,
      });
      // A reported address is no IPAM address: a second VM on the LAN may report the same one.
      await api.post(`/api/v1/vms/${id}/stop`, { force: true });
      // Generous bounds: both datastores run this at once on a 2-core machine under load.
      await until(
        'stopped',
        async () => (await api.get(`/api/v1/vms/${id}`)).body.state === 'stopped',
        60_000,
      );
      await until(
        'settled',
        async () => {
          const row = await db().selectFrom('vms').selectAll().where('id', '=', id).executeTakeFirst();
          return row && row.observed_generation >= row.generation;
        },
        60_000,
      );
      const del = await api.del(`/api/v1/vms/${id}`);
      expect(del.status, del.text).toBe(202);
      await until('VM gone', async () => (await api.get(`/api/v1/vms/${id}`)).status === 404, 60_000);
      expect(await db().selectFrom('vm_nics').selectAll().where('vm_id', '=', id).execute()).toEqual([]);
      expect(await db().selectFrom('port_forwards').selectAll().where('vm_id', '=', id).execute()).toEqual(
        [],
      );
    }, 120_000);
  });
});
