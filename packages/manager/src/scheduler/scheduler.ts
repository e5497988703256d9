/**
 * Placement: a VM goes to a ready, schedulable host that has the VMM it needs, the interfaces
 * its networks name (a bridged network's bridge or uplink) and enough free vCPU, memory and
 * disk; among those, the one with the most free memory. A VM pinned to a host
 * (a volume of it lives there, or it is a clone booting from a snapshot kept there) can go only
 * there; its volumes without a host get the VM's. The capacity is
 * reserved by a conditional UPDATE in the same transaction that assigns the host, so two
 * managers (or two requests) can never overbook a host.
 */
import { ServiceUnavailableError } from '@nqvm/api';
import { sql } from 'kysely';
import { nowIso } from '../clock';
import type { Datastore } from '../db/datastore';
import type { HostRow, VmRow } from '../db/schema';
import { type InterfaceNeed, needText, offers, vmInterfaceNeeds } from '../networks/availability';

export interface Demand {
  vcpu: number;
  memMib: number;
  diskMib: number;
  vmm: 'firecracker' | 'qemu' | null;
}

interface DriverReport {
  kind: string;
  available: boolean;
}

export function demandOf(vm: Pick<VmRow, 'vcpu' | 'mem_mib' | 'disk_mib' | 'vmm'>): Demand {
  return {
    vcpu: vm.vcpu,
    memMib: Number(vm.mem_mib),
    diskMib: Number(vm.disk_mib),
    vmm: (vm.vmm as Demand['vmm']) ?? null,
  };
}

export function hasVmm(h: HostRow, vmm: Demand['vmm']): boolean {
  const drivers = (JSON.parse(h.capacity).drivers ?? []) as DriverReport[];
  return drivers.some((d) => d.available && (vmm === null || d.kind === vmm));
}

function fits(h: HostRow, d: Demand, overcommit: number): boolean {
  return (
    Math.floor(h.cap_vcpu * overcommit) - h.alloc_vcpu >= d.vcpu &&
    Number(h.cap_mem_mib) - Number(h.alloc_mem_mib) >= d.memMib &&
    Number(h.cap_disk_mib) - Number(h.alloc_disk_mib) >= d.diskMib
  );
}

/** Why no host of `usable` has the interfaces the VM's networks need ("no ready host has uplink eth1 for network lan"). */
function explainInterfaces(usable: HostRow[], hosts: HostRow[], needs: InterfaceNeed[]): string {
  const missing = needs.find((n) => !usable.some((h) => offers(h, n)));
  if (!missing) return `no ready host has all of ${needs.map(needText).join(', ')}`;
  const elsewhere = hosts.filter((h) => offers(h, missing)).map((h) => `${h.name}: ${usabilityOf(h)}`);
  return `no ready host has ${needText(missing)}${elsewhere.length ? ` (only ${elsewhere.join(', ')})` : ''}`;
}

function usabilityOf(h: HostRow): string {
  if (h.status !== 'ready' || h.credential_hash === null) return h.status;
  return h.schedulable === 1 ? 'no usable VMM' : 'cordoned';
}

/** Why nothing fits, in words a user can act on. */
function explain(hosts: HostRow[], d: Demand, overcommit: number, needs: InterfaceNeed[]): string {
  if (hosts.length === 0) return 'no host has joined; start an agent (nqvm agent --join-token ...)';
  const ready = hosts.filter((h) => h.status === 'ready' && h.credential_hash !== null);
  if (ready.length === 0)
    return `no host is ready (${hosts.map((h) => `${h.name}: ${h.status}`).join(', ')})`;
  const open = ready.filter((h) => h.schedulable === 1);
  if (open.length === 0) return 'every ready host is cordoned';
  const withVmm = open.filter((h) => hasVmm(h, d.vmm));
  if (withVmm.length === 0)
    return d.vmm ? `no ready host offers the ${d.vmm} VMM` : 'no ready host has a usable VMM';
  const reaching = withVmm.filter((h) => needs.every((n) => offers(h, n)));
  if (reaching.length === 0) return explainInterfaces(withVmm, hosts, needs);
  const free = reaching
    .map(
      (h) =>
        `${h.name}: ${Math.floor(h.cap_vcpu * overcommit) - h.alloc_vcpu} vCPU, ${Number(h.cap_mem_mib) - Number(h.alloc_mem_mib)} MiB, ${Number(h.cap_disk_mib) - Number(h.alloc_disk_mib)} MiB disk free`,
    )
    .join('; ');
  return `no host has room for ${d.vcpu} vCPU, ${d.memMib} MiB memory, ${d.diskMib} MiB disk (${free})`;
}

