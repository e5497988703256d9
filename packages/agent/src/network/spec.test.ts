import { describe, expect, it } from 'vitest';
import { HostNetworkSpec, HostPortForwardSpec, HostTapSpec, parseInput } from './spec';

const ID = '3f1a2b3c-0000-4000-8000-000000000001';

function problems(value: unknown): string[] {
  try {
    parseInput(HostNetworkSpec, 'network', value);
    return [];
  } catch (err) {
    return ((err as { details: { issues: Array<{ path: string }> } }).details.issues ?? []).map(
      (i) => i.path,
    );
  }
}

describe('HostNetworkSpec', () => {
  it('accepts each kind in its sound form, with defaults', () => {
    expect(
      parseInput(HostNetworkSpec, 'network', {
        id: ID,
        kind: 'nat',
        cidr: '10.1.0.0/24',
        gateway: '10.1.0.1',
      }),
    ).toEqual({ id: ID, kind: 'nat', cidr: '10.1.0.0/24', gateway: '10.1.0.1', dhcp: false, dns: false });
    expect(problems({ id: ID, kind: 'isolated', cidr: '10.2.0.0/24' })).toEqual([]);
    expect(problems({ id: ID, kind: 'bridged', bridge: 'br0' })).toEqual([]);
    expect(problems({ id: ID, kind: 'bridged', uplink: 'eth0' })).toEqual([]);
    expect(
      problems({
        id: ID,
        kind: 'nat',
        cidr: '10.1.0.0/24',
        gateway: '10.1.0.1',
        dhcp: true,
        dhcpRange: { start: '10.1.0.100', end: '10.1.0.200' },
        dns: true,
        dnsServers: ['9.9.9.9'],
      }),
    ).toEqual([]);
  });

  it('names the field that is wrong for the kind', () => {
    expect(problems({ id: ID, kind: 'nat', cidr: '10.1.0.0/24' })).toEqual(['gateway']);
    expect(problems({ id: ID, kind: 'nat', cidr: '10.1.0.0/24', gateway: '10.1.0.0' })).toEqual(['gateway']);
    expect(problems({ id: ID, kind: 'nat', cidr: '10.1.0.0/31', gateway: '10.1.0.1' })).toEqual(['cidr']);
    expect(
      problems({ id: ID, kind: 'nat', bridge: 'br0', cidr: '10.1.0.0/24', gateway: '10.1.0.1' }),
    ).toEqual(['bridge']);
    expect(problems({ id: ID, kind: 'bridged' })).toEqual(['bridge']);
    expect(problems({ id: ID, kind: 'bridged', bridge: 'br0', uplink: 'eth0' })).toEqual(['bridge']);
    expect(problems({ id: ID, kind: 'bridged', bridge: 'br0', cidr: '10.1.0.0/24', dhcp: true })).toEqual([
      'cidr',
      'dhcp',
    ]);
    expect(problems({ id: ID, kind: 'isolated', cidr: '10.2.0.0/24', uplink: 'eth0' })).toEqual(['uplink']);
    expect(problems({ id: ID, kind: 'isolated', cidr: '10.2.0.0/24', dhcp: true })).toEqual(['gateway']);
    expect(
      problems({
        id: ID,
        kind: 'nat',
        cidr: '10.1.0.0/24',
        gateway: '10.1.0.150',
        dhcp: true,
        dhcpRange: { start: '10.1.0.100', end: '10.1.0.200' },
      }),
    ).toEqual(['dhcpRange']);
    expect(
      problems({ id: ID, kind: 'nat', cidr: '10.1.0.0/24', gateway: '10.1.0.1', dnsServers: ['1.1.1.1'] }),
    ).toEqual(['dnsServers']);
  });

  it('refuses names and ids that are not plain', () => {
    expect(problems({ id: 'a$(b)', kind: 'bridged', bridge: 'br0' })).toEqual(['id']);
    expect(problems({ id: ID, kind: 'bridged', bridge: 'br0;ls' })).toEqual(['bridge']);
    expect(problems({ id: ID, kind: 'bridged', uplink: 'a-very-long-name' })).toEqual(['uplink']);
    expect(problems({ id: ID, kind: 'bridged', uplink: '-eth0' })).toEqual(['uplink']);
  });
});

describe('HostTapSpec and HostPortForwardSpec', () => {
  it('lower-cases MACs and refuses multicast ones', () => {
    expect(
      parseInput(HostTapSpec, 'tap', { vmId: ID, nicIndex: 0, networkId: ID, mac: '02:AA:00:00:00:01' }).mac,
    ).toBe('02:aa:00:00:00:01');
    expect(() =>
      parseInput(HostTapSpec, 'tap', { vmId: ID, nicIndex: 0, networkId: ID, mac: '01:00:5e:00:00:01' }),
    ).toThrow(/unicast/);
  });

  it('bounds ports and protocols', () => {
    const ok = { id: 'pf-1', proto: 'udp', hostPort: 5353, guestIp: '10.1.0.5', guestPort: 53 };
    expect(parseInput(HostPortForwardSpec, 'port forward', ok)).toEqual(ok);
    expect(() => parseInput(HostPortForwardSpec, 'port forward', { ...ok, hostPort: 65_536 })).toThrow(
      /hostPort/,
    );
    expect(() => parseInput(HostPortForwardSpec, 'port forward', { ...ok, guestIp: '10.1.0' })).toThrow(
      /guestIp/,
    );
  });
});
