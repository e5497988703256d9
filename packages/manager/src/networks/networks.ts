/**
 * The network resource: nat and isolated networks own a prefix their VMs' addresses come from
 * (no two nqvm networks overlap); bridged networks join a LAN through an existing bridge or an
 * uplink. Hosts make them when a VM on them is placed there (the reconciler sends each VM's NICs
 * with their networks).
 */
import { randomUUID } from 'node:crypto';
import {
  type Network,
  type NetworkCreate,
  type NetworkKind,
  type NetworkPatch,
  NqvmError,
  reservedRange,
} from '@nqvm/api';
import { nowIso } from '../clock';
import { type Datastore, isUniqueViolation } from '../db/datastore';
import { paginate } from '../db/pagination';
import type { HostRow, NetworkRow } from '../db/schema';
import type { EventBus } from '../events/bus';
import { availableOn, type InterfaceNeed, interfaceNeed, reportedInterfaces, serves } from './availability';
import { firstHost, formatIpv4, isHostAddress, overlaps, parseIpv4, parseSubnet, type Subnet } from './ipam';

/** What `networks.config` holds besides the columns. */
export interface NetworkConfig {
  dhcp: boolean;
  bridge: string | null;
  uplink: string | null;
  dns_servers: string[];
}

export interface NetworkListFilter {
  limit: number;
  cursor?: string;
  kind?: NetworkKind;
  name?: string;
}

export function networkConfig(r: Pick<NetworkRow, 'config'>): NetworkConfig {
  const c = JSON.parse(r.config) as Partial<NetworkConfig>;
  return {
    dhcp: c.dhcp ?? false,
    bridge: c.bridge ?? null,
    uplink: c.uplink ?? null,
    dns_servers: c.dns_servers ?? [],
  };
}

type HostReport = Pick<HostRow, 'id' | 'name' | 'capacity'>;

export function toNetwork(r: NetworkRow, nicCount: number, hosts: readonly HostReport[]): Network {
  return {
    id: r.id,
    name: r.name,
    kind: r.kind,
    cidr: r.cidr,
    gateway: r.gateway,
    ...networkConfig(r),
    is_default: r.is_default === 1,
    nic_count: nicCount,
    available_on: availableOn(interfaceNeed(r), hosts),
    created_at: r.created_at,
    updated_at: r.updated_at,
  };
}

function badField(field: string, message: string): NqvmError {
  return new NqvmError('VALIDATION_FAILED', `${field}: ${message}`, {
    fields: [{ path: `body.${field}`, message }],
  });
}

export class Networks {
  constructor(
    private readonly store: Datastore,
    private readonly bus: EventBus,
  ) {}

  async list(f: NetworkListFilter): Promise<{ items: Network[]; next: string | null }> {
    let q = this.store.db.selectFrom('networks').selectAll();
    if (f.kind) q = q.where('kind', '=', f.kind);
    if (f.name) q = q.where('name', '>=', f.name).where('name', '<', `${f.name}\uffff`);
    const page = await paginate(q, 'created_at', f);
    const counts = await this.nicCounts(page.items.map((r) => r.id));
    const hosts = await this.hostReports();
    return { items: page.items.map((r) => toNetwork(r, counts.get(r.id) ?? 0, hosts)), next: page.next };
  }

  async findRow(id: string): Promise<NetworkRow | undefined> {
    return this.store.db.selectFrom('networks').selectAll().where('id', '=', id).executeTakeFirst();
  }

  async getRow(id: string): Promise<NetworkRow> {
    const row = await this.findRow(id);
    if (!row) throw new NqvmError('NETWORK_NOT_FOUND', { id });
    return row;
  }

  async get(id: string): Promise<Network> {
    const row = await this.getRow(id);
    return toNetwork(row, (await this.nicCounts([id])).get(id) ?? 0, await this.hostReports());
  }

  /**
   * Records a network: 400 for a malformed or reserved prefix or a gateway outside it, 422 when
   * no host reports the bridge or uplink it names, 409 when its prefix overlaps another nqvm
   * network's or its bridge/uplink is another network's.
   */
  async create(input: NetworkCreate): Promise<Network> {
    let gateway: string | null = null;
    let subnet: Subnet | null = null;
    if (input.cidr !== undefined) {
      subnet = parseSubnet(input.cidr);
      if (!subnet) throw badField('cidr', 'an IPv4 prefix with its host bits zero, such as 10.213.0.0/24');
      if (subnet.prefix < 8 || subnet.prefix > 30) throw badField('cidr', 'the prefix length must be 8..30');
      const reserved = reservedRange(subnet);
      if (reserved)
        throw new NqvmError(
          'NETWORK_CIDR_RESERVED',
          `cidr: ${input.cidr} is inside ${reserved.cidr} (${reserved.use}), which no network may use`,
          {
            fields: [{ path: 'body.cidr', message: `inside ${reserved.cidr} (${reserved.use})` }],
            reserved: reserved.cidr,
          },
        );
      gateway = input.gateway ?? formatIpv4(firstHost(subnet));
      if (!isHostAddress(subnet, parseIpv4(gateway) ?? -1))
        throw badField('gateway', `the gateway must be a host address inside ${input.cidr}`);
    }
    const config: NetworkConfig = {
      dhcp: input.dhcp,
      bridge: input.bridge ?? null,
      uplink: input.uplink ?? null,
      dns_servers: input.dns_servers ?? [],
    };
    const id = randomUUID();
    const hosts = await this.hostReports();
    const need = interfaceNeed({ id, name: input.name, kind: input.kind, config: JSON.stringify(config) });
    if (need) assertReported(need, hosts);
    const at = nowIso();
    const row: NetworkRow = {
      id,
      name: input.name,
      kind: input.kind,
      cidr: input.cidr ?? null,
      gateway,
      config: JSON.stringify(config),
      is_default: input.is_default ? 1 : 0,
      created_at: at,
      updated_at: at,
    };
    try {
      await this.store.db.transaction().execute(async (trx) => {
        const others = await trx.selectFrom('networks').selectAll().execute();
        for (const o of others) {
          const theirs = o.cidr ? parseSubnet(o.cidr) : null;
          if (subnet && theirs && overlaps(subnet, theirs))
            throw new NqvmError('NETWORK_OVERLAP', `${input.cidr} overlaps network ${o.name} (${o.cidr})`, {
              network_id: o.id,
              cidr: o.cidr,
            });
          const oc = networkConfig(o);
          for (const dev of [config.bridge, config.uplink])
            if (dev !== null && (dev === oc.bridge || dev === oc.uplink))
              throw new NqvmError('CONFLICT', `interface ${dev} is network ${o.name}'s`, {
                network_id: o.id,
              });
        }
        if (input.is_default) await trx.updateTable('networks').set({ is_default: 0 }).execute();
        await trx.insertInto('networks').values(row).execute();
      });
    } catch (err) {
      throw nameTaken(err, input.name);
    }
    const network = toNetwork(row, 0, hosts);
    await this.bus.publish({
      type: 'network.created',
      resourceType: 'network',
      resourceId: row.id,
      data: network,
    });
    return network;
  }

