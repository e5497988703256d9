import { InterfaceName } from '@nqvm/api';
import { describe, expect, it } from 'vitest';
import { assertIfName, bridgeMac, HostNames, macFor, pickName } from './names';

const VM = '8d3f6a1e-2b4c-4d5e-8f90-a1b2c3d4e5f6';

describe('HostNames', () => {
  const names = new HostNames();

  it('derives short, valid, stable interface names from ids', () => {
    const bridge = names.bridge(VM);
    const tap = names.tap(VM, 0);
    expect(bridge).toMatch(/^nqb[a-z2-7]{8}$/);
    expect(tap).toMatch(/^nqt[a-z2-7]{8}$/);
    expect(bridge.length).toBeLessThanOrEqual(15);
    expect(names.bridge(VM)).toBe(bridge);
    expect(names.tap(VM, 1)).not.toBe(tap);
    expect(names.tap(VM, 0, 1)).not.toBe(tap);
    expect(names.bridgePattern.test(bridge)).toBe(true);
    expect(names.tapPattern.test(bridge)).toBe(false);
  });

  it('keeps two host prefixes apart and fits 15 characters with the longest prefix', () => {
    const other = new HostNames('ab12');
    expect(other.tap(VM, 31)).toMatch(/^ab12t[a-z2-7]{8}$/);
    expect(other.tap(VM, 31).length).toBe(13);
    expect(other.table).toBe('nqvm_ab12');
    expect(names.table).toBe('nqvm');
    expect(other.tapTag(VM, 0)).not.toBe(names.tapTag(VM, 0));
  });

  it('refuses ids and prefixes that could reach a command line', () => {
    expect(() => names.bridge('a; reboot')).toThrow(/letters, digits and dashes/);
    expect(() => names.tap('../x', 0)).toThrow();
    expect(() => names.tap(VM, 32)).toThrow(/0\.\.31/);
    expect(() => new HostNames('NQ')).toThrow();
    expect(() => new HostNames('toolong')).toThrow();
  });
});

describe('interface names', () => {
  it('follow the one rule the API validates with: no option-like, relative or over-long names', () => {
    for (const bad of [
      '-h',
      '-json',
      '..',
      '.',
      '.x',
      'a/b',
      'eth0:1',
      'br 0',
      'br\n0',
      'x'.repeat(16),
      '',
    ]) {
      expect(() => assertIfName('uplink', bad), bad).toThrow(/interface name/);
      expect(InterfaceName.safeParse(bad).success, bad).toBe(false);
    }
    for (const good of ['eth0', 'eth0.100', 'br-lan', 'enp0s31f6', 'wg_0', 'x'.repeat(15)]) {
      expect(() => assertIfName('uplink', good)).not.toThrow();
      expect(InterfaceName.safeParse(good).success, good).toBe(true);
    }
  });
});

describe('macFor', () => {
  it('is locally administered, unicast, stable and distinct per NIC', () => {
    const mac = macFor(VM, 0);
    expect(mac).toMatch(/^02(:[0-9a-f]{2}){5}$/);
    expect(macFor(VM, 0)).toBe(mac);
    expect(macFor(VM, 1)).not.toBe(mac);
    expect(bridgeMac(VM)).not.toBe(mac);
    const first = Number.parseInt(mac.slice(0, 2), 16);
    expect(first & 0b10).toBe(0b10); // locally administered
    expect(first & 0b01).toBe(0); // unicast
  });
});

describe('pickName', () => {
  const pattern = new HostNames().tapPattern;
  const tag = 'nqvm:nq:tap:vm:0';

  it('takes the first candidate nobody holds', () => {
    const links = new Map([['nqtaaaaaaaa', { alias: null }]]);
    expect(pickName(['nqtaaaaaaaa', 'nqtbbbbbbbb'], links, tag, pattern)).toBe('nqtbbbbbbbb');
  });

  it('finds its own interface again, under whichever salted name it got', () => {
    const links = new Map([
      ['nqtaaaaaaaa', { alias: null }],
      ['nqtcccccccc', { alias: tag }],
    ]);
    expect(pickName(['nqtaaaaaaaa', 'nqtbbbbbbbb'], links, tag, pattern)).toBe('nqtcccccccc');
  });

  it('ignores our tag on an interface that does not look like ours', () => {
    const links = new Map([['eth0', { alias: tag }]]);
    expect(pickName(['nqtaaaaaaaa'], links, tag, pattern)).toBe('nqtaaaaaaaa');
  });

  it('gives up when every candidate is taken', () => {
    const links = new Map([['nqtaaaaaaaa', { alias: 'someone else' }]]);
    expect(pickName(['nqtaaaaaaaa'], links, tag, pattern)).toBeNull();
  });
});
