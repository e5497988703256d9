import { describe, expect, it } from 'vitest';
import { learnedFromJson, renderRuleset } from './nft-ruleset';

const base = { table: 'nqvm', networks: [], taps: [], portForwards: [] };

describe('renderRuleset', () => {
  it('only removes nqvm tables when there is nothing to hold, touching no other table', () => {
    expect(renderRuleset(base)).toBe(
      'add table inet nqvm\ndelete table inet nqvm\nadd table bridge nqvm\ndelete table bridge nqvm\n',
    );
  });

  it('replaces both tables in one script: forwards, masquerade and the fences of each kind', () => {
    const script = renderRuleset({
      ...base,
      networks: [
        { kind: 'nat', bridge: 'nqbaaaaaaaa', cidr: '10.77.0.0/24' },
        { kind: 'nat', bridge: 'nqbbbbbbbbb', cidr: '10.79.0.0/24', uplink: 'eth1' },
        { kind: 'isolated', bridge: 'nqbcccccccc', cidr: '10.78.0.0/24' },
        { kind: 'bridged', bridge: 'br0' },
      ],
      portForwards: [{ id: 'pf-1', proto: 'udp', hostPort: 5353, guestIp: '10.77.0.5', guestPort: 53 }],
    });
    const tables = script.match(/^(add |delete )?table \S+ \S+/gm);
    expect(tables).toEqual([
      'add table inet nqvm',
      'delete table inet nqvm',
      'add table bridge nqvm',
      'delete table bridge nqvm',
      'table inet nqvm',
      'table bridge nqvm',
    ]);
    expect(script).toContain('udp dport 5353 dnat ip to 10.77.0.5:53 comment "pf:pf-1"');
    expect(script).toContain(
      'ip saddr 10.77.0.0/24 ip daddr != 10.77.0.0/24 oifname != "nqbaaaaaaaa" masquerade',
    );
    expect(script).toContain('ip saddr 10.79.0.0/24 ip daddr != 10.79.0.0/24 oifname "eth1" masquerade');
    expect(script).toContain('oifname "nqbaaaaaaaa" iifname != "nqbaaaaaaaa" drop');
    expect(script).toContain('iifname "nqbcccccccc" oifname != "nqbcccccccc" drop');
    expect(script).toContain('iifname { "nqbaaaaaaaa", "nqbbbbbbbbb" } ip daddr 127.0.0.0/8 drop');
    expect(script).not.toContain('br0');
  });

  it('lets a TAP send only with its MAC, and with its address when nqvm assigned one', () => {
    const script = renderRuleset({
      ...base,
      taps: [
        { tap: 'nqtaaaaaaaa', mac: '02:00:00:00:00:01', ip: '10.77.0.10' },
        { tap: 'nqtbbbbbbbb', mac: '02:00:00:00:00:02' },
      ],
      learned: new Map([['seen_nqtbbbbbbbb', ['192.168.1.7', 'not-an-ip']]]),
    });
    const chain = (name: string) => script.slice(script.indexOf(`chain ${name} {`)).split('\n  }')[0]!;
    expect(chain('from_nqtaaaaaaaa')).toContain('ether saddr != 02:00:00:00:00:01 drop');
    expect(chain('from_nqtaaaaaaaa')).toContain('ip saddr != 10.77.0.10 drop');
    expect(chain('from_nqtaaaaaaaa')).toContain('arp saddr ip != { 0.0.0.0, 10.77.0.10 } drop');
    expect(chain('from_nqtbbbbbbbb')).toContain('ether saddr != 02:00:00:00:00:02 drop');
    expect(chain('from_nqtbbbbbbbb')).not.toContain('ip saddr !=  drop');
    expect(chain('to_nqtbbbbbbbb')).toContain(
      '@th,288,48 0x020000000002 update @lease_nqtbbbbbbbb { @th,192,32 }',
    );
    expect(script).toContain('elements = { 192.168.1.7 }');
    expect(script).toContain(
      'iifname vmap { "nqtaaaaaaaa" : jump from_nqtaaaaaaaa, "nqtbbbbbbbb" : jump from_nqtbbbbbbbb }',
    );
  });

  it('refuses anything that is not a checked name, address, MAC or port', () => {
    const nat = { kind: 'nat' as const, bridge: 'nqbaaaaaaaa', cidr: '10.0.0.0/24' };
    expect(() => renderRuleset({ ...base, table: 'nqvm; flush ruleset' })).toThrow(/table/);
    expect(() => renderRuleset({ ...base, networks: [{ ...nat, bridge: 'x" accept; "' }] })).toThrow(
      /interface/,
    );
    expect(() => renderRuleset({ ...base, networks: [{ ...nat, cidr: '10.0.0.0/24 accept' }] })).toThrow(
      /prefix/,
    );
    expect(() =>
      renderRuleset({ ...base, taps: [{ tap: 'nqtaaaaaaaa', mac: '02:00:00:00:00:0g' }] }),
    ).toThrow(/MAC/);
    expect(() =>
      renderRuleset({
        ...base,
        portForwards: [{ id: 'p', proto: 'tcp', hostPort: 0, guestIp: '10.0.0.2', guestPort: 80 }],
      }),
    ).toThrow(/port/);
  });
});

describe('learnedFromJson', () => {
  it('reads the learned-address sets of `nft -j list table bridge nqvm`', () => {
    const json = {
      nftables: [
        { metainfo: { version: '1.0.6' } },
        {
          set: {
            name: 'seen_nqtaaaaaaaa',
            elem: [{ elem: { val: '10.0.0.5', expires: 86_000 } }, '10.0.0.6'],
          },
        },
        { set: { name: 'lease_nqtaaaaaaaa' } },
        { set: { name: 'other', elem: ['10.0.0.9'] } },
      ],
    };
    expect(learnedFromJson(json)).toEqual(
      new Map([
        ['seen_nqtaaaaaaaa', ['10.0.0.5', '10.0.0.6']],
        ['lease_nqtaaaaaaaa', []],
      ]),
    );
  });
});
