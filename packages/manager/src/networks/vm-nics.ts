/**
 * A VM's NICs: made at VM create inside its transaction, one per requested network, each with
 * a deterministic MAC and (nat, isolated) the lowest free address of its network, or the one
 * asked for. Bridged NICs get their address from the LAN; the agent reports it. The rows go
 * with the VM, which frees the addresses.
 */
import { NqvmError, nicMac, type Vm } from '@nqvm/api';
import type { Kysely, Transaction } from 'kysely';
import type { Database, NetworkRow, VmNicRow } from '../db/schema';
import { isHostAddress, lowestFree, parseIpv4, parseSubnet } from './ipam';

export type VmNic = Vm['networks'][number];

/** A unique violation of the per-network address index: another create took the address first. */
export function isAddressClash(err: unknown): boolean {
  const e = err as { constraint?: string; message?: string };
  return e?.constraint === 'vm_nics_address' || /vm_nics/.test(String(e?.message));
}

/** Allocates the NICs of a new VM; 400 for an unknown network, 409 for an address not to be had. */
export async function createNics(
  trx: Transaction<Database>,
  vmId: string,
  requested: Array<{ network_id: string; ip?: string }>,
): Promise<void> {
  for (const [index, want] of requested.entries()) {
    const network = await trx
      .selectFrom('networks')
      .selectAll()
      .where('id', '=', want.network_id)
      .executeTakeFirst();
    if (!network)
      throw new NqvmError(
        'VALIDATION_FAILED',
        `networks.${index}.network_id: no network ${want.network_id}`,
        {
          fields: [{ path: `body.networks.${index}.network_id`, message: 'unknown network' }],
        },
      );
    const row: VmNicRow = {
      vm_id: vmId,
      nic_index: index,
      network_id: network.id,
      mac: nicMac(vmId, index),
      ip: null,
      ip_source: network.kind === 'bridged' ? 'agent' : 'ipam',
    };
    if (network.kind === 'bridged') {
      if (want.ip !== undefined)
        throw new NqvmError(
          'VALIDATION_FAILED',
          `networks.${index}.ip: bridged network ${network.name} gets addresses from its LAN`,
          {
            fields: [{ path: `body.networks.${index}.ip`, message: 'not on a bridged network' }],
          },
        );
    } else {
      row.ip = await pickAddress(trx, network, want.ip);
    }
    await trx.insertInto('vm_nics').values(row).execute();
  }
}

async function pickAddress(
  trx: Transaction<Database>,
  network: NetworkRow,
  wanted?: string,
): Promise<string> {
  const subnet = parseSubnet(network.cidr ?? '');
  if (!subnet)
    throw new NqvmError('CONFLICT', `network ${network.name} has no prefix to take addresses from`);
  const taken = (
    await trx
      .selectFrom('vm_nics')
      .select('ip')
      .where('network_id', '=', network.id)
      .where('ip_source', '=', 'ipam')
      .execute()
  ).map((r) => r.ip!);
  if (network.gateway) taken.push(network.gateway);
  if (wanted === undefined) {
    const free = lowestFree(subnet, taken);
    if (free === null)
      throw new NqvmError(
        'ADDRESS_POOL_EXHAUSTED',
        `network ${network.name} (${network.cidr}) has no free address left`,
        { network_id: network.id, cidr: network.cidr },
      );
    return free;
  }
  if (!isHostAddress(subnet, parseIpv4(wanted) ?? -1))
    throw new NqvmError('CONFLICT', `${wanted} is not a host address of ${network.name} (${network.cidr})`, {
      network_id: network.id,
      ip: wanted,
    });
  if (taken.includes(wanted))
    throw new NqvmError('ADDRESS_IN_USE', `${wanted} is taken on network ${network.name}`, {
      network_id: network.id,
      ip: wanted,
    });
  return wanted;
}

/** The NICs each of `vmIds` shows, by NIC index. */
export async function nicsOfVms(db: Kysely<Database>, vmIds: string[]): Promise<Map<string, VmNic[]>> {
  const out = new Map<string, VmNic[]>(vmIds.map((id) => [id, []]));
  if (!vmIds.length) return out;
  const rows = await db
    .selectFrom('vm_nics')
    .selectAll()
    .where('vm_id', 'in', vmIds)
    .orderBy('vm_id')
    .orderBy('nic_index')
    .execute();
  for (const r of rows) out.get(r.vm_id)?.push({ network_id: r.network_id, ip: r.ip, mac: r.mac });
  return out;
}

/**
 * Records the addresses an agent found for NICs the manager gave none (bridged); answers
 * whether anything changed.
 */
export async function recordFoundAddresses(
  db: Kysely<Database>,
  vmId: string,
  found: Array<{ nic_index: number; ip: string | null }>,
): Promise<boolean> {
  let changed = false;
  for (const f of found) {
    const r = await db
      .updateTable('vm_nics')
      .set({ ip: f.ip })
      .where('vm_id', '=', vmId)
      .where('nic_index', '=', f.nic_index)
      .where('ip_source', '=', 'agent')
      .where((eb) =>
        f.ip === null ? eb('ip', 'is not', null) : eb.or([eb('ip', 'is', null), eb('ip', '!=', f.ip)]),
      )
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) > 0) changed = true;
  }
  return changed;
}
