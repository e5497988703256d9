import { describe, expect, it } from 'vitest';
import { findBlockingChains, firewallWarnings } from './firewall-check';

/** What `nft -j list ruleset` shows with Docker (iptables-nft) running: FORWARD policy drop. */
const docker = {
  nftables: [
    { metainfo: { version: '1.0.6' } },
    { table: { family: 'ip', name: 'filter' } },
    {
      chain: {
        family: 'ip',
        table: 'filter',
        name: 'FORWARD',
        type: 'filter',
        hook: 'forward',
        prio: 0,
        policy: 'drop',
      },
    },
    { chain: { family: 'ip', table: 'filter', name: 'DOCKER-USER' } },
    {
      chain: {
        family: 'ip',
        table: 'nat',
        name: 'POSTROUTING',
        type: 'nat',
        hook: 'postrouting',
        policy: 'accept',
      },
    },
    {
      chain: {
        family: 'inet',
        table: 'nqvm',
        name: 'forward',
        type: 'filter',
        hook: 'forward',
        policy: 'drop',
      },
    },
  ],
};

/** firewalld-like: policy accept, but the chain ends in an unconditional reject. */
const firewalld = {
  nftables: [
    {
      chain: {
        family: 'inet',
        table: 'firewalld',
        name: 'filter_FORWARD',
        type: 'filter',
        hook: 'forward',
        policy: 'accept',
      },
    },
    {
      rule: {
        family: 'inet',
        table: 'firewalld',
        chain: 'filter_FORWARD',
        expr: [{ match: { op: 'in', left: {}, right: 'x' } }, { accept: null }],
      },
    },
    {
      rule: {
        family: 'inet',
        table: 'firewalld',
        chain: 'filter_FORWARD',
        expr: [{ counter: null }, { reject: { type: 'icmpx' } }],
      },
    },
    {
      chain: {
        family: 'inet',
        table: 'firewalld',
        name: 'filter_INPUT',
        type: 'filter',
        hook: 'input',
        policy: 'accept',
      },
    },
    {
      rule: {
        family: 'inet',
        table: 'firewalld',
        chain: 'filter_INPUT',
        expr: [{ match: {} }, { drop: null }],
      },
    },
  ],
};

const ufwInput = {
  nftables: [
    {
      chain: { family: 'ip', table: 'filter', name: 'INPUT', type: 'filter', hook: 'input', policy: 'drop' },
    },
  ],
};

describe('findBlockingChains', () => {
  it('finds policy drops and final unconditional drops, ignoring nqvm’s own table and conditional rules', () => {
    expect(findBlockingChains(docker, 'nqvm')).toEqual([
      { family: 'ip', table: 'filter', chain: 'FORWARD', hook: 'forward', how: 'policy' },
    ]);
    expect(findBlockingChains(firewalld, 'nqvm')).toEqual([
      { family: 'inet', table: 'firewalld', chain: 'filter_FORWARD', hook: 'forward', how: 'final-rule' },
    ]);
    expect(findBlockingChains({ nftables: [] }, 'nqvm')).toEqual([]);
    expect(findBlockingChains(null, 'nqvm')).toEqual([]);
  });
});

describe('firewallWarnings', () => {
  const uses = [
    { bridge: 'nqbaaaaaaaa', routed: true, servesHost: true },
    { bridge: 'nqbcccccccc', routed: false, servesHost: false },
  ];

  it('warns for routed bridges, suggesting rules in Docker’s own chain for admins', () => {
    const [w, ...rest] = firewallWarnings(docker, 'nqvm', uses, false);
    expect(rest).toEqual([]);
    expect(w).toMatchObject({ code: 'FORWARD_BLOCKED', bridges: ['nqbaaaaaaaa'] });
    expect(w!.suggestedRules).toEqual([
      'nft insert rule ip filter DOCKER-USER iifname "nqbaaaaaaaa" accept',
      'nft insert rule ip filter DOCKER-USER oifname "nqbaaaaaaaa" accept',
    ]);
  });

  it('counts every bridge when br_netfilter sends bridged traffic through the forward hook', () => {
    const [w] = firewallWarnings(firewalld, 'nqvm', uses, true);
    expect(w).toMatchObject({ code: 'FORWARD_BLOCKED', bridges: ['nqbaaaaaaaa', 'nqbcccccccc'] });
    expect(w!.message).toContain('cannot reach each other');
    expect(w!.suggestedRules[0]).toBe(
      'nft insert rule inet firewalld filter_FORWARD iifname "nqbaaaaaaaa" accept',
    );
  });

  it('warns that DHCP and DNS to the host are dropped on bridges that serve them', () => {
    expect(firewallWarnings(ufwInput, 'nqvm', uses, false)).toEqual([
      expect.objectContaining({
        code: 'INPUT_BLOCKED',
        bridges: ['nqbaaaaaaaa'],
        suggestedRules: [
          'nft insert rule ip filter INPUT iifname "nqbaaaaaaaa" udp dport { 53, 67 } accept',
          'nft insert rule ip filter INPUT iifname "nqbaaaaaaaa" tcp dport 53 accept',
        ],
      }),
    ]);
    expect(firewallWarnings(ufwInput, 'nqvm', [uses[1]!], false)).toEqual([]);
  });
});
