import { describe, expect, it } from 'vitest';
import {
  broadcast,
  cidrText,
  formatIpv4,
  isHostAddress,
  netmask,
  overlaps,
  parseCidr,
  parseIpv4,
} from './ipv4';

describe('IPv4', () => {
  it('parses dotted quads strictly', () => {
    expect(parseIpv4('10.0.0.1')).toBe(0x0a000001);
    expect(formatIpv4(0xc0a80101)).toBe('192.168.1.1');
    for (const bad of ['10.0.0', '10.0.0.256', '010.0.0.1', '10.0.0.1 ', '1e1.0.0.1', '10.0.0.-1', '']) {
      expect(parseIpv4(bad)).toBeNull();
    }
  });

  it('parses prefixes with their host bits zero', () => {
    expect(parseCidr('10.77.0.0/24')).toEqual({ network: 0x0a4d0000, prefix: 24 });
    expect(parseCidr('10.77.0.1/24')).toBeNull();
    expect(parseCidr('10.77.0.0/33')).toBeNull();
    expect(parseCidr('10.77.0.0')).toBeNull();
    expect(cidrText(parseCidr('0.0.0.0/0')!)).toBe('0.0.0.0/0');
  });

  it('tells host addresses, broadcast, netmask and overlaps', () => {
    const c = parseCidr('10.77.0.0/24')!;
    expect(formatIpv4(broadcast(c))).toBe('10.77.0.255');
    expect(netmask(24)).toBe('255.255.255.0');
    expect(netmask(12)).toBe('255.240.0.0');
    expect(isHostAddress(c, parseIpv4('10.77.0.1')!)).toBe(true);
    expect(isHostAddress(c, parseIpv4('10.77.0.0')!)).toBe(false);
    expect(isHostAddress(c, parseIpv4('10.77.0.255')!)).toBe(false);
    expect(isHostAddress(c, parseIpv4('10.77.1.1')!)).toBe(false);
    expect(overlaps(c, parseCidr('10.77.0.128/25')!)).toBe(true);
    expect(overlaps(c, parseCidr('10.0.0.0/8')!)).toBe(true);
    expect(overlaps(c, parseCidr('10.78.0.0/24')!)).toBe(false);
  });
});
