/**
 * The agent's host networking: bridges, TAPs, nftables rules, dnsmasq and forwarding sysctls,
 * and nothing else touches them. Every operation is idempotent (a re-run after a crash
 * converges) and answers what it changed. What was asked is kept in
 * `<stateDir>/network/state.json`, so `reconcile()` can rebuild it all after a reboot.
 */
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { NqvmError } from '@nqvm/api/errors';
import { isHostAddress, overlaps, parseCidr, parseIpv4 } from '@nqvm/api/ipv4';
import { readJsonFile, writeJsonAtomic } from '../agent/state-files';
import type { NicSpec } from '../drivers/types';
import { dnsmasqConf, dnsmasqFiles, ensureDnsmasq, parseLeases, stopDnsmasq } from './dnsmasq';
import { type FirewallWarning, firewallWarnings } from './firewall-check';
import { type HostRunner, hostRunner } from './host-runner';
import {
  type Address,
  type Link,
  listAddresses,
  listLinks,
  listNeighbours,
  listRoutes,
  type Route,
  routeArgs,
} from './iproute';
import { procNetFiles, takenPorts } from './listeners';
import { assertId, assertNicIndex, bridgeMac, HostNames, macFor, NAME_ATTEMPTS, pickName } from './names';
import { learnedFromJson, leaseSet, type RulesetInput, renderRuleset, seenSet } from './nft-ruleset';
import {
  type HostNetworkInput,
  HostNetworking,
  type HostNetworkingInput,
  HostNetworkSpec,
  type HostPortForwardInput,
  HostPortForwardSpec,
  type HostTapInput,
  HostTapSpec,
  parseInput,
} from './spec';

export interface HostNetworkOptions {
  /** The agent's state directory; this module keeps `network/` in it. */
  stateDir: string;
  /** NQVM_HOST_PREFIX: starts every bridge and TAP name, and names the nft tables. Default `nq`. */
  hostPrefix?: string;
  /** A network namespace (under /run/netns) to work in: tests. Default: the agent's own. */
  netns?: string;
  /** Sees every host command before it runs. */
  onCommand?: (argv: readonly string[]) => void;
}

/** What an operation changed on the host (empty when it already matched) and what may stop it working. */
export interface HostChange {
  actions: string[];
  warnings: FirewallWarning[];
}

export interface EnsuredNetwork extends HostChange {
  bridge: string;
}

export interface EnsuredTap extends HostChange {
  tap: string;
  mac: string;
  bridge: string;
}

export interface ReconcileFailure {
  kind: 'network' | 'tap' | 'port-forward';
  id: string;
  message: string;
}

export interface ReconcileReport extends HostChange {
  /** Objects that could not be applied; everything else was. */
  failures: ReconcileFailure[];
  /**
   * TAPs that did not exist and were made anew. A VMM still running on such a NIC holds the
   * deleted device and stays cut off: the agent restarts those VMs.
   */
  createdTaps: Array<{ vmId: string; nicIndex: number; tap: string }>;
}

export interface DiscoveredAddresses {
  tap: string;
  mac: string;
  /** Distinct IPv4 addresses, most trustworthy first. */
  addresses: string[];
  /** Where each address was seen. */
  sources: Array<{ ip: string; source: 'dhcp-snoop' | 'guest-traffic' | 'dnsmasq-lease' | 'neighbour' }>;
}

interface NetworkRecord {
  spec: HostNetworkSpec;
  bridge: string;
  /** nqvm made the bridge, so it goes with the network. */
  ownBridge: boolean;
  /** bridged with an uplink: what moved from the uplink to the bridge, moved back on removal. */
  moved?: { addresses: Address[]; routes: Route[] };
}

interface TapRecord {
  spec: HostTapSpec & { mac: string };
  tap: string;
}

interface State {
  version: 1;
  networks: Record<string, NetworkRecord>;
  taps: Record<string, TapRecord>;
  portForwards: Record<string, HostPortForwardSpec>;
  /** The last nft script applied, to tell a no-op from a change. */
  ruleset?: string;
}

const EMPTY_STATE: State = { version: 1, networks: {}, taps: {}, portForwards: {} };

function tapKey(vmId: string, nicIndex: number): string {
  return `${vmId}:${nicIndex}`;
}

function addressText(a: Address): string {
  return `${a.local}/${a.prefixlen}`;
}

/** The driver's view of a NIC on a TAP this module made. */
export function nicSpec(tap: EnsuredTap, nicIndex: number): NicSpec {
  return { id: `eth${nicIndex}`, tap: tap.tap, mac: tap.mac };
}

