/**
 * Schema migrations, one list for both datastores. Each migration gets the dialect so the
 * few types that differ (auto-increment, big integers) are chosen here and nowhere else.
 */
import { type Kysely, type Migration, type MigrationProvider, Migrator, sql } from 'kysely';
import type { Database } from './schema';

export type DialectName = 'sqlite' | 'postgres';

type Step = (db: Kysely<unknown>, dialect: DialectName) => Promise<void>;

const steps: Record<string, Step> = {
  async '0001_foundation'(db, dialect) {
    const big = dialect === 'postgres' ? 'bigint' : 'integer';
    await db.schema
      .createTable('users')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('username', 'text', (c) => c.notNull().unique())
      .addColumn('password_hash', 'text', (c) => c.notNull())
      .addColumn('role', 'text', (c) => c.notNull())
      .addColumn('disabled', 'integer', (c) => c.notNull().defaultTo(0))
      .addColumn('created_at', 'text', (c) => c.notNull())
      .addColumn('updated_at', 'text', (c) => c.notNull())
      .execute();

    await db.schema
      .createTable('sessions')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('user_id', 'text', (c) => c.notNull().references('users.id').onDelete('cascade'))
      .addColumn('csrf_hash', 'text', (c) => c.notNull())
      .addColumn('created_at', 'text', (c) => c.notNull())
      .addColumn('expires_at', 'text', (c) => c.notNull())
      .addColumn('last_seen_at', 'text', (c) => c.notNull())
      .execute();
    await db.schema.createIndex('sessions_user').on('sessions').column('user_id').execute();

    await db.schema
      .createTable('api_tokens')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('user_id', 'text', (c) => c.notNull().references('users.id').onDelete('cascade'))
      .addColumn('name', 'text', (c) => c.notNull())
      .addColumn('token_hash', 'text', (c) => c.notNull().unique())
      .addColumn('prefix', 'text', (c) => c.notNull())
      .addColumn('role', 'text', (c) => c.notNull())
      .addColumn('created_at', 'text', (c) => c.notNull())
      .addColumn('expires_at', 'text')
      .addColumn('last_used_at', 'text')
      .addColumn('revoked_at', 'text')
      .execute();
    await db.schema
      .createIndex('api_tokens_user')
      .on('api_tokens')
      .columns(['user_id', 'created_at', 'id'])
      .execute();

    await db.schema
      .createTable('join_tokens')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('token_hash', 'text', (c) => c.notNull().unique())
      .addColumn('description', 'text')
      .addColumn('created_by', 'text')
      .addColumn('created_at', 'text', (c) => c.notNull())
      .addColumn('expires_at', 'text', (c) => c.notNull())
      .addColumn('revoked_at', 'text')
      .addColumn('last_used_at', 'text')
      .execute();

    await db.schema
      .createTable('hosts')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('name', 'text', (c) => c.notNull().unique())
      .addColumn('address', 'text', (c) => c.notNull())
      .addColumn('credential_hash', 'text', (c) => c.unique())
      .addColumn('status', 'text', (c) => c.notNull())
      .addColumn('schedulable', 'integer', (c) => c.notNull().defaultTo(1))
      .addColumn('labels', 'text', (c) => c.notNull().defaultTo('{}'))
      .addColumn('capacity', 'text', (c) => c.notNull())
      .addColumn('cap_vcpu', 'integer', (c) => c.notNull().defaultTo(0))
      .addColumn('cap_mem_mib', big, (c) => c.notNull().defaultTo(0))
      .addColumn('cap_disk_mib', big, (c) => c.notNull().defaultTo(0))
      .addColumn('alloc_vcpu', 'integer', (c) => c.notNull().defaultTo(0))
      .addColumn('alloc_mem_mib', big, (c) => c.notNull().defaultTo(0))
      .addColumn('alloc_disk_mib', big, (c) => c.notNull().defaultTo(0))
      .addColumn('agent_version', 'text')
      .addColumn('last_heartbeat_at', 'text')
      .addColumn('created_at', 'text', (c) => c.notNull())
      .addColumn('updated_at', 'text', (c) => c.notNull())
      .execute();

    await db.schema
      .createTable('vms')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('name', 'text', (c) => c.notNull().unique())
      .addColumn('state', 'text', (c) => c.notNull())
      .addColumn('desired_state', 'text', (c) => c.notNull())
      .addColumn('host_id', 'text', (c) => c.references('hosts.id').onDelete('set null'))
      .addColumn('generation', 'integer', (c) => c.notNull().defaultTo(0))
      .addColumn('vcpu', 'integer', (c) => c.notNull())
      .addColumn('mem_mib', big, (c) => c.notNull())
      .addColumn('disk_mib', big, (c) => c.notNull().defaultTo(0))
      .addColumn('vmm', 'text')
      .addColumn('spec', 'text', (c) => c.notNull())
      .addColumn('labels', 'text', (c) => c.notNull().defaultTo('{}'))
      .addColumn('restart_policy', 'text', (c) => c.notNull())
      .addColumn('last_error', 'text')
      .addColumn('created_by', 'text')
      .addColumn('created_at', 'text', (c) => c.notNull())
      .addColumn('updated_at', 'text', (c) => c.notNull())
      .execute();
    await db.schema.createIndex('vms_page').on('vms').columns(['created_at', 'id']).execute();
    await db.schema.createIndex('vms_state').on('vms').columns(['state', 'created_at', 'id']).execute();
    await db.schema.createIndex('vms_host').on('vms').columns(['host_id', 'created_at', 'id']).execute();

    await db.schema
      .createTable('vm_labels')
      .addColumn('vm_id', 'text', (c) => c.notNull().references('vms.id').onDelete('cascade'))
      .addColumn('key', 'text', (c) => c.notNull())
      .addColumn('value', 'text', (c) => c.notNull())
      .addPrimaryKeyConstraint('vm_labels_pk', ['vm_id', 'key'])
      .execute();
    await db.schema.createIndex('vm_labels_kv').on('vm_labels').columns(['key', 'value']).execute();

    await db.schema
      .createTable('images')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('name', 'text', (c) => c.notNull().unique())
      .addColumn('kind', 'text', (c) => c.notNull())
      .addColumn('sha256', 'text')
      .addColumn('size_bytes', big)
      .addColumn('format', 'text')
      .addColumn('status', 'text', (c) => c.notNull())
      .addColumn('source', 'text', (c) => c.notNull().defaultTo('{}'))
      .addColumn('metadata', 'text', (c) => c.notNull().defaultTo('{}'))
      .addColumn('is_default', 'integer', (c) => c.notNull().defaultTo(0))
      .addColumn('created_at', 'text', (c) => c.notNull())
      .addColumn('updated_at', 'text', (c) => c.notNull())
      .execute();
    await db.schema.createIndex('images_page').on('images').columns(['created_at', 'id']).execute();

    await db.schema
      .createTable('networks')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('name', 'text', (c) => c.notNull().unique())
      .addColumn('kind', 'text', (c) => c.notNull())
      .addColumn('cidr', 'text')
      .addColumn('gateway', 'text')
      .addColumn('config', 'text', (c) => c.notNull().defaultTo('{}'))
      .addColumn('is_default', 'integer', (c) => c.notNull().defaultTo(0))
      .addColumn('created_at', 'text', (c) => c.notNull())
      .addColumn('updated_at', 'text', (c) => c.notNull())
      .execute();

    await db.schema
      .createTable('templates')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('name', 'text', (c) => c.notNull().unique())
      .addColumn('spec', 'text', (c) => c.notNull())
      .addColumn('created_at', 'text', (c) => c.notNull())
      .addColumn('updated_at', 'text', (c) => c.notNull())
      .execute();

    await db.schema
      .createTable('snapshots')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('name', 'text', (c) => c.notNull())
      .addColumn('vm_id', 'text', (c) => c.references('vms.id').onDelete('set null'))
      .addColumn('host_id', 'text', (c) => c.references('hosts.id').onDelete('set null'))
      .addColumn('snapshot_type', 'text', (c) => c.notNull())
      .addColumn('status', 'text', (c) => c.notNull())
      .addColumn('size_bytes', big)
      .addColumn('files', 'text', (c) => c.notNull().defaultTo('{}'))
      .addColumn('spec', 'text', (c) => c.notNull().defaultTo('{}'))
      .addColumn('created_at', 'text', (c) => c.notNull())
      .addColumn('updated_at', 'text', (c) => c.notNull())
      .execute();

    await db.schema
      .createTable('operations')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('kind', 'text', (c) => c.notNull())
      .addColumn('target_type', 'text', (c) => c.notNull())
      .addColumn('target_id', 'text', (c) => c.notNull())
      .addColumn('status', 'text', (c) => c.notNull())
      .addColumn('progress_percent', 'integer', (c) => c.notNull().defaultTo(0))
      .addColumn('progress_message', 'text', (c) => c.notNull().defaultTo(''))
      .addColumn('error_code', 'text')
      .addColumn('error_message', 'text')
      .addColumn('params', 'text', (c) => c.notNull().defaultTo('{}'))
      .addColumn('created_by', 'text')
      .addColumn('created_at', 'text', (c) => c.notNull())
      .addColumn('updated_at', 'text', (c) => c.notNull())
      .addColumn('finished_at', 'text')
      .execute();
    await db.schema.createIndex('operations_page').on('operations').columns(['created_at', 'id']).execute();
    await db.schema
      .createIndex('operations_target')
      .on('operations')
      .columns(['target_id', 'status'])
      .execute();
    await db.schema.createIndex('operations_finished').on('operations').column('finished_at').execute();

    await db.schema
      .createTable('audit_events')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('at', 'text', (c) => c.notNull())
      .addColumn('actor_type', 'text', (c) => c.notNull())
      .addColumn('actor_id', 'text')
      .addColumn('actor_name', 'text')
      .addColumn('action', 'text', (c) => c.notNull())
      .addColumn('target_type', 'text')
      .addColumn('target_id', 'text')
      .addColumn('result', 'text', (c) => c.notNull())
      .addColumn('status_code', 'integer', (c) => c.notNull())
      .addColumn('ip', 'text')
      .execute();
    await db.schema.createIndex('audit_page').on('audit_events').columns(['at', 'id']).execute();

    let events = db.schema.createTable('events');
    events =
      dialect === 'postgres'
        ? events.addColumn('seq', 'bigserial', (c) => c.primaryKey())
        : events.addColumn('seq', 'integer', (c) => c.primaryKey().autoIncrement());
    await events
      .addColumn('type', 'text', (c) => c.notNull())
      .addColumn('resource_type', 'text', (c) => c.notNull())
      .addColumn('resource_id', 'text', (c) => c.notNull())
      .addColumn('min_role', 'text', (c) => c.notNull())
      .addColumn('owner_id', 'text')
      .addColumn('data', 'text', (c) => c.notNull())
      .addColumn('created_at', 'text', (c) => c.notNull())
      .execute();
    await db.schema.createIndex('events_created').on('events').column('created_at').execute();
  },
};

