/**
 * Hosts: join tokens, agent registration with a per-host credential, heartbeats, and the
 * health sweep (ready -> unreachable -> lost). A host that stops heartbeating is never
 * evacuated: its VMs show `unknown` until it returns.
 */
import { randomUUID } from 'node:crypto';
import type { AgentHeartbeat, AgentRegister, HostCapacity } from '@nqvm/api';
import { type Host, NqvmError } from '@nqvm/api';
import type { z } from 'zod';
import { hashSecret, newSecret } from '../auth/secrets';
import { isoAfter, nowIso } from '../clock';
import { type Datastore, isUniqueViolation } from '../db/datastore';
import { paginate } from '../db/pagination';
import type { HostRow, JoinTokenRow } from '../db/schema';
import type { EventBus } from '../events/bus';
import { hostResources } from '../scheduler/capacity';

/** The host as the API shows it; `vcpuOvercommit` is the scheduler's, so its figures are the scheduler's. */
export function toHost(r: HostRow, vcpuOvercommit: number): Host {
  return {
    id: r.id,
    name: r.name,
    address: r.address,
    status: r.status,
    schedulable: r.schedulable === 1,
    credential_revoked: r.credential_hash === null,
    labels: JSON.parse(r.labels),
    capacity: JSON.parse(r.capacity),
    allocated: { vcpu: r.alloc_vcpu, mem_mib: Number(r.alloc_mem_mib), disk_mib: Number(r.alloc_disk_mib) },
    resources: hostResources(r, vcpuOvercommit),
    agent_version: r.agent_version,
    last_heartbeat_at: r.last_heartbeat_at,
    created_at: r.created_at,
    updated_at: r.updated_at,
  };
}

export function toJoinToken(r: JoinTokenRow) {
  return {
    id: r.id,
    description: r.description,
    created_at: r.created_at,
    expires_at: r.expires_at,
    revoked_at: r.revoked_at,
    last_used_at: r.last_used_at,
  };
}

/** Missed heartbeats before a host is unreachable, and before it is lost. */
export const UNREACHABLE_AFTER = 3;
export const LOST_AFTER = 12;

export class Hosts {
  constructor(
    private readonly store: Datastore,
    private readonly bus: EventBus,
    readonly heartbeatIntervalS: number,
    /** sha256 fingerprint of the manager's TLS certificate, carried in join tokens. */
    private readonly tlsFingerprint: string | null,
    /** The scheduler's vCPUs per core, for the capacity figures hosts show. */
    private readonly vcpuOvercommit: number,
  ) {}

  // ---- join tokens ------------------------------------------------------------------

  async createJoinToken(input: { ttl_s: number; description?: string }, createdBy: string | null) {
    const secret = newSecret('nqvm_join');
    const row: JoinTokenRow = {
      id: randomUUID(),
      token_hash: hashSecret(secret),
      description: input.description ?? null,
      created_by: createdBy,
      created_at: nowIso(),
      expires_at: isoAfter(input.ttl_s * 1000),
      revoked_at: null,
      last_used_at: null,
    };
    await this.store.db.insertInto('join_tokens').values(row).execute();
    // Like kubeadm's discovery hash: the agent pins the certificate named in the token.
    const token = this.tlsFingerprint ? `${secret}~sha256:${this.tlsFingerprint}` : secret;
    return { ...toJoinToken(row), token };
  }

  async listJoinTokens(q: { limit: number; cursor?: string }) {
    const page = await paginate(this.store.db.selectFrom('join_tokens').selectAll(), 'created_at', q);
    return { items: page.items.map(toJoinToken), next: page.next };
  }

  async revokeJoinToken(id: string) {
    const row = await this.store.db
      .selectFrom('join_tokens')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirst();
    if (!row) throw new NqvmError('NOT_FOUND', `join token ${id} not found`, { id });
    await this.store.db
      .updateTable('join_tokens')
      .set({ revoked_at: row.revoked_at ?? nowIso() })
      .where('id', '=', id)
      .execute();
    return toJoinToken({ ...row, revoked_at: row.revoked_at ?? nowIso() });
  }