/**
 * @example
 * const net = new HostNetwork({ stateDir: '/var/lib/nqvm/agent' });
 * await net.ensureNetwork({ id, kind: 'nat', cidr: '10.88.0.0/24', gateway: '10.88.0.1', dhcp: true, dns: true });
 * const { tap, mac } = await net.ensureTap({ vmId, nicIndex: 0, networkId: id, ip: '10.88.0.10' });
 * await net.ensurePortForward({ id: pfId, proto: 'tcp', hostPort: 8022, guestIp: '10.88.0.10', guestPort: 22 });
 */
export class HostNetwork {
  readonly names: HostNames;
  private readonly host: HostRunner;
  private readonly dir: string;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(opts: HostNetworkOptions) {
    this.names = new HostNames(opts.hostPrefix ?? 'nq');
    this.host = hostRunner({ netns: opts.netns, onCommand: opts.onCommand });
    this.dir = path.join(opts.stateDir, 'network');
  }

  /** Creates or converges a network: its bridge, address, forwarding, dnsmasq and rules. */
  ensureNetwork(input: HostNetworkInput): Promise<EnsuredNetwork> {
    const spec = parseInput(HostNetworkSpec, 'network', input);
    return this.exclusive(async () => {
      const state = await this.load();
      const actions: string[] = [];
      const record = await this.convergeNetwork(state, spec, actions);
      await this.applyDnsmasq(state, spec.id, actions);
      await this.applyRuleset(state, actions);
      return { bridge: record.bridge, actions, warnings: await this.warnings(state) };
    });
  }

  /** Removes a network without TAPs: dnsmasq, rules, and the bridge when nqvm made it. */
  removeNetwork(id: string): Promise<HostChange> {
    assertId('network id', id);
    return this.exclusive(async () => {
      const state = await this.load();
      const taps = Object.values(state.taps).filter((t) => t.spec.networkId === id);
      if (taps.length > 0) {
        throw new NqvmError('CONFLICT', `network ${id} still has TAPs; remove them first`, {
          taps: taps.map((t) => t.tap),
        });
      }
      const actions: string[] = [];
      await this.undoNetwork(state, id, await listLinks(this.host), actions);
      await this.save(state);
      await this.applyRuleset(state, actions);
      return { actions, warnings: await this.warnings(state) };
    });
  }

  /** Creates or converges a VM NIC's TAP on its network's bridge, with its anti-spoofing rules. */
  ensureTap(input: HostTapInput): Promise<EnsuredTap> {
    const spec = parseInput(HostTapSpec, 'tap', input);
    return this.exclusive(async () => {
      const state = await this.load();
      const actions: string[] = [];
      const { record } = await this.convergeTap(state, spec, await listLinks(this.host), actions);
      await this.applyDnsmasq(state, spec.networkId, actions);
      await this.applyRuleset(state, actions);
      const bridge = state.networks[spec.networkId]!.bridge;
      return { tap: record.tap, mac: record.spec.mac, bridge, actions, warnings: await this.warnings(state) };
    });
  }

  removeTap(vmId: string, nicIndex: number): Promise<HostChange> {
    assertId('vm id', vmId);
    assertNicIndex(nicIndex);
    return this.exclusive(async () => {
      const state = await this.load();
      const actions: string[] = [];
      const networkId = state.taps[tapKey(vmId, nicIndex)]?.spec.networkId;
      await this.undoTap(state, vmId, nicIndex, await listLinks(this.host), actions);
      await this.save(state);
      if (networkId) await this.applyDnsmasq(state, networkId, actions);
      await this.applyRuleset(state, actions);
      return { actions, warnings: [] };
    });
  }

  /**
   * DNAT from every host address (from the LAN and from the host itself, 127.0.0.1 included)
   * to a guest. A port the host already listens on, or another forward's, is a conflict.
   */
  ensurePortForward(input: HostPortForwardInput): Promise<HostChange> {
    const spec = parseInput(HostPortForwardSpec, 'port forward', input);
    return this.exclusive(async () => {
      const state = await this.load();
      const other = Object.values(state.portForwards).find(
        (f) => f.id !== spec.id && f.proto === spec.proto && f.hostPort === spec.hostPort,
      );
      if (other) {
        throw new NqvmError('CONFLICT', `${spec.proto} port ${spec.hostPort} is already forwarded`, {
          proto: spec.proto,
          hostPort: spec.hostPort,
          portForwardId: other.id,
        });
      }
      const current = state.portForwards[spec.id];
      if (!current || current.proto !== spec.proto || current.hostPort !== spec.hostPort) {
        await this.assertPortFree(spec.proto, spec.hostPort);
      }
      state.portForwards[spec.id] = spec;
      await this.save(state);
      const actions: string[] = [];
      await this.applyRuleset(state, actions);
      return { actions, warnings: await this.warnings(state) };
    });
  }

