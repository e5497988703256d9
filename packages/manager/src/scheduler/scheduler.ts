/**
 * Placement: a VM goes to a ready, schedulable host that has the VMM it needs, the interfaces
 * its networks name (a bridged network's bridge or uplink) and enough free vCPU, memory and
 * disk; among those, the one with the most free memory. A VM pinned to a host
 * (a volume of it lives there, or it is a clone booting from a snapshot kept there) can go only
 * there; its volumes without a host get the VM's. The capacity (figures in `capacity.ts`) is
 * reserved by a conditional UPDATE in the same transaction that assigns the host, so two
 * managers (or two requests) can never overbook a host; it stays reserved while the VM is
 * stopped (its disk stays there) until the VM is deleted or released. A create asks `admit`
 * first, so what is known to fail at once is refused then, not after a 202.
 */
import { NqvmError } from '@nqvm/api';
import { type Kysely, sql } from 'kysely';
import { nowIso } from '../clock';
import type { Datastore } from '../db/datastore';
import type { Database, HostRow, VmRow } from '../db/schema';
import { type InterfaceNeed, needText, offers, vmInterfaceNeeds } from '../networks/availability';
import {
  type Demand,
  demandFigures,
  figuresText,
  hostResources,
  type ResourceName,
  resourcesText,
  shortOn,
  vcpuCapacity,
} from './capacity';

export type { Demand } from './capacity';

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

/** A host that takes VMs: ready, not cordoned, its credential valid. */
function usable(h: HostRow): boolean {
  return h.status === 'ready' && h.schedulable === 1 && h.credential_hash !== null;
}

/** What a VM needs of a host: room, a VMM, its networks' interfaces, and maybe one host only. */
interface Placement {
  demand: Demand;
  needs: InterfaceNeed[];
  pin: Pin | null;
}

/** The hosts that can take the VM now, the one with the most free memory first. */
function candidates(hosts: HostRow[], p: Placement, overcommit: number): HostRow[] {
  const freeMem = (h: HostRow) => hostResources(h, overcommit).mem_mib.free;
  return hosts
    .filter(
      (h) =>
        (!p.pin || h.id === p.pin.hostId) &&
        usable(h) &&
        hasVmm(h, p.demand.vmm) &&
        p.needs.every((n) => offers(h, n)) &&
        shortOn(hostResources(h, overcommit), p.demand).length === 0,
    )
    .sort((a, b) => freeMem(b) - freeMem(a));
}