const steps2: Record<string, Step> = {
  async '0002_reconciler'(db) {
    // The generation the host last acknowledged, and when a command was last sent for it.
    await db.schema
      .alterTable('vms')
      .addColumn('observed_generation', 'integer', (c) => c.notNull().defaultTo(0))
      .execute();
    await db.schema.alterTable('vms').addColumn('commanded_at', 'text').execute();
    await db.schema.alterTable('vms').addColumn('pid', 'integer').execute();
  },
};
Object.assign(steps, steps2);

const steps3: Record<string, Step> = {
  async '0003_images_volumes'(db, dialect) {
    const big = dialect === 'postgres' ? 'bigint' : 'integer';
    // An image's import error, who made it, and the digest of the blob the store keeps.
    await db.schema.alterTable('images').addColumn('error', 'text').execute();
    await db.schema.alterTable('images').addColumn('created_by', 'text').execute();
    await db.schema.createIndex('images_sha256').on('images').column('sha256').execute();

    // Data disks: made on one host at first use, attached to at most one VM.
    await db.schema
      .createTable('volumes')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('name', 'text', (c) => c.notNull().unique())
      .addColumn('size_mib', big, (c) => c.notNull())
      .addColumn('filesystem', 'text', (c) => c.notNull().defaultTo('none'))
      .addColumn('host_id', 'text', (c) => c.references('hosts.id'))
      .addColumn('vm_id', 'text', (c) => c.references('vms.id').onDelete('set null'))
      .addColumn('delete_with_vm', 'integer', (c) => c.notNull().defaultTo(0))
      .addColumn('status', 'text', (c) => c.notNull())
      .addColumn('created_by', 'text')
      .addColumn('created_at', 'text', (c) => c.notNull())
      .addColumn('updated_at', 'text', (c) => c.notNull())
      .execute();
    await db.schema.createIndex('volumes_page').on('volumes').columns(['created_at', 'id']).execute();
    await db.schema.createIndex('volumes_vm').on('volumes').column('vm_id').execute();
  },
};
Object.assign(steps, steps3);