  removePortForward(id: string): Promise<HostChange> {
    assertId('port forward id', id);
    return this.exclusive(async () => {
      const state = await this.load();
      delete state.portForwards[id];
      await this.save(state);
      const actions: string[] = [];
      await this.applyRuleset(state, actions);
      return { actions, warnings: [] };
    });
  }

  /**
   * Makes the host hold exactly `desired` (after an agent restart or a host reboot): re-creates
   * what is missing, removes nqvm-owned leftovers that are not desired. One object failing does
   * not stop the others; the report names it.
   *
   * @example
   * const report = await net.reconcile({ networks, taps, portForwards });
   * for (const f of report.failures) log.warn(f, 'network object not applied');
   */
  reconcile(desiredInput?: HostNetworkingInput): Promise<ReconcileReport> {
    const desired =
      desiredInput === undefined ? null : parseInput(HostNetworking, 'networking', desiredInput);
    if (desired) assertUniqueIds(desired);
    return this.exclusive(async () => {
      const old = await this.load();
      const want: HostNetworking = desired ?? {
        networks: Object.values(old.networks).map((n) => n.spec),
        taps: Object.values(old.taps).map((t) => t.spec),
        portForwards: Object.values(old.portForwards),
      };
      const actions: string[] = [];
      const failures: ReconcileFailure[] = [];
      const createdTaps: ReconcileReport['createdTaps'] = [];
      const fail = (kind: ReconcileFailure['kind'], id: string, err: unknown) =>
        failures.push({ kind, id, message: err instanceof Error ? err.message : String(err) });

      await this.removeLeftovers(old, want, actions);
      const state: State = { ...EMPTY_STATE, networks: {}, taps: {}, portForwards: {}, ruleset: old.ruleset };
      for (const n of want.networks) {
        if (old.networks[n.id]?.moved) state.networks[n.id] = old.networks[n.id]!;
        try {
          await this.convergeNetwork(state, n, actions);
        } catch (err) {
          delete state.networks[n.id];
          fail('network', n.id, err);
        }
      }
      let links = await listLinks(this.host);
      for (const t of want.taps) {
        try {
          const { record, created } = await this.convergeTap(state, t, links, actions);
          if (created) createdTaps.push({ vmId: t.vmId, nicIndex: t.nicIndex, tap: record.tap });
          links = await listLinks(this.host);
        } catch (err) {
          fail('tap', `${t.vmId}:${t.nicIndex}`, err);
        }
      }
      for (const f of want.portForwards) {
        try {
          const clash = Object.values(state.portForwards).find(
            (o) => o.proto === f.proto && o.hostPort === f.hostPort,
          );
          if (clash) throw new NqvmError('CONFLICT', `${f.proto} port ${f.hostPort} is forwarded twice`);
          const before = old.portForwards[f.id];
          if (before?.proto !== f.proto || before.hostPort !== f.hostPort) {
            await this.assertPortFree(f.proto, f.hostPort);
          }
          state.portForwards[f.id] = f;
        } catch (err) {
          fail('port-forward', f.id, err);
        }
      }
      await this.save(state);
      for (const id of Object.keys(state.networks)) {
        try {
          await this.applyDnsmasq(state, id, actions);
        } catch (err) {
          fail('network', id, err);
        }
      }
      await this.applyRuleset(state, actions, true);
      return { actions, warnings: await this.warnings(state), failures, createdTaps };
    });
  }

  /**
   * The TAPs this module made, by VM id. Read from the saved state without waiting for changes
   * in progress (state files are replaced whole), so a metrics scrape never queues behind a boot.
   */
  async tapsByVm(): Promise<Map<string, Array<{ nicIndex: number; tap: string }>>> {
    const out = new Map<string, Array<{ nicIndex: number; tap: string }>>();
    for (const t of Object.values((await this.load()).taps)) {
      const list = out.get(t.spec.vmId) ?? [];
      list.push({ nicIndex: t.spec.nicIndex, tap: t.tap });
      out.set(t.spec.vmId, list);
    }
    return out;
  }