/** Why the one host a VM may run on takes no VM now ("cordoned"), or null when it does. */
function unavailability(h: HostRow | undefined, vmm: Demand['vmm']): string | null {
  if (!h) return 'gone';
  if (h.credential_hash === null) return 'without a credential (revoked)';
  if (h.status !== 'ready') return h.status;
  if (h.schedulable !== 1) return 'cordoned';
  if (!hasVmm(h, vmm)) return vmm ? `without the ${vmm} VMM` : 'without a usable VMM';
  return null;
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

/** Why nothing fits, in words a user can act on; `short`: what no host that could run it has enough of. */
function explain(
  hosts: HostRow[],
  d: Demand,
  overcommit: number,
  needs: InterfaceNeed[],
): { message: string; short?: ResourceName[] } {
  const message = (m: string) => ({ message: m });
  if (hosts.length === 0) return message('no host has joined; start an agent (nqvm agent --join-token ...)');
  const ready = hosts.filter((h) => h.status === 'ready' && h.credential_hash !== null);
  if (ready.length === 0)
    return message(`no host is ready (${hosts.map((h) => `${h.name}: ${h.status}`).join(', ')})`);
  const open = ready.filter((h) => h.schedulable === 1);
  if (open.length === 0) return message('every ready host is cordoned');
  const withVmm = open.filter((h) => hasVmm(h, d.vmm));
  if (withVmm.length === 0)
    return message(d.vmm ? `no ready host offers the ${d.vmm} VMM` : 'no ready host has a usable VMM');
  const reaching = withVmm.filter((h) => needs.every((n) => offers(h, n)));
  if (reaching.length === 0) return message(explainInterfaces(withVmm, hosts, needs));
  const shortBy = reaching.map((h) => shortOn(hostResources(h, overcommit), d));
  const short = (['vcpu', 'mem_mib', 'disk_mib'] as const).filter((k) => shortBy.every((s) => s.includes(k)));
  const free = reaching
    .map((h) => {
      const r = hostResources(h, overcommit);
      return `${h.name}: ${r.vcpu.free} vCPU, ${r.mem_mib.free} MiB, ${r.disk_mib.free} MiB disk free`;
    })
    .join('; ');
  const why = short.length
    ? `too little ${resourcesText(short)} free on ${reaching.length === 1 ? 'the host' : 'every host'}`
    : 'no one host has all of it free';
  return { message: `no host has room for ${figuresText(demandFigures(d))}: ${why} (${free})`, short };
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
      const p = await this.placementOf(this.store.db, vm, hosts);
      const chosen = candidates(hosts, p, this.vcpuOvercommit)[0];
      if (!chosen) throw this.noRoom(hosts, p);
      const d = p.demand;
      let pinned: string[] = [];
      const placed = await this.store.db
        .transaction()
        .execute(async (trx) => {
          let reserve = trx
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
            // The capacity the choice saw: a heartbeat changing it makes this attempt retry.
            .where('cap_vcpu', '=', chosen.cap_vcpu);
          if (d.vcpu > 0)
            reserve = reserve.where(
              sql<boolean>`alloc_vcpu + ${d.vcpu} <= ${vcpuCapacity(chosen.cap_vcpu, this.vcpuOvercommit)}`,
            );
          if (d.memMib > 0) reserve = reserve.where(sql<boolean>`cap_mem_mib - alloc_mem_mib >= ${d.memMib}`);
          if (d.diskMib > 0)
            reserve = reserve.where(sql<boolean>`cap_disk_mib - alloc_disk_mib >= ${d.diskMib}`);
          const reserved = await reserve.executeTakeFirst();
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
    throw new NqvmError('NO_CAPACITY', 'hosts changed while placing the VM; retry');
  }

  /**
   * Refuses at admission a VM the reconciler would fail at once: some host takes VMs, but none
   * the VM may run on can take this one now. With no usable host at all the VM is left to wait
   * for one, as the reconciler does. It reserves nothing (a VM admitted may still lose a race to
   * another), and reads through `db` only: the caller's transaction, holding the new VM's rows.
   *
   * @example
   * await scheduler.admit(trx, vmId); // 409 NO_CAPACITY "... too little memory free on every host ..."
   */
  async admit(db: Kysely<Database>, vmId: string): Promise<void> {
    const hosts = await db.selectFrom('hosts').selectAll().execute();
    if (!hosts.some(usable)) return;
    const vm = await db.selectFrom('vms').selectAll().where('id', '=', vmId).executeTakeFirstOrThrow();
    const p = await this.placementOf(db, vm, hosts);
    if (candidates(hosts, p, this.vcpuOvercommit).length) return;
    const pinned = p.pin && pinnedUnavailable(p.pin, hosts, p.demand.vmm);
    if (pinned)
      throw new NqvmError('PINNED_HOST_UNAVAILABLE', pinned.message, {
        ...p.pin!.details,
        host_id: p.pin!.hostId,
        host_name: p.pin!.hostName,
        host_state: pinned.state,
      });
    throw this.noRoom(hosts, p);
  }

  /**
   * Moves a placed VM's reservation to a new size, in the caller's transaction: a stopped VM
   * keeps its place, so a larger size must fit on its host (NO_CAPACITY otherwise).
   */
  async resize(db: Kysely<Database>, vm: VmRow, to: { vcpu: number; memMib: number }): Promise<void> {
    if (!vm.host_id) return;
    const host = await db.selectFrom('hosts').selectAll().where('id', '=', vm.host_id).executeTakeFirst();
    if (!host) return;
    const dv = to.vcpu - vm.vcpu;
    const dm = to.memMib - Number(vm.mem_mib);
    if (dv === 0 && dm === 0) return;
    let q = db
      .updateTable('hosts')
      .set({ alloc_vcpu: sql`alloc_vcpu + ${dv}`, alloc_mem_mib: sql`alloc_mem_mib + ${dm}` })
      .where('id', '=', host.id);
    if (dv > 0)
      q = q
        .where('cap_vcpu', '=', host.cap_vcpu)
        .where(sql<boolean>`alloc_vcpu + ${dv} <= ${vcpuCapacity(host.cap_vcpu, this.vcpuOvercommit)}`);
    if (dm > 0) q = q.where(sql<boolean>`alloc_mem_mib + ${dm} <= cap_mem_mib`);
    const done = await q.executeTakeFirst();
    if (Number(done.numUpdatedRows) === 1) return;
    const r = hostResources(host, this.vcpuOvercommit);
    const short = shortOn(r, { vcpu: dv, memMib: dm, diskMib: 0, vmm: null });
    throw new NqvmError(
      'NO_CAPACITY',
      `a stopped VM keeps its place on its host: host ${host.name} has ${r.vcpu.free} vCPU and ` +
        `${r.mem_mib.free} MiB memory free, too little ${resourcesText(short)} for the new size`,
      { host_id: host.id, vcpu: to.vcpu, mem_mib: to.memMib, short },
    );
  }

  private async placementOf(db: Kysely<Database>, vm: VmRow, hosts: HostRow[]): Promise<Placement> {
    return {
      demand: demandOf(vm),
      needs: await vmInterfaceNeeds(db, vm.id),
      pin: await this.pinnedHost(db, vm, hosts),
    };
  }

  /** NO_CAPACITY for a VM no host can take now, saying why and what is short. */
  private noRoom(hosts: HostRow[], p: Placement): NqvmError {
    const { demand: d, needs, pin } = p;
    const pinned = pin && pinnedUnavailable(pin, hosts, d.vmm);
    const why = pinned
      ? { message: pinned.message }
      : explain(pin ? hosts.filter((h) => h.id === pin.hostId) : hosts, d, this.vcpuOvercommit, needs);
    return new NqvmError(
      'NO_CAPACITY',
      pin && !pinned
        ? `${pin.reason} on host ${pin.hostName}, so the VM runs only there: ${why.message}`
        : why.message,
      {
        vcpu: d.vcpu,
        mem_mib: d.memMib,
        disk_mib: d.diskMib,
        ...(why.short?.length ? { short: why.short } : {}),
        ...(pin ? { ...pin.details, host_id: pin.hostId } : {}),
      },
    );
  }

  /**
   * The one host the VM may run on, or null when any will do: the host its volumes live on, and
   * for a clone the host keeping its snapshot's files. Pins to two hosts (volumes on two hosts
   * are only possible by editing the datastore: attach refuses it) can never be placed.
   */
  private async pinnedHost(db: Kysely<Database>, vm: VmRow, hosts: HostRow[]): Promise<Pin | null> {
    const hostName = (id: string) => hosts.find((h) => h.id === id)?.name ?? id;
    const pins: Pin[] = [];
    const volumes = await db
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
      ? await db
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
      throw new NqvmError(
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

/** "the VM boots from snapshot s1, whose files are on host hv1, which is cordoned: ..." when the pinned host takes no VM now. */
function pinnedUnavailable(
  pin: Pin,
  hosts: HostRow[],
  vmm: Demand['vmm'],
): { state: string; message: string } | null {
  const state = unavailability(
    hosts.find((h) => h.id === pin.hostId),
    vmm,
  );
  if (!state) return null;
  const fix = state === 'cordoned' ? `; uncordon it (nqvm host uncordon ${pin.hostName})` : '';
  return {
    state,
    message: `${pin.reason} on host ${pin.hostName}, which is ${state}: the VM can run only there${fix}`,
  };
}

class RaceLost extends Error {}