const steps4: Record<string, Step> = {
  async '0004_networking'(db) {
    // One row per VM NIC: its address from IPAM (nat, isolated) or as the agent found it (bridged).
    await db.schema
      .createTable('vm_nics')
      .addColumn('vm_id', 'text', (c) => c.notNull().references('vms.id').onDelete('cascade'))
      .addColumn('nic_index', 'integer', (c) => c.notNull())
      .addColumn('network_id', 'text', (c) => c.notNull().references('networks.id'))
      .addColumn('mac', 'text', (c) => c.notNull())
      .addColumn('ip', 'text')
      .addColumn('ip_source', 'text', (c) => c.notNull().defaultTo('ipam'))
      .addPrimaryKeyConstraint('vm_nics_pk', ['vm_id', 'nic_index'])
      .execute();
    // Bridged addresses are reported, not assigned: only IPAM addresses are unique.
    await db.schema
      .createIndex('vm_nics_address')
      .on('vm_nics')
      .columns(['network_id', 'ip'])
      .unique()
      .where(sql.ref('ip_source'), '=', 'ipam')
      .execute();
    await db.schema.createIndex('vm_nics_network').on('vm_nics').column('network_id').execute();

    await db.schema
      .createTable('port_forwards')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('vm_id', 'text', (c) => c.notNull().references('vms.id').onDelete('cascade'))
      .addColumn('nic_index', 'integer', (c) => c.notNull())
      .addColumn('proto', 'text', (c) => c.notNull())
      .addColumn('host_port', 'integer', (c) => c.notNull())
      .addColumn('guest_port', 'integer', (c) => c.notNull())
      .addColumn('created_at', 'text', (c) => c.notNull())
      .execute();
    await db.schema
      .createIndex('port_forwards_port')
      .on('port_forwards')
      .columns(['proto', 'host_port'])
      .execute();
    await db.schema.createIndex('port_forwards_vm').on('port_forwards').column('vm_id').execute();
  },
};
Object.assign(steps, steps4);