  /**
   * The addresses a VM NIC's guest got, found on the host without asking the guest: DHCP
   * answers to its MAC seen on its TAP, the sources of its own traffic, the network's dnsmasq
   * leases, and the bridge's neighbour table.
   */
  discoverAddresses(vmId: string, nicIndex: number): Promise<DiscoveredAddresses> {
    assertId('vm id', vmId);
    assertNicIndex(nicIndex);
    return this.exclusive(async () => {
      const state = await this.load();
      const record = state.taps[tapKey(vmId, nicIndex)];
      if (!record)
        throw new NqvmError('NOT_FOUND', `NIC ${tapKey(vmId, nicIndex)} not found`, {
          id: tapKey(vmId, nicIndex),
        });
      const network = state.networks[record.spec.networkId];
      const sources: DiscoveredAddresses['sources'] = [];
      const learned = await this.learned();
      for (const ip of learned.get(leaseSet(record.tap)) ?? []) sources.push({ ip, source: 'dhcp-snoop' });
      for (const ip of learned.get(seenSet(record.tap)) ?? []) sources.push({ ip, source: 'guest-traffic' });
      if (network) {
        const leaseFile = dnsmasqFiles(this.networkDir(network.spec.id)).leases;
        const leaseText = await readFile(leaseFile, 'utf8').catch(() => '');
        const leased = parseLeases(leaseText).get(record.spec.mac);
        if (leased) sources.push({ ip: leased, source: 'dnsmasq-lease' });
        for (const n of await listNeighbours(this.host, network.bridge).catch(() => [])) {
          if (n.mac === record.spec.mac && !n.state.includes('FAILED'))
            sources.push({ ip: n.ip, source: 'neighbour' });
        }
      }
      return {
        tap: record.tap,
        mac: record.spec.mac,
        addresses: [...new Set(sources.map((s) => s.ip))],
        sources,
      };
    });
  }

