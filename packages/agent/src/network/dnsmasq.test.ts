import { parseCidr } from '@nqvm/api/ipv4';
import { describe, expect, it } from 'vitest';
import { dnsmasqConf, parseLeases } from './dnsmasq';

const base = {
  bridge: 'nqbaaaaaaaa',
  gateway: '10.77.0.1',
  cidr: parseCidr('10.77.0.0/24')!,
  dhcp: true,
  router: true,
  dns: true,
  staticLeases: [{ mac: '02:00:00:00:00:0a', ip: '10.77.0.10' }],
};

describe('dnsmasqConf', () => {
  it('binds to the bridge only and serves the static leases nqvm assigned', () => {
    const conf = dnsmasqConf('/state/network/networks/n1', { ...base, dnsServers: ['192.168.77.1'] });
    const lines = conf.split('\n');
    expect(lines).toEqual(
      expect.arrayContaining([
        'interface=nqbaaaaaaaa',
        'except-interface=lo',
        'bind-interfaces',
        'listen-address=10.77.0.1',
        'pid-file=/state/network/networks/n1/dnsmasq.pid',
        'dhcp-leasefile=/state/network/networks/n1/dnsmasq.leases',
        'dhcp-range=10.77.0.0,static,255.255.255.0,12h',
        'dhcp-option=option:router,10.77.0.1',
        'dhcp-option=option:dns-server,10.77.0.1',
        'dhcp-host=02:00:00:00:00:0a,10.77.0.10',
        // Clones of one snapshot share a client identifier: leases follow the MAC.
        'dhcp-ignore-clid',
        'no-resolv',
        'server=192.168.77.1',
      ]),
    );
    expect(lines).not.toContain('port=0');
  });

  it('hands out a range, no router and no DNS when asked for plain DHCP', () => {
    const conf = dnsmasqConf('/d', {
      ...base,
      router: false,
      dns: false,
      dhcpRange: { start: '10.77.0.100', end: '10.77.0.199' },
    });
    expect(conf).toContain('dhcp-range=10.77.0.100,10.77.0.199,255.255.255.0,12h\n');
    expect(conf).toContain('dhcp-option=option:router\n');
    expect(conf).toContain('port=0\n');
    expect(conf).not.toContain('server=');
  });

  it('refuses values that would add lines or options', () => {
    expect(() => dnsmasqConf('/d', { ...base, bridge: 'br0\ndhcp-script=/x' })).toThrow();
    expect(() =>
      dnsmasqConf('/d', { ...base, staticLeases: [{ mac: '02:00:00:00:00:0a,set:x', ip: '10.77.0.10' }] }),
    ).toThrow();
    expect(() => dnsmasqConf('/d', { ...base, dnsServers: ['1.1.1.1#5353'] })).toThrow();
  });
});

describe('parseLeases', () => {
  it('maps MAC to address from a dnsmasq lease file', () => {
    const text = '1700000000 02:aa:bb:cc:dd:ee 192.168.79.101 guest 01:02:aa:bb:cc:dd:ee\nbroken line\n';
    expect(parseLeases(text)).toEqual(new Map([['02:aa:bb:cc:dd:ee', '192.168.79.101']]));
  });
});