const steps5: Record<string, Step> = {
  async '0005_snapshots'(db, dialect) {
    const big = dialect === 'postgres' ? 'bigint' : 'integer';
    // What the Snapshot resource shows; the VM's shape is copied so the snapshot outlives its VM.
    await db.schema.alterTable('snapshots').addColumn('description', 'text').execute();
    await db.schema
      .alterTable('snapshots')
      .addColumn('vm_name', 'text', (c) => c.notNull().defaultTo(''))
      .execute();
    await db.schema.alterTable('snapshots').addColumn('parent_id', 'text').execute();
    await db.schema
      .alterTable('snapshots')
      .addColumn('vmm', 'text', (c) => c.notNull().defaultTo('qemu'))
      .execute();
    await db.schema
      .alterTable('snapshots')
      .addColumn('vcpu', 'integer', (c) => c.notNull().defaultTo(0))
      .execute();
    await db.schema
      .alterTable('snapshots')
      .addColumn('mem_mib', big, (c) => c.notNull().defaultTo(0))
      .execute();
    await db.schema.alterTable('snapshots').addColumn('sizes', 'text').execute();
    await db.schema
      .alterTable('snapshots')
      .addColumn('guest_agent', 'integer', (c) => c.notNull().defaultTo(0))
      .execute();
    await db.schema.alterTable('snapshots').addColumn('error', 'text').execute();
    await db.schema.alterTable('snapshots').addColumn('created_by', 'text').execute();
    // While a manager works on a snapshot with its agent (taking or deleting it), it holds this
    // claim; a claim left to expire (that manager stopped) lets another one ask the agent again.
    await db.schema.alterTable('snapshots').addColumn('claimed_until', 'text').execute();
    // Names are global, so the CLI can name snapshots.
    await db.schema.createIndex('snapshots_name').on('snapshots').column('name').unique().execute();
    await db.schema.createIndex('snapshots_page').on('snapshots').columns(['created_at', 'id']).execute();
    await db.schema
      .createIndex('snapshots_vm')
      .on('snapshots')
      .columns(['vm_id', 'created_at', 'id'])
      .execute();
    await db.schema.createIndex('snapshots_parent').on('snapshots').column('parent_id').execute();
  },
};
Object.assign(steps, steps5);