  async patch(id: string, p: NetworkPatch): Promise<Network> {
    await this.getRow(id);
    try {
      await this.store.db.transaction().execute(async (trx) => {
        if (p.is_default) await trx.updateTable('networks').set({ is_default: 0 }).execute();
        await trx
          .updateTable('networks')
          .set({
            ...(p.name !== undefined ? { name: p.name } : {}),
            ...(p.is_default !== undefined ? { is_default: p.is_default ? 1 : 0 } : {}),
            updated_at: nowIso(),
          })
          .where('id', '=', id)
          .execute();
      });
    } catch (err) {
      throw nameTaken(err, p.name ?? '');
    }
    const network = await this.get(id);
    await this.bus.publish({
      type: 'network.updated',
      resourceType: 'network',
      resourceId: id,
      data: network,
    });
    return network;
  }

  /** Deletes a network no NIC uses (409 NETWORK_IN_USE otherwise). */
  async delete(id: string): Promise<void> {
    const network = await this.get(id);
    const deleted = await this.store.db
      .deleteFrom('networks')
      .where('id', '=', id)
      .where((eb) => eb.not(eb.exists(eb.selectFrom('vm_nics').select('vm_id').where('network_id', '=', id))))
      .executeTakeFirst();
    if (Number(deleted.numDeletedRows) === 0) {
      const users = await this.store.db
        .selectFrom('vm_nics')
        .select('vm_id')
        .where('network_id', '=', id)
        .execute();
      throw new NqvmError('NETWORK_IN_USE', `network ${network.name} has NICs of ${users.length} VM(s)`, {
        network_id: id,
        vm_ids: [...new Set(users.map((u) => u.vm_id))],
      });
    }
    await this.bus.publish({
      type: 'network.deleted',
      resourceType: 'network',
      resourceId: id,
      data: network,
    });
  }

  private async hostReports(): Promise<HostReport[]> {
    return this.store.db
      .selectFrom('hosts')
      .select(['id', 'name', 'capacity'])
      .orderBy('created_at')
      .execute();
  }

  private async nicCounts(ids: string[]): Promise<Map<string, number>> {
    if (!ids.length) return new Map();
    const rows = await this.store.db
      .selectFrom('vm_nics')
      .select(['network_id', (eb) => eb.fn.countAll<string | number>().as('n')])
      .where('network_id', 'in', ids)
      .groupBy('network_id')
      .execute();
    return new Map(rows.map((r) => [r.network_id, Number(r.n)]));
  }
}

/**
 * 422 NETWORK_INTERFACE_NOT_FOUND unless some host reports the interface `need` names, of a kind
 * it can be used as; the message says what the hosts have instead.
 */
function assertReported(need: InterfaceNeed, hosts: readonly HostReport[]): void {
  const having = hosts.flatMap((h) =>
    reportedInterfaces(h)
      .filter((i) => i.name === need.name)
      .map((i) => ({ host: h.name, iface: i })),
  );
  if (having.some((x) => serves(x.iface, need))) return;
  let why: string;
  if (hosts.length === 0) why = 'no host has joined yet; start the agent of the host that has it first';
  else if (having.length && need.role === 'bridge')
    why = `it is no bridge on ${having.map((x) => `${x.host} (${x.iface.kind})`).join(', ')}`;
  else if (having.length)
    why = `it is a bridge on ${having.map((x) => x.host).join(', ')}: join it as the network's bridge instead`;
  else {
    const seen = hosts.slice(0, 8).map((h) => {
      const names = reportedInterfaces(h).map((i) => i.name);
      return `${h.name}: ${names.slice(0, 12).join(', ') || 'none'}${names.length > 12 ? ', ...' : ''}`;
    });
    why = `the hosts report ${seen.join('; ')}`;
  }
  const message = `no host reports ${need.role === 'bridge' ? 'a bridge' : 'an interface'} ${need.name}`;
  throw new NqvmError('NETWORK_INTERFACE_NOT_FOUND', `${need.role}: ${message} (${why})`, {
    fields: [{ path: `body.${need.role}`, message }],
    interface: need.name,
  });
}

function nameTaken(err: unknown, name: string): unknown {
  if (isUniqueViolation(err))
    return new NqvmError('NAME_TAKEN', `a network named "${name}" exists`, { field: 'name' });
  return err;
}