  async resolveJoinToken(secret: string): Promise<string | null> {
    const row = await this.store.db
      .selectFrom('join_tokens')
      .select(['id', 'expires_at', 'revoked_at'])
      .where('token_hash', '=', hashSecret(secret.split('~')[0]!))
      .executeTakeFirst();
    if (!row || row.revoked_at || row.expires_at <= nowIso()) return null;
    return row.id;
  }

  // ---- agents -------------------------------------------------------------------------

  async register(input: z.infer<typeof AgentRegister>, joinTokenId: string) {
    const credential = newSecret('nqvm_host');
    const at = nowIso();
    const existing = await this.store.db
      .selectFrom('hosts')
      .selectAll()
      .where('name', '=', input.name)
      .executeTakeFirst();
    if (existing && existing.credential_hash !== null && existing.status === 'ready') {
      throw new NqvmError('NAME_TAKEN', `a live host named "${input.name}" is registered; remove it first`, {
        field: 'name',
      });
    }
    const cap = capacityColumns(input.capacity);
    const id = existing?.id ?? randomUUID();
    try {
      if (existing) {
        // Re-registration of a known host (e.g. after its credential was revoked) keeps its id and VMs.
        await this.store.db
          .updateTable('hosts')
          .set({
            address: input.address,
            credential_hash: hashSecret(credential),
            status: 'ready',
            ...cap,
            agent_version: input.agent_version,
            last_heartbeat_at: at,
            updated_at: at,
          })
          .where('id', '=', id)
          .execute();
      } else {
        await this.store.db
          .insertInto('hosts')
          .values({
            id,
            name: input.name,
            address: input.address,
            credential_hash: hashSecret(credential),
            status: 'ready',
            schedulable: 1,
            labels: JSON.stringify(input.labels),
            ...cap,
            alloc_vcpu: 0,
            alloc_mem_mib: 0,
            alloc_disk_mib: 0,
            agent_version: input.agent_version,
            last_heartbeat_at: at,
            created_at: at,
            updated_at: at,
          })
          .execute();
      }
    } catch (err) {
      if (isUniqueViolation(err))
        throw new NqvmError('NAME_TAKEN', `a host named "${input.name}" exists`, { field: 'name' });
      throw err;
    }
    await this.store.db
      .updateTable('join_tokens')
      .set({ last_used_at: at })
      .where('id', '=', joinTokenId)
      .execute();
    await this.publish(id, existing ? 'host.updated' : 'host.created');
    return { host_id: id, credential, heartbeat_interval_s: this.heartbeatIntervalS };
  }

  async resolveCredential(secret: string): Promise<{ hostId: string; hostName: string } | null> {
    const row = await this.store.db
      .selectFrom('hosts')
      .select(['id', 'name'])
      .where('credential_hash', '=', hashSecret(secret))
      .executeTakeFirst();
    return row ? { hostId: row.id, hostName: row.name } : null;
  }

  async heartbeat(hostId: string, hb: z.infer<typeof AgentHeartbeat>): Promise<{ wasDown: boolean }> {
    const before = await this.getRow(hostId);
    const at = nowIso();
    await this.store.db
      .updateTable('hosts')
      .set({
        ...capacityColumns(hb.capacity),
        status: 'ready',
        last_heartbeat_at: at,
        updated_at: at,
        ...(hb.agent_version ? { agent_version: hb.agent_version } : {}),
      })
      .where('id', '=', hostId)
      .execute();
    // Every beat is an event: the UI's "last heartbeat" follows the stream instead of polling.
    await this.publish(hostId, 'host.updated');
    return { wasDown: before.status !== 'ready' };
  }

  async rotateCredential(hostId: string): Promise<string> {
    const credential = newSecret('nqvm_host');
    await this.store.db
      .updateTable('hosts')
      .set({ credential_hash: hashSecret(credential), updated_at: nowIso() })
      .where('id', '=', hostId)
      .execute();
    await this.publish(hostId, 'host.updated');
    return credential;
  }