const steps6: Record<string, Step> = {
  async '0006_containers'(db, dialect) {
    const big = dialect === 'postgres' ? 'bigint' : 'integer';
    // A container and the microVM it runs in share their id. The row outlives a failed create
    // (phase failed, no VM) so its reason stays visible; otherwise it goes with its VM.
    await db.schema
      .createTable('containers')
      .addColumn('id', 'text', (c) => c.primaryKey())
      .addColumn('name', 'text', (c) => c.notNull().unique())
      .addColumn('image', 'text', (c) => c.notNull())
      .addColumn('image_id', 'text')
      .addColumn('image_digest', 'text')
      .addColumn('request', 'text', (c) => c.notNull())
      .addColumn('process', 'text')
      .addColumn('ports', 'text', (c) => c.notNull())
      .addColumn('vcpu', 'integer', (c) => c.notNull())
      .addColumn('mem_mib', big, (c) => c.notNull())
      .addColumn('restart_policy', 'text', (c) => c.notNull())
      .addColumn('network_id', 'text')
      .addColumn('labels', 'text', (c) => c.notNull())
      .addColumn('start', 'integer', (c) => c.notNull())
      .addColumn('phase', 'text', (c) => c.notNull())
      .addColumn('status', 'text', (c) => c.notNull())
      .addColumn('running', 'integer', (c) => c.notNull().defaultTo(0))
      .addColumn('exit_kind', 'text')
      .addColumn('exit_value', 'integer')
      .addColumn('started_at', 'text')
      .addColumn('finished_at', 'text')
      .addColumn('restart_count', 'integer', (c) => c.notNull().defaultTo(0))
      .addColumn('last_error', 'text')
      .addColumn('created_by', 'text')
      // While `creating`: until when the manager running the create holds it (renewed).
      .addColumn('claimed_until', 'text')
      .addColumn('created_at', 'text', (c) => c.notNull())
      .addColumn('updated_at', 'text', (c) => c.notNull())
      .execute();
    await db.schema.createIndex('containers_page').on('containers').columns(['created_at', 'id']).execute();
    await db.schema.createIndex('containers_status').on('containers').column('status').execute();
  },
};
Object.assign(steps, steps6);

const steps7: Record<string, Step> = {
  async '0007_image_stored_bytes'(db, dialect) {
    const big = dialect === 'postgres' ? 'bigint' : 'integer';
    // What an image takes on disk (allocated blocks), beside its length: blobs are kept sparse.
    await db.schema.alterTable('images').addColumn('stored_bytes', big).execute();
    // A failed import leaves no image now; the rows earlier versions kept as failed held no bytes.
    await sql`delete from images where status = 'failed'`.execute(db);
  },
};
Object.assign(steps, steps7);

const steps8: Record<string, Step> = {
  async '0008_vm_guest_ready'(db) {
    // When the running VM's guest came up (its agent answered, or its console said so), and what said so.
    await db.schema.alterTable('vms').addColumn('guest_ready_at', 'text').execute();
    await db.schema.alterTable('vms').addColumn('guest_ready_signal', 'text').execute();
  },
};
Object.assign(steps, steps8);

const steps9: Record<string, Step> = {
  async '0009_vm_boot_snapshot'(db) {
    // A clone's first boot is a restore, however many starts it takes to happen (a clone whose
    // placement failed used to boot its image when started again).
    await db.schema.alterTable('vms').addColumn('boot_snapshot_id', 'text').execute();
  },
};
Object.assign(steps, steps9);

const steps10: Record<string, Step> = {
  async '0010_snapshot_names_per_vm'(db) {
    // Names are unique per VM, as `before-upgrade` is for each VM that has one; a deleted VM's
    // snapshots (vm_id null) keep theirs. The global index allowed no duplicates to carry over.
    await db.schema.dropIndex('snapshots_name').execute();
    await db.schema
      .createIndex('snapshots_vm_name')
      .on('snapshots')
      .columns(['vm_id', 'name'])
      .unique()
      .execute();
  },
};
Object.assign(steps, steps10);

const steps11: Record<string, Step> = {
  async '0011_operation_steps'(db) {
    // Where a finished operation's time went (a start's boot steps, as its host timed them): JSON.
    await db.schema.alterTable('operations').addColumn('steps', 'text').execute();
  },
};
Object.assign(steps, steps11);

class StaticProvider implements MigrationProvider {
  constructor(private readonly dialect: DialectName) {}
  async getMigrations(): Promise<Record<string, Migration>> {
    const out: Record<string, Migration> = {};
    for (const [name, step] of Object.entries(steps)) {
      out[name] = { up: (db) => step(db, this.dialect) };
    }
    return out;
  }
}

export async function migrateToLatest(db: Kysely<Database>, dialect: DialectName): Promise<string[]> {
  const migrator = new Migrator({ db, provider: new StaticProvider(dialect) });
  const { error, results } = await migrator.migrateToLatest();
  if (error) throw error instanceof Error ? error : new Error(String(error));
  return (results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName);
}

/** Drops every nqvm table (tests only). */
export async function dropAll(db: Kysely<Database>): Promise<void> {
  for (const t of [
    'events',
    'audit_events',
    'operations',
    'containers',
    'snapshots',
    'templates',
    'port_forwards',
    'vm_nics',
    'networks',
    'volumes',
    'images',
    'vm_labels',
    'vms',
    'hosts',
    'join_tokens',
    'api_tokens',
    'sessions',
    'users',
    'kysely_migration',
    'kysely_migration_lock',
  ]) {
    await sql`drop table if exists ${sql.table(t)}`.execute(db);
  }
}
