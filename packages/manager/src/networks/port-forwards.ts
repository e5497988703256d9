/**
 * Port forwards: a host port opened on the VM's host, forwarded to a port of one of its NICs.
 * A (proto, port) is forwarded at most once per host; while a VM is not placed, its forwards
 * clash with every other forward of that port, since it may land on any host. A port a program
 * on the host listens on is refused too (asked of the host's agent when the forward is made). Adding or
 * removing one changes what the VM's host must do, so it bumps the VM's generation.
 */
import { randomUUID } from 'node:crypto';
import { NqvmError, type PortForward, type PortForwardCreate } from '@nqvm/api';
import type { Kysely } from 'kysely';
import { nowIso } from '../clock';
import type { Datastore } from '../db/datastore';
import type { Database, PortForwardRow } from '../db/schema';
import type { AgentClient } from '../hosts/agent-client';
import type { Vms } from '../vms/vms';

export function toPortForward(r: PortForwardRow, hostId: string | null): PortForward {
  return {
    id: r.id,
    vm_id: r.vm_id,
    nic_index: r.nic_index,
    proto: r.proto,
    host_port: r.host_port,
    guest_port: r.guest_port,
    host_id: hostId,
    created_at: r.created_at,
  };
}

/**
 * 409 PORT_IN_USE when a forward of (proto, port) would clash with one that exists: any of the
 * port while `hostId` is null (the VM may land anywhere), else one on that host or unplaced.
 */
export async function checkPortFree(
  db: Kysely<Database>,
  proto: 'tcp' | 'udp',
  port: number,
  hostId: string | null,
): Promise<void> {
  const clash = await db
    .selectFrom('port_forwards')
    .innerJoin('vms', 'vms.id', 'port_forwards.vm_id')
    .select(['port_forwards.id', 'port_forwards.vm_id', 'vms.host_id'])
    .where('port_forwards.proto', '=', proto)
    .where('port_forwards.host_port', '=', port)
    .where((eb) =>
      hostId === null ? eb.lit(true) : eb.or([eb('vms.host_id', 'is', null), eb('vms.host_id', '=', hostId)]),
    )
    .executeTakeFirst();
  if (clash)
    throw new NqvmError('PORT_IN_USE', `${proto} port ${port} is already forwarded`, {
      port_forward_id: clash.id,
      vm_id: clash.vm_id,
    });
}

export class PortForwards {
  constructor(
    private readonly store: Datastore,
    private readonly vms: Vms,
    private readonly agents: Pick<AgentClient, 'listensOn'>,
  ) {}

  /**
   * 409 PORT_IN_USE when a program on the host already listens on the port: the VM's host, or,
   * for a VM not placed yet, every ready host it could land on. Hosts that do not answer are
   * not held against the forward (their agent refuses it when it applies it, and says why).
   */
  async checkHostsFree(proto: 'tcp' | 'udp', port: number, hostId: string | null): Promise<void> {
    let q = this.store.db.selectFrom('hosts').select(['id', 'name', 'address']).where('status', '=', 'ready');
    q = hostId === null ? q.where('schedulable', '=', 1) : q.where('id', '=', hostId);
    const hosts = await q.execute();
    const answers = await Promise.all(
      hosts.map((h) => this.agents.listensOn(h.address, proto, port).catch(() => false)),
    );
    const taken = hosts.filter((_, i) => answers[i]);
    if (taken.length === 0 || taken.length < hosts.length) return;
    const where =
      taken.length === 1
        ? `host ${taken[0]!.name}`
        : `every ready host (${taken.map((h) => h.name).join(', ')})`;
    throw new NqvmError(
      'PORT_IN_USE',
      `${proto} port ${port} is taken on ${where}: a program there listens on it; pick another host port`,
      { host_ids: taken.map((h) => h.id) },
    );
  }

  async list(vmId: string): Promise<PortForward[]> {
    const vm = await this.vms.getRow(vmId);
    const rows = await this.store.db
      .selectFrom('port_forwards')
      .selectAll()
      .where('vm_id', '=', vmId)
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    return rows.map((r) => toPortForward(r, vm.host_id));
  }

  /** 400 for a NIC the VM lacks; 409 PORT_IN_USE when another forward holds the port on its host. */
  async create(vmId: string, input: PortForwardCreate): Promise<PortForward> {
    const row: PortForwardRow = {
      id: randomUUID(),
      vm_id: vmId,
      nic_index: input.nic_index,
      proto: input.proto,
      host_port: input.host_port,
      guest_port: input.guest_port,
      created_at: nowIso(),
    };
    // Asked outside the transaction (an agent's answer takes a round trip).
    await this.checkHostsFree(input.proto, input.host_port, (await this.vms.getRow(vmId)).host_id);
    const hostId = await this.store.db.transaction().execute(async (trx) => {
      const vm = await trx.selectFrom('vms').selectAll().where('id', '=', vmId).executeTakeFirst();
      if (!vm) throw new NqvmError('VM_NOT_FOUND', { id: vmId });
      if (vm.state === 'deleting')
        throw new NqvmError('VM_INVALID_STATE', 'the VM is being deleted', { state: vm.state });
      const nic = await trx
        .selectFrom('vm_nics')
        .select('nic_index')
        .where('vm_id', '=', vmId)
        .where('nic_index', '=', input.nic_index)
        .executeTakeFirst();
      if (!nic)
        throw new NqvmError('VALIDATION_FAILED', `nic_index: the VM has no NIC ${input.nic_index}`, {
          fields: [{ path: 'body.nic_index', message: 'no such NIC' }],
        });
      await checkPortFree(trx, input.proto, input.host_port, vm.host_id);
      await trx.insertInto('port_forwards').values(row).execute();
      await trx
        .updateTable('vms')
        .set({ generation: vm.generation + 1, commanded_at: null, updated_at: nowIso() })
        .where('id', '=', vmId)
        .execute();
      return vm.host_id;
    });
    await this.vms.publishUpdated(vmId);
    return toPortForward(row, hostId);
  }

  async delete(vmId: string, id: string): Promise<void> {
    await this.store.db.transaction().execute(async (trx) => {
      const gone = await trx
        .deleteFrom('port_forwards')
        .where('id', '=', id)
        .where('vm_id', '=', vmId)
        .executeTakeFirst();
      if (Number(gone.numDeletedRows) === 0) throw new NqvmError('PORT_FORWARD_NOT_FOUND', { id });
      const vm = await trx
        .selectFrom('vms')
        .select('generation')
        .where('id', '=', vmId)
        .executeTakeFirstOrThrow();
      await trx
        .updateTable('vms')
        .set({ generation: vm.generation + 1, commanded_at: null, updated_at: nowIso() })
        .where('id', '=', vmId)
        .execute();
    });
    await this.vms.publishUpdated(vmId);
  }
}
