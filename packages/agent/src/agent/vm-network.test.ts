import type { AgentNetwork, AgentNic } from '@nqvm/api';
import { describe, expect, it } from 'vitest';
import { networkBootArgs } from './vm-network';

const nat: AgentNetwork = {
  id: '6c1e0f3a-0000-4000-8000-0000000000a1',
  kind: 'nat',
  cidr: '10.213.0.0/24',
  gateway: '10.213.0.1',
  dhcp: false,
  dns: true,
};
const isolated: AgentNetwork = {
  id: '6c1e0f3a-0000-4000-8000-0000000000a2',
  kind: 'isolated',
  cidr: '10.214.0.0/24',
  gateway: '10.214.0.1',
  dhcp: false,
  dns: false,
};
const bridged: AgentNetwork = {
  id: '6c1e0f3a-0000-4000-8000-0000000000a3',
  kind: 'bridged',
  uplink: 'eth0',
  dhcp: false,
  dns: false,
};

/** NICs as the manager sends them: nat and isolated with their IPAM address, bridged without. */
const natNic: AgentNic = {
  nic_index: 0,
  mac: '02:AA:00:00:00:01',
  ip: '10.213.0.5',
  prefix_len: 24,
  gateway: '10.213.0.1',
  dns: ['10.213.0.1'],
  network: nat,
};
const isolatedNic: AgentNic = {
  nic_index: 1,
  mac: '02:aa:00:00:00:02',
  ip: '10.214.0.7',
  prefix_len: 24,
  gateway: null,
  dns: [],
  network: isolated,
};
const bridgedNic = (nic_index: number): AgentNic => ({
  nic_index,
  mac: `02:aa:00:00:00:0${nic_index + 3}`,
  ip: null,
  prefix_len: null,
  gateway: null,
  dns: [],
  network: bridged,
});

describe('networkBootArgs', () => {
  it('configures every NIC, each found by its MAC: its address on nat and isolated, DHCP on bridged', () => {
    const args = networkBootArgs({ nics: [natNic, isolatedNic, bridgedNic(2)] }).split(' ');
    expect(args).toEqual(
      expect.arrayContaining([
        'nqvm.net.0=10.213.0.5/24,gw=10.213.0.1,mac=02:aa:00:00:00:01',
        'nqvm.net.1=10.214.0.7/24,mac=02:aa:00:00:00:02',
        'nqvm.net.2=dhcp,mac=02:aa:00:00:00:05',
        'nqvm.dns=10.213.0.1',
      ]),
    );
  });

  it('keeps the older form for NIC 0, which guests built before nqvm.net. read', () => {
    expect(networkBootArgs({ nics: [natNic] }).split(' ')).toEqual(
      expect.arrayContaining(['nqvm.ip=10.213.0.5/24', 'nqvm.gw=10.213.0.1']),
    );
    // A VM whose only NIC is bridged asks the LAN's DHCP (it stayed down).
    const bridgedOnly = networkBootArgs({ nics: [bridgedNic(0)] }).split(' ');
    expect(bridgedOnly).toEqual(
      expect.arrayContaining(['nqvm.net.0=dhcp,mac=02:aa:00:00:00:03', 'nqvm.dhcp=1']),
    );
    expect(bridgedOnly.some((a) => a.startsWith('nqvm.ip='))).toBe(false);
    expect(networkBootArgs({ nics: [] })).toBe('');
  });

  it('refuses values that would add arguments to the command line', () => {
    expect(() => networkBootArgs({ nics: [{ ...natNic, ip: '10.213.0.5 init=/bin/sh' }] })).toThrow();
    expect(() => networkBootArgs({ nics: [{ ...natNic, mac: '02:aa:00:00:00:01 x' }] })).toThrow();
    expect(() => networkBootArgs({ nics: [{ ...natNic, gateway: '10.213.0.1,x' }] })).toThrow();
  });
});