  /** Other firewalls' chains that would drop this host's VM traffic, with the rules to add. */
  inspectFirewall(): Promise<FirewallWarning[]> {
    return this.exclusive(async () => this.warnings(await this.load()));
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => {});
    return run;
  }

  private networkDir(id: string): string {
    assertId('network id', id);
    return path.join(this.dir, 'networks', id);
  }

  private async load(): Promise<State> {
    const raw = (await readJsonFile(path.join(this.dir, 'state.json'))) as State | null;
    return raw?.version === 1 ? raw : { ...EMPTY_STATE, networks: {}, taps: {}, portForwards: {} };
  }

  private async save(state: State): Promise<void> {
    await writeJsonAtomic(path.join(this.dir, 'state.json'), state);
  }

  private async sysctl(key: string, value: '0' | '1', actions: string[]): Promise<void> {
    const current = (await this.host.run('cat', [`/proc/sys/${key}`])).trim();
    if (current === value) return;
    await this.host.run('sysctl', ['-q', '-w', `${key}=${value}`]);
    actions.push(`set ${key}=${value}`);
  }

  private async convergeNetwork(
    state: State,
    spec: HostNetworkSpec,
    actions: string[],
  ): Promise<NetworkRecord> {
    const previous = state.networks[spec.id];
    if (
      previous &&
      (previous.spec.kind !== spec.kind ||
        previous.spec.bridge !== spec.bridge ||
        (spec.kind === 'bridged' && previous.spec.uplink !== spec.uplink))
    ) {
      throw new NqvmError(
        'CONFLICT',
        `network ${spec.id} exists with another kind, bridge or uplink; remove it first`,
      );
    }
    const links = await listLinks(this.host);
    if (spec.kind === 'bridged' && spec.bridge) {
      const link = links.get(spec.bridge);
      if (link?.kind !== 'bridge')
        throw new NqvmError('VALIDATION_FAILED', `${spec.bridge} is not an existing bridge`, {
          bridge: spec.bridge,
        });
      const record: NetworkRecord = { spec, bridge: spec.bridge, ownBridge: false };
      state.networks[spec.id] = record;
      await this.save(state);
      return record;
    }
    const uplink = spec.uplink ? links.get(spec.uplink) : undefined;
    if (spec.uplink && !uplink)
      throw new NqvmError('VALIDATION_FAILED', `uplink ${spec.uplink} does not exist`, {
        uplink: spec.uplink,
      });
    const bridge = this.bridgeNameFor(spec.id, links);
    if (spec.kind === 'bridged' && uplink) this.assertUplinkUsable(uplink, bridge);
    if (spec.cidr) await this.assertNoOverlap(state, spec, bridge);

    const record: NetworkRecord = { ...previous, spec, bridge, ownBridge: true };
    const existing = links.get(bridge);
    if (!existing) {
      const mac = uplink && spec.kind === 'bridged' ? uplink.mac : bridgeMac(spec.id);
      // Saved first: a crash right after the bridge appears still finds it ours.
      state.networks[spec.id] = record;
      await this.save(state);
      await this.host.run('ip', [
        'link',
        'add',
        'name',
        bridge,
        'address',
        mac,
        'type',
        'bridge',
        'stp_state',
        '0',
        'forward_delay',
        '0',
      ]);
      actions.push(`created bridge ${bridge}`);
    } else if (existing.kind !== 'bridge') {
      throw new NqvmError('CONFLICT', `${bridge} exists and is not a bridge`, { bridge });
    }
    const tag = this.names.bridgeTag(spec.id);
    if (existing?.alias !== tag || !existing?.up) {
      await this.host.run('ip', ['link', 'set', 'dev', bridge, 'alias', tag, 'up']);
      if (existing) actions.push(`set ${bridge} up`);
    }
    if (spec.kind === 'bridged' && uplink) {
      await this.enslaveUplink(state, record, uplink, actions);
    } else {
      await this.convergeBridgeAddress(bridge, spec, actions);
    }
    if (spec.kind === 'nat') {
      await this.sysctl('net/ipv4/ip_forward', '1', actions);
      await this.sysctl(`net/ipv4/conf/${bridge}/forwarding`, '1', actions);
      // Forwards used from the host itself (127.0.0.1) are routed out of this bridge.
      await this.sysctl(`net/ipv4/conf/${bridge}/route_localnet`, '1', actions);
    }
    state.networks[spec.id] = record;
    await this.save(state);
    return record;
  }

  private bridgeNameFor(id: string, links: ReadonlyMap<string, Link>): string {
    const candidates = Array.from({ length: NAME_ATTEMPTS }, (_, salt) => this.names.bridge(id, salt));
    const name = pickName(candidates, links, this.names.bridgeTag(id), this.names.bridgePattern);
    if (!name)
      throw new NqvmError('CONFLICT', `every bridge name for network ${id} is taken`, { candidates });
    return name;
  }

  private assertUplinkUsable(uplink: Link, bridge: string): void {
    if (
      uplink.kind === 'bridge' ||
      this.names.bridgePattern.test(uplink.name) ||
      this.names.tapPattern.test(uplink.name)
    ) {
      throw new NqvmError(
        'VALIDATION_FAILED',
        `${uplink.name} cannot be an uplink (a bridge or an nqvm interface)`,
        {
          uplink: uplink.name,
        },
      );
    }
    if (uplink.master !== null && uplink.master !== bridge) {
      throw new NqvmError('CONFLICT', `${uplink.name} is already a port of ${uplink.master}`, {
        uplink: uplink.name,
      });
    }
  }

  private async assertNoOverlap(state: State, spec: HostNetworkSpec, bridge: string): Promise<void> {
    const mine = parseCidr(spec.cidr ?? '');
    if (!mine) return;
    for (const other of Object.values(state.networks)) {
      const theirs = other.spec.id !== spec.id && other.spec.cidr ? parseCidr(other.spec.cidr) : null;
      if (theirs && overlaps(mine, theirs)) {
        throw new NqvmError(
          'CONFLICT',
          `${spec.cidr} overlaps network ${other.spec.id} (${other.spec.cidr})`,
          {
            cidr: spec.cidr,
            networkId: other.spec.id,
          },
        );
      }
    }
    for (const r of await listRoutes(this.host)) {
      if (r.dst === 'default' || r.dev === bridge) continue;
      const theirs = parseCidr(r.dst.includes('/') ? r.dst : `${r.dst}/32`);
      if (theirs && overlaps(mine, theirs)) {
        throw new NqvmError('CONFLICT', `${spec.cidr} overlaps the host route ${r.dst} on ${r.dev}`, {
          cidr: spec.cidr,
          route: r.dst,
          dev: r.dev,
        });
      }
    }
  }

  private async convergeBridgeAddress(
    bridge: string,
    spec: HostNetworkSpec,
    actions: string[],
  ): Promise<void> {
    const prefix = parseCidr(spec.cidr ?? '')?.prefix;
    const want = spec.gateway && prefix !== undefined ? `${spec.gateway}/${prefix}` : null;
    const have = (await listAddresses(this.host, bridge)).map(addressText);
    for (const a of have) {
      if (a === want) continue;
      await this.host.run('ip', ['address', 'del', a, 'dev', bridge]);
      actions.push(`removed ${a} from ${bridge}`);
    }
    if (want && !have.includes(want)) {
      await this.host.run('ip', ['address', 'replace', want, 'dev', bridge]);
      actions.push(`set ${want} on ${bridge}`);
    }
  }

  /**
   * Puts the uplink under the bridge and moves its addresses and routes there, so the host keeps
   * its connectivity. What moved is saved before the move, to be moved back on removal.
   */
  private async enslaveUplink(
    state: State,
    record: NetworkRecord,
    uplink: Link,
    actions: string[],
  ): Promise<void> {
    const bridge = record.bridge;
    const addresses = await listAddresses(this.host, uplink.name);
    const routes = (await listRoutes(this.host, uplink.name)).filter((r) => r.protocol !== 'kernel');
    const moved = record.moved ?? { addresses: [], routes: [] };
    for (const a of addresses)
      if (!moved.addresses.some((m) => addressText(m) === addressText(a))) moved.addresses.push(a);
    for (const r of routes)
      if (!moved.routes.some((m) => m.dst === r.dst && m.metric === r.metric)) moved.routes.push(r);
    record.moved = moved;
    state.networks[record.spec.id] = record;
    await this.save(state);
    if (uplink.master !== bridge || !uplink.up) {
      await this.host.run('ip', ['link', 'set', 'dev', uplink.name, 'master', bridge, 'up']);
      actions.push(`enslaved ${uplink.name} to ${bridge}`);
    }
    const onBridge = new Set((await listAddresses(this.host, bridge)).map(addressText));
    for (const a of moved.addresses) {
      if (onBridge.has(addressText(a))) continue;
      await this.host.run('ip', ['address', 'replace', addressText(a), 'dev', bridge]);
      actions.push(`moved ${addressText(a)} from ${uplink.name} to ${bridge}`);
    }
    const bridgeRoutes = await listRoutes(this.host, bridge);
    for (const r of moved.routes) {
      if (bridgeRoutes.some((b) => b.dst === r.dst && b.gateway === r.gateway && b.metric === r.metric))
        continue;
      await this.host.run('ip', routeArgs(r, bridge));
      actions.push(`moved route ${r.dst} to ${bridge}`);
    }
    for (const a of addresses)
      await this.host.run('ip', ['address', 'del', addressText(a), 'dev', uplink.name]);
  }

  private async undoNetwork(
    state: State,
    id: string,
    links: ReadonlyMap<string, Link>,
    actions: string[],
  ): Promise<void> {
    const record = state.networks[id];
    if (await stopDnsmasq(this.networkDir(id))) actions.push(`stopped dnsmasq of ${id}`);
    await rm(this.networkDir(id), { recursive: true, force: true });
    const tag = this.names.bridgeTag(id);
    const bridge = record?.ownBridge ? record.bridge : [...links.values()].find((l) => l.alias === tag)?.name;
    if (record?.moved && record.spec.uplink && links.has(record.spec.uplink)) {
      const uplink = record.spec.uplink;
      await this.host.run('ip', ['link', 'set', 'dev', uplink, 'nomaster']);
      const have = new Set((await listAddresses(this.host, uplink)).map(addressText));
      for (const a of record.moved.addresses) {
        if (!have.has(addressText(a)))
          await this.host.run('ip', ['address', 'replace', addressText(a), 'dev', uplink]);
      }
      for (const r of record.moved.routes) await this.host.run('ip', routeArgs(r, uplink));
      actions.push(`gave ${uplink} back its addresses and routes`);
    }
    if (bridge && links.get(bridge)?.alias === tag && this.names.bridgePattern.test(bridge)) {
      await this.host.run('ip', ['link', 'del', 'dev', bridge]);
      actions.push(`deleted bridge ${bridge}`);
    }
    delete state.networks[id];
  }

  private async convergeTap(
    state: State,
    input: HostTapSpec,
    links: ReadonlyMap<string, Link>,
    actions: string[],
  ): Promise<{ record: TapRecord; created: boolean }> {
    const network = state.networks[input.networkId];
    if (!network)
      throw new NqvmError('NOT_FOUND', `network ${input.networkId} not found`, { id: input.networkId });
    const spec = { ...input, mac: input.mac ?? macFor(input.vmId, input.nicIndex) };
    const key = tapKey(spec.vmId, spec.nicIndex);
    if (spec.ip !== undefined) this.assertTapAddress(network.spec, spec.ip);
    for (const [k, other] of Object.entries(state.taps)) {
      if (k === key || other.spec.networkId !== spec.networkId) continue;
      if (other.spec.mac === spec.mac || (spec.ip !== undefined && other.spec.ip === spec.ip)) {
        throw new NqvmError('CONFLICT', `another NIC on network ${spec.networkId} has this MAC or address`, {
          mac: spec.mac,
          ip: spec.ip,
          tap: other.tap,
        });
      }
    }
    const tag = this.names.tapTag(spec.vmId, spec.nicIndex);
    const candidates = Array.from({ length: NAME_ATTEMPTS }, (_, salt) =>
      this.names.tap(spec.vmId, spec.nicIndex, salt),
    );
    const tap = pickName(candidates, links, tag, this.names.tapPattern);
    if (!tap) throw new NqvmError('CONFLICT', `every TAP name for NIC ${key} is taken`, { candidates });
    let link = links.get(tap);
    const created = !link;
    if (link && (link.kind !== 'tun' || link.tunType !== 'tap')) {
      throw new NqvmError('CONFLICT', `${tap} exists and is not a TAP`, { tap });
    }
    const record: TapRecord = { spec, tap };
    state.taps[key] = record;
    await this.save(state);
    if (!link) {
      await this.host.run('ip', ['tuntap', 'add', 'dev', tap, 'mode', 'tap', 'user', String(spec.uid)]);
      actions.push(`created TAP ${tap}`);
      link = {
        name: tap,
        alias: null,
        kind: 'tun',
        tunType: 'tap',
        tunUser: String(spec.uid),
        master: null,
        up: false,
        mac: '',
      };
    }
    if (link.alias !== tag || link.master !== network.bridge || !link.up) {
      await this.host.run('ip', ['link', 'set', 'dev', tap, 'alias', tag, 'master', network.bridge, 'up']);
      actions.push(`attached ${tap} to ${network.bridge}`);
    }
    return { record, created };
  }

  private assertTapAddress(network: HostNetworkSpec, ip: string): void {
    const cidr = parseCidr(network.cidr ?? '');
    const address = parseIpv4(ip) ?? -1;
    if (!cidr) return;
    if (!isHostAddress(cidr, address) || ip === network.gateway) {
      throw new NqvmError('VALIDATION_FAILED', `${ip} is not a free host address of ${network.cidr}`, {
        ip,
        cidr: network.cidr,
      });
    }
  }

  private async undoTap(
    state: State,
    vmId: string,
    nicIndex: number,
    links: ReadonlyMap<string, Link>,
    actions: string[],
  ): Promise<void> {
    const tag = this.names.tapTag(vmId, nicIndex);
    for (const l of links.values()) {
      if (l.alias !== tag || !this.names.tapPattern.test(l.name)) continue;
      await this.host.run('ip', ['link', 'del', 'dev', l.name]);
      actions.push(`deleted TAP ${l.name}`);
    }
    delete state.taps[tapKey(vmId, nicIndex)];
  }

  /** Tagged links, network folders and state entries of this agent that `want` does not hold. */
  private async removeLeftovers(old: State, want: HostNetworking, actions: string[]): Promise<void> {
    const wantTaps = new Set(want.taps.map((t) => this.names.tapTag(t.vmId, t.nicIndex)));
    const wantNetworks = new Set(want.networks.map((n) => n.id));
    const links = await listLinks(this.host);
    for (const l of links.values()) {
      if (
        l.alias?.startsWith(this.names.tagPrefix) &&
        this.names.tapPattern.test(l.name) &&
        !wantTaps.has(l.alias)
      ) {
        await this.host.run('ip', ['link', 'del', 'dev', l.name]);
        actions.push(`deleted TAP ${l.name}`);
      }
    }
    const state: State = { ...old, networks: { ...old.networks }, taps: {} };
    const ids = new Set(Object.keys(old.networks));
    for (const l of links.values()) {
      const m = l.alias?.startsWith(`${this.names.tagPrefix}network:`)
        ? l.alias.slice(`${this.names.tagPrefix}network:`.length)
        : null;
      if (m && this.names.bridgePattern.test(l.name)) ids.add(m);
    }
    const folders = await readdir(path.join(this.dir, 'networks')).catch(() => [] as string[]);
    for (const f of folders) ids.add(f);
    const fresh = await listLinks(this.host);
    for (const id of ids) {
      if (wantNetworks.has(id)) continue;
      try {
        assertId('network id', id);
      } catch {
        continue;
      }
      await this.undoNetwork(state, id, fresh, actions);
    }
  }

  /** Whether a program on the host listens on the port (TCP) or has it bound (UDP). */
  async listensOn(proto: 'tcp' | 'udp', port: number): Promise<boolean> {
    const tables = await Promise.all(
      procNetFiles(proto).map((f) => this.host.run('cat', [f]).catch(() => '')),
    );
    return tables.some((t) => takenPorts(t, proto).has(port));
  }

  private async assertPortFree(proto: 'tcp' | 'udp', port: number): Promise<void> {
    if (await this.listensOn(proto, port)) {
      throw new NqvmError('CONFLICT', `the host already listens on ${proto} port ${port}`, {
        proto,
        hostPort: port,
      });
    }
  }

  private async applyDnsmasq(state: State, networkId: string, actions: string[]): Promise<void> {
    const record = state.networks[networkId];
    const dir = this.networkDir(networkId);
    const spec = record?.spec;
    const cidr = spec?.cidr ? parseCidr(spec.cidr) : null;
    if (!record || !spec || !cidr || !spec.gateway || !servesDhcp(spec)) {
      if (await stopDnsmasq(dir)) actions.push(`stopped dnsmasq of ${networkId}`);
      return;
    }
    await mkdir(dir, { recursive: true, mode: 0o755 });
    const staticLeases = Object.values(state.taps)
      .filter((t) => t.spec.networkId === networkId && t.spec.ip !== undefined)
      .map((t) => ({ mac: t.spec.mac, ip: t.spec.ip! }))
      .sort((a, b) => a.mac.localeCompare(b.mac));
    const conf = dnsmasqConf(dir, {
      bridge: record.bridge,
      gateway: spec.gateway,
      cidr,
      dhcp: true,
      dhcpRange: spec.dhcpRange,
      router: spec.kind === 'nat',
      dns: spec.dns,
      dnsServers: spec.dnsServers,
      staticLeases,
    });
    const done = await ensureDnsmasq(this.host, dir, conf);
    if (done !== 'unchanged') actions.push(`${done} dnsmasq on ${record.bridge}`);
  }

  private async learned(): Promise<Map<string, string[]>> {
    const text = await this.host
      .run('nft', ['-j', 'list', 'table', 'bridge', this.names.table])
      .catch(() => null);
    return text ? learnedFromJson(JSON.parse(text)) : new Map();
  }

  /** How many of nqvm's two tables (inet, bridge) exist. */
  private async tablesPresent(): Promise<number> {
    const json = JSON.parse(await this.host.run('nft', ['-j', 'list', 'tables'])) as { nftables?: unknown[] };
    return (json.nftables ?? []).filter((i) => {
      const t = (i as { table?: { family: string; name: string } }).table;
      return t?.name === this.names.table && (t.family === 'inet' || t.family === 'bridge');
    }).length;
  }

  private rulesetInput(state: State): RulesetInput {
    return {
      table: this.names.table,
      networks: Object.values(state.networks).map((n) => ({
        kind: n.spec.kind,
        bridge: n.bridge,
        cidr: n.spec.cidr,
        uplink: n.spec.kind === 'nat' ? n.spec.uplink : undefined,
      })),
      taps: Object.values(state.taps).map((t) => ({ tap: t.tap, mac: t.spec.mac, ip: t.spec.ip })),
      portForwards: Object.values(state.portForwards),
    };
  }

  /**
   * Writes nqvm's tables from `state` in one transaction. Skipped when the last script applied
   * is the same and the tables are there (`force`: always, as reconcile does).
   */
  private async applyRuleset(state: State, actions: string[], force = false): Promise<void> {
    const input = this.rulesetInput(state);
    const script = renderRuleset(input);
    const empty = input.networks.length === 0 && input.taps.length === 0 && input.portForwards.length === 0;
    const present = await this.tablesPresent();
    const inPlace = present === (empty ? 0 : 2);
    if (!force && script === state.ruleset && inPlace) return;
    // Addresses learned by the old tables' sets are carried into the new ones.
    await this.host.run('nft', ['-f', '-'], {
      input: renderRuleset({ ...input, learned: await this.learned() }),
    });
    if (script !== state.ruleset || !inPlace) {
      actions.push(empty ? 'removed the nqvm nftables tables' : 'applied the nqvm nftables ruleset');
    }
    state.ruleset = script;
    await this.save(state);
  }

  private async warnings(state: State): Promise<FirewallWarning[]> {
    const networks = Object.values(state.networks);
    if (networks.length === 0) return [];
    const ruleset = JSON.parse(await this.host.run('nft', ['-j', 'list', 'ruleset']));
    const brNetfilter =
      (
        await this.host.run('cat', ['/proc/sys/net/bridge/bridge-nf-call-iptables']).catch(() => '0')
      ).trim() === '1';
    return firewallWarnings(
      ruleset,
      this.names.table,
      networks.map((n) => ({
        bridge: n.bridge,
        routed: n.spec.kind === 'nat',
        servesHost: servesDhcp(n.spec),
      })),
      brNetfilter,
    );
  }
}

/**
 * Whether the network's dnsmasq serves DHCP on its bridge: every nat and isolated network with
 * a gateway does, each NIC's assigned address reserved for its MAC (as libvirt's and Proxmox's
 * default networks do), so any guest with a DHCP client gets its address, gateway and DNS;
 * `dhcp` adds the pool of `dhcpRange`. A bridged network's addresses come from the LAN.
 */
export function servesDhcp(spec: HostNetworkSpec): boolean {
  return spec.kind !== 'bridged' && spec.cidr !== undefined && spec.gateway !== undefined;
}

function assertUniqueIds(desired: HostNetworking): void {
  const dup = (values: string[]) => values.find((v, i) => values.indexOf(v) !== i);
  const problems = [
    dup(desired.networks.map((n) => n.id)) && 'a network id is repeated',
    dup(desired.taps.map((t) => tapKey(t.vmId, t.nicIndex))) && 'a NIC is repeated',
    dup(desired.portForwards.map((f) => f.id)) && 'a port forward id is repeated',
  ].filter(Boolean);
  if (problems.length > 0)
    throw new NqvmError('VALIDATION_FAILED', `invalid networking: ${problems.join('; ')}`);
}
