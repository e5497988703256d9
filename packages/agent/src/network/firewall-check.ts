/**
 * Another firewall (Docker, ufw, firewalld, an admin's iptables) can drop what nqvm's own rules
 * accept: in nftables every base chain on a hook gets its say, and a drop anywhere is final.
 * nqvm never edits other tables; it finds such chains in `nft -j list ruleset` and reports them
 * with the rules an admin could add.
 */

export interface BlockingChain {
  family: string;
  table: string;
  chain: string;
  hook: 'forward' | 'input';
  /** `policy drop`, or the unconditional drop/reject rule that ends the chain. */
  how: 'policy' | 'final-rule';
}

export interface FirewallWarning {
  code: 'FORWARD_BLOCKED' | 'INPUT_BLOCKED';
  message: string;
  blocking: BlockingChain;
  /** nqvm bridges whose traffic the chain drops. */
  bridges: string[];
  /** Commands an admin can run to let nqvm's traffic through (nqvm's own rules still apply). */
  suggestedRules: string[];
}

interface NftChain {
  family: string;
  table: string;
  name: string;
  handle?: number;
  hook?: string;
  policy?: string;
  type?: string;
}

interface NftRule {
  family: string;
  table: string;
  chain: string;
  expr?: unknown[];
}

/** Statements that neither match nor decide. */
const PASSIVE = new Set(['counter', 'log', 'limit']);

function endsInDrop(rules: readonly NftRule[]): boolean {
  const last = rules.at(-1);
  if (!last?.expr || last.expr.length === 0) return false;
  const decisive = last.expr.filter((e) => !PASSIVE.has(Object.keys(e as object)[0] ?? ''));
  if (decisive.length !== 1) return false;
  const only = decisive[0] as Record<string, unknown>;
  return 'drop' in only || 'reject' in only;
}

/** Base chains on the forward or input hook, in other tables, that drop what they do not accept. */
export function findBlockingChains(ruleset: unknown, ownTable: string): BlockingChain[] {
  const items = (ruleset as { nftables?: unknown[] } | null)?.nftables ?? [];
  const chains: NftChain[] = [];
  const rules = new Map<string, NftRule[]>();
  for (const item of items) {
    const o = item as { chain?: NftChain; rule?: NftRule };
    if (o.chain) chains.push(o.chain);
    if (o.rule) {
      const key = `${o.rule.family} ${o.rule.table} ${o.rule.chain}`;
      rules.set(key, [...(rules.get(key) ?? []), o.rule]);
    }
  }
  const blocking: BlockingChain[] = [];
  for (const c of chains) {
    if (c.family !== 'ip' && c.family !== 'inet') continue;
    if (c.table === ownTable && c.family === 'inet') continue;
    if (c.type !== 'filter' || (c.hook !== 'forward' && c.hook !== 'input')) continue;
    const how =
      c.policy === 'drop'
        ? 'policy'
        : endsInDrop(rules.get(`${c.family} ${c.table} ${c.name}`) ?? [])
          ? 'final-rule'
          : null;
    if (how) blocking.push({ family: c.family, table: c.table, chain: c.name, hook: c.hook, how });
  }
  return blocking;
}

export interface BridgeUse {
  bridge: string;
  /** Traffic routed through the host (nat): affected by forward-hook chains. */
  routed: boolean;
  /** DHCP or DNS served by the host on the bridge: affected by input-hook chains. */
  servesHost: boolean;
}

/** Chain names Docker keeps for the admin's own rules: they survive Docker's restarts. */
const ADMIN_CHAINS = ['DOCKER-USER'];

/**
 * Warnings for the chains that block nqvm's bridges. With br_netfilter calling iptables,
 * even traffic between VMs of one bridge passes the forward hook, so every bridge is affected.
 *
 * @example
 * const warnings = firewallWarnings(JSON.parse(await host.run('nft', ['-j', 'list', 'ruleset'])), 'nqvm', uses, brNetfilter);
 */
export function firewallWarnings(
  ruleset: unknown,
  ownTable: string,
  uses: readonly BridgeUse[],
  bridgedTrafficFiltered: boolean,
): FirewallWarning[] {
  const chainNames = new Set(
    ((ruleset as { nftables?: unknown[] } | null)?.nftables ?? []).flatMap((i) => {
      const c = (i as { chain?: NftChain }).chain;
      return c ? [`${c.family} ${c.table} ${c.name}`] : [];
    }),
  );
  const warnings: FirewallWarning[] = [];
  for (const b of findBlockingChains(ruleset, ownTable)) {
    const admin = ADMIN_CHAINS.find((n) => chainNames.has(`${b.family} ${b.table} ${n}`));
    const target = `${b.family} ${b.table} ${b.hook === 'forward' && admin ? admin : b.chain}`;
    const where = `${b.family} ${b.table} ${b.chain} (${b.how === 'policy' ? 'policy drop' : 'ends in drop/reject'})`;
    if (b.hook === 'forward') {
      const bridges = uses.filter((u) => u.routed || bridgedTrafficFiltered).map((u) => u.bridge);
      if (bridges.length === 0) continue;
      warnings.push({
        code: 'FORWARD_BLOCKED',
        message: `${where} drops forwarded traffic of ${bridges.join(', ')}: VMs ${bridgedTrafficFiltered ? 'cannot reach each other or anything else' : 'cannot reach the outside'} until it accepts them`,
        blocking: b,
        bridges,
        suggestedRules: bridges.flatMap((br) => [
          `nft insert rule ${target} iifname "${br}" accept`,
          `nft insert rule ${target} oifname "${br}" accept`,
        ]),
      });
    } else {
      const bridges = uses.filter((u) => u.servesHost).map((u) => u.bridge);
      if (bridges.length === 0) continue;
      warnings.push({
        code: 'INPUT_BLOCKED',
        message: `${where} drops DHCP and DNS from VMs on ${bridges.join(', ')} to the host`,
        blocking: b,
        bridges,
        suggestedRules: bridges.flatMap((br) => [
          `nft insert rule ${target} iifname "${br}" udp dport { 53, 67 } accept`,
          `nft insert rule ${target} iifname "${br}" tcp dport 53 accept`,
        ]),
      });
    }
  }
  return warnings;
}