export interface SchedulerOptions {
  /** Told the volumes a placement gave a host, after it committed (to publish them). */
  onVolumesPinned?: (volumeIds: string[]) => Promise<void>;
}

export class Scheduler {
  constructor(
    private readonly store: Datastore,
    /** vCPUs placed per host core (memory and disk are never overcommitted). */
    private readonly vcpuOvercommit = 1,
    private readonly opts: SchedulerOptions = {},
  ) {}

  /**
   * Assigns a host to an unplaced VM and reserves its capacity; answers the host, or throws
   * NO_CAPACITY with the reason. A VM that already has a host keeps it.
   */
  async place(vmId: string): Promise<HostRow> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const hosts = await this.store.db.selectFrom('hosts').selectAll().execute();
      const vm = await this.store.db
        .selectFrom('vms')
        .selectAll()
        .where('id', '=', vmId)
        .executeTakeFirstOrThrow();
      if (vm.host_id) {
        const own = hosts.find((h) => h.id === vm.host_id);
        if (own) return own;
      }
      const d = demandOf(vm);
      const needs = await vmInterfaceNeeds(this.store.db, vmId);
      const pin = await this.pinnedHost(vm, hosts);
      const eligible = pin ? hosts.filter((h) => h.id === pin.hostId) : hosts;
      const candidates = eligible
        .filter(
          (h) =>
            h.status === 'ready' &&
            h.schedulable === 1 &&
            h.credential_hash !== null &&
            hasVmm(h, d.vmm) &&
            needs.every((n) => offers(h, n)) &&
            fits(h, d, this.vcpuOvercommit),
        )
        .sort(
          (a, b) =>
            Number(b.cap_mem_mib) -
            Number(b.alloc_mem_mib) -
            (Number(a.cap_mem_mib) - Number(a.alloc_mem_mib)),
        );
      const chosen = candidates[0];
      if (!chosen) {
        const why = explain(eligible, d, this.vcpuOvercommit, needs);
        throw new ServiceUnavailableError(
          'NO_CAPACITY',
          pin ? `${pin.reason} on host ${pin.hostName}, so the VM runs only there: ${why}` : why,
          {
            vcpu: d.vcpu,
            mem_mib: d.memMib,
            disk_mib: d.diskMib,
            ...(pin ? { ...pin.details, host_id: pin.hostId } : {}),
          },
        );
      }
      let pinned: string[] = [];
      const placed = await this.store.db
        .transaction()
        .execute(async (trx) => {
          const reserved = await trx
            .updateTable('hosts')
            .set({
              alloc_vcpu: sql`alloc_vcpu + ${d.vcpu}`,
              alloc_mem_mib: sql`alloc_mem_mib + ${d.memMib}`,
              alloc_disk_mib: sql`alloc_disk_mib + ${d.diskMib}`,
              updated_at: nowIso(),
            })
            .where('id', '=', chosen.id)
            .where('status', '=', 'ready')
            .where('schedulable', '=', 1)
            .where(sql<boolean>`cap_vcpu * ${this.vcpuOvercommit} - alloc_vcpu >= ${d.vcpu}`)
            .where(sql<boolean>`cap_mem_mib - alloc_mem_mib >= ${d.memMib}`)
            .where(sql<boolean>`cap_disk_mib - alloc_disk_mib >= ${d.diskMib}`)
            .executeTakeFirst();
          if (Number(reserved.numUpdatedRows) !== 1) return false;
          const assigned = await trx
            .updateTable('vms')
            .set({ host_id: chosen.id, updated_at: nowIso() })
            .where('id', '=', vmId)
            .where('host_id', 'is', null)
            .executeTakeFirst();
          if (Number(assigned.numUpdatedRows) !== 1) throw new RaceLost();
          pinned = (
            await trx
              .selectFrom('volumes')
              .select('id')
              .where('vm_id', '=', vmId)
              .where('host_id', 'is', null)
              .execute()
          ).map((v) => v.id);
          if (pinned.length)
            await trx
              .updateTable('volumes')
              .set({ host_id: chosen.id, updated_at: nowIso() })
              .where('id', 'in', pinned)
              .execute();
          const elsewhere = await trx
            .selectFrom('volumes')
            .select('id')
            .where('vm_id', '=', vmId)
            .where('host_id', '!=', chosen.id)
            .executeTakeFirst();
          if (elsewhere) throw new RaceLost();
          return true;
        })
        .catch((err) => {
          if (err instanceof RaceLost) return false;
          throw err;
        });
      if (placed) {
        if (pinned.length) await this.opts.onVolumesPinned?.(pinned);
        return chosen;
      }
    }
    throw new ServiceUnavailableError('NO_CAPACITY', 'hosts changed while placing the VM; retry');
  }

  /**
   * The one host the VM may run on, or null when any will do: the host its volumes live on, and
   * for a clone the host keeping its snapshot's files. Pins to two hosts (volumes on two hosts
   * are only possible by editing the datastore: attach refuses it) can never be placed.
   */
  private async pinnedHost(vm: VmRow, hosts: HostRow[]): Promise<Pin | null> {
    const hostName = (id: string) => hosts.find((h) => h.id === id)?.name ?? id;
    const pins: Pin[] = [];
    const volumes = await this.store.db
      .selectFrom('volumes')
      .select(['id', 'name', 'host_id'])
      .where('vm_id', '=', vm.id)
      .where('host_id', 'is not', null)
      .orderBy('created_at')
      .execute();
    for (const v of volumes)
      pins.push({
        hostId: v.host_id!,
        hostName: hostName(v.host_id!),
        reason: `volume ${v.name} lives`,
        details: { volume_id: v.id },
      });
    const { source_snapshot_id: snapshotId } = JSON.parse(vm.spec) as { source_snapshot_id?: string };
    const snapshot = snapshotId
      ? await this.store.db
          .selectFrom('snapshots')
          .select(['id', 'name', 'host_id'])
          .where('id', '=', snapshotId)
          .executeTakeFirst()
      : undefined;
    if (snapshot?.host_id)
      pins.push({
        hostId: snapshot.host_id,
        hostName: hostName(snapshot.host_id),
        reason: `the VM boots from snapshot ${snapshot.name}, whose files are`,
        details: { snapshot_id: snapshot.id },
      });
    const first = pins[0];
    if (!first) return null;
    if (pins.some((p) => p.hostId !== first.hostId))
      throw new ServiceUnavailableError(
        'NO_CAPACITY',
        `the VM is tied to different hosts (${pins.map((p) => `${p.reason} on host ${p.hostName}`).join('; ')}); detach the volumes not on one host`,
        { host_ids: [...new Set(pins.map((p) => p.hostId))] },
      );
    return first;
  }

  /** Returns a VM's reservation to its host (on delete or release); call once per placement. */
  async release(vm: Pick<VmRow, 'id' | 'host_id' | 'vcpu' | 'mem_mib' | 'disk_mib' | 'vmm'>): Promise<void> {
    const hostId = vm.host_id;
    if (!hostId) return;
    const d = demandOf(vm);
    const minus = (col: string, n: number) =>
      sql<number>`case when ${sql.ref(col)} > ${n} then ${sql.ref(col)} - ${n} else 0 end`;
    await this.store.db.transaction().execute(async (trx) => {
      await trx.updateTable('vms').set({ host_id: null }).where('id', '=', vm.id).execute();
      await trx
        .updateTable('hosts')
        .set({
          alloc_vcpu: minus('alloc_vcpu', d.vcpu),
          alloc_mem_mib: minus('alloc_mem_mib', d.memMib),
          alloc_disk_mib: minus('alloc_disk_mib', d.diskMib),
        })
        .where('id', '=', hostId)
        .execute();
    });
  }
}

/** Why a VM can run only on one host, in words for the NO_CAPACITY message. */
interface Pin {
  hostId: string;
  hostName: string;
  /** Completed by " on host X": e.g. "volume data lives". */
  reason: string;
  details: Record<string, unknown>;
}

class RaceLost extends Error {}