  async setSchedulable(hostId: string, schedulable: boolean): Promise<Host> {
    await this.getRow(hostId);
    await this.store.db
      .updateTable('hosts')
      .set({ schedulable: schedulable ? 1 : 0, updated_at: nowIso() })
      .where('id', '=', hostId)
      .execute();
    return this.publish(hostId, 'host.updated');
  }

  async revokeCredential(hostId: string): Promise<Host> {
    await this.getRow(hostId);
    await this.store.db
      .updateTable('hosts')
      .set({ credential_hash: null, updated_at: nowIso() })
      .where('id', '=', hostId)
      .execute();
    return this.publish(hostId, 'host.updated');
  }

  async list(q: { limit: number; cursor?: string; status?: string }) {
    let query = this.store.db.selectFrom('hosts').selectAll();
    if (q.status) query = query.where('status', '=', q.status as HostRow['status']);
    const page = await paginate(query, 'created_at', q);
    return { items: page.items.map((r) => toHost(r, this.vcpuOvercommit)), next: page.next };
  }

  async getRow(id: string): Promise<HostRow> {
    const row = await this.store.db.selectFrom('hosts').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) throw new NqvmError('HOST_NOT_FOUND', { id });
    return row;
  }

  async get(id: string): Promise<Host> {
    return toHost(await this.getRow(id), this.vcpuOvercommit);
  }

  async remove(id: string): Promise<void> {
    const row = await this.getRow(id);
    const vms = await this.store.db
      .selectFrom('vms')
      .select('id')
      .where('host_id', '=', id)
      .limit(1)
      .executeTakeFirst();
    if (vms)
      throw new NqvmError('HOST_NOT_EMPTY', `host ${row.name} still has VMs; drain or delete them first`);
    const volume = await this.store.db
      .selectFrom('volumes')
      .select(['id', 'name'])
      .where('host_id', '=', id)
      .limit(1)
      .executeTakeFirst();
    if (volume)
      throw new NqvmError(
        'HOST_NOT_EMPTY',
        `host ${row.name} holds volume ${volume.name} (and maybe others); delete them first`,
        { volume_id: volume.id },
      );
    await this.store.db.deleteFrom('hosts').where('id', '=', id).execute();
    await this.bus.publish({
      type: 'host.deleted',
      resourceType: 'host',
      resourceId: id,
      data: toHost(row, this.vcpuOvercommit),
    });
  }

  /**
   * Marks hosts whose heartbeats stopped: unreachable after 3 intervals, lost after 12.
   * Answers the hosts that changed so the caller can mark their VMs unknown.
   */
  async sweep(now = Date.now()): Promise<HostRow[]> {
    const interval = this.heartbeatIntervalS * 1000;
    const changed: HostRow[] = [];
    const rows = await this.store.db.selectFrom('hosts').selectAll().where('status', '!=', 'lost').execute();
    for (const r of rows) {
      const last = r.last_heartbeat_at ? Date.parse(r.last_heartbeat_at) : Date.parse(r.created_at);
      const missed = (now - last) / interval;
      const next = missed >= LOST_AFTER ? 'lost' : missed >= UNREACHABLE_AFTER ? 'unreachable' : r.status;
      if (next === r.status) continue;
      await this.store.db
        .updateTable('hosts')
        .set({ status: next, updated_at: nowIso() })
        .where('id', '=', r.id)
        .where('status', '=', r.status)
        .execute();
      changed.push({ ...r, status: next });
      await this.publish(r.id, 'host.updated');
    }
    return changed;
  }

  assertLive(row: HostRow): void {
    if (row.credential_hash === null)
      throw new NqvmError('UNAUTHENTICATED', 'this host credential was revoked');
  }

  private async publish(id: string, type: string): Promise<Host> {
    const host = await this.get(id);
    await this.bus.publish({ type, resourceType: 'host', resourceId: id, data: host });
    return host;
  }
}

function capacityColumns(c: z.infer<typeof HostCapacity>) {
  return { capacity: JSON.stringify(c), cap_vcpu: c.vcpu, cap_mem_mib: c.mem_mib, cap_disk_mib: c.disk_mib };
}
