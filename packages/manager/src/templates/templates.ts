/**
 * The template resource: a named VM shape kept in `templates.spec` (JSON), instantiated through
 * the VM service's create. A template password exists only as its hash, carried to the VMs made
 * from it. The image fields keep the VM spec's names (kernel_image_id, rootfs_image_id,
 * initrd_image_id): image delete finds its users by them.
 */
import { randomUUID } from 'node:crypto';
import {
  NqvmError,
  type Operation,
  type Template,
  type TemplateCreate,
  type TemplateOverrides,
  type TemplatePatch,
  type TemplateSpecInput,
  type Vm,
  VmCreate,
} from '@nqvm/api';
import { nowIso } from '../clock';
import { type Datastore, isUniqueViolation } from '../db/datastore';
import { paginate } from '../db/pagination';
import type { EventBus } from '../events/bus';
import { hashGuestPassword } from '../vms/guest-secrets';
import type { StoredSpec, Vms } from '../vms/vms';

/** What is kept in `templates.spec`; description and author live here too (no columns for them). */
interface StoredTemplate {
  description: string | null;
  created_by: string | null;
  vcpu: number;
  mem_mib: number;
  kernel_image_id: string | null;
  rootfs_image_id: string | null;
  initrd_image_id: string | null;
  disk_size_mib: number | null;
  boot_args: string | null;
  vmm: 'firecracker' | 'qemu' | null;
  networks: Array<{ network_id: string }> | null;
  guest_config: StoredSpec['guest_config'];
  restart_policy: 'never' | 'on-failure' | 'always';
  labels: Record<string, string>;
}

interface TemplateRow {
  id: string;
  name: string;
  /** StoredTemplate as JSON. */
  spec: string;
  created_at: string;
  updated_at: string;
}

export function toTemplate(r: TemplateRow): Template {
  const { description, created_by, guest_config: gc, ...spec } = JSON.parse(r.spec) as StoredTemplate;
  return {
    id: r.id,
    name: r.name,
    description,
    spec: {
      ...spec,
      guest_config: {
        mode: gc.mode,
        username: gc.username,
        has_password: gc.password_hash !== null,
        ssh_authorized_keys: gc.ssh_authorized_keys,
        hostname: gc.hostname,
        has_user_data: gc.user_data !== null,
      },
    },
    created_by,
    created_at: r.created_at,
    updated_at: r.updated_at,
  };
}

export interface TemplateListFilter {
  limit: number;
  cursor?: string;
  name?: string;
}

export class Templates {
  constructor(
    private readonly store: Datastore,
    private readonly bus: EventBus,
    private readonly vms: Vms,
  ) {}

  async list(f: TemplateListFilter): Promise<{ items: Template[]; next: string | null }> {
    let q = this.store.db.selectFrom('templates').selectAll();
    if (f.name) q = q.where('name', '>=', f.name).where('name', '<', `${f.name}\uffff`);
    const page = await paginate(q, 'created_at', f);
    return { items: page.items.map(toTemplate), next: page.next };
  }

  async get(id: string): Promise<Template> {
    return toTemplate(await this.getRow(id));
  }

  async create(input: TemplateCreate, actor: string | null): Promise<Template> {
    await this.checkReferences(input.spec);
    const stored = storedOf(input.spec, null, input.description ?? null, actor);
    return this.insert(input.name, stored);
  }

  async patch(id: string, p: TemplatePatch): Promise<Template> {
    const row = await this.getRow(id);
    const old = JSON.parse(row.spec) as StoredTemplate;
    let stored = old;
    if (p.spec) {
      await this.checkReferences(p.spec);
      stored = storedOf(p.spec, old.guest_config.password_hash, old.description, old.created_by);
    }
    if (p.description !== undefined) stored = { ...stored, description: p.description };
    try {
      await this.store.db
        .updateTable('templates')
        .set({
          ...(p.name !== undefined ? { name: p.name } : {}),
          spec: JSON.stringify(stored),
          updated_at: nowIso(),
        })
        .where('id', '=', id)
        .execute();
    } catch (err) {
      if (isUniqueViolation(err)) throw nameTaken(p.name ?? row.name);
      throw err;
    }
    return this.publish('template.updated', await this.get(id));
  }

  async delete(id: string): Promise<void> {
    const template = await this.get(id);
    await this.store.db.deleteFrom('templates').where('id', '=', id).execute();
    await this.publish('template.deleted', template);
  }

  /** Makes a VM from the template with the overrides applied; answers as VM create does. */
  async instantiate(
    id: string,
    name: string,
    o: TemplateOverrides,
    actor: string | null,
  ): Promise<{ vm: Vm; operation: Operation }> {
    const t = JSON.parse((await this.getRow(id)).spec) as StoredTemplate;
    const gc = t.guest_config;
    const og = o.guest_config ?? {};
    const merged = VmCreate.safeParse({
      name,
      vcpu: o.vcpu ?? t.vcpu,
      mem_mib: o.mem_mib ?? t.mem_mib,
      kernel_image_id: o.kernel_image_id ?? t.kernel_image_id ?? undefined,
      rootfs_image_id: o.rootfs_image_id ?? t.rootfs_image_id ?? undefined,
      initrd_image_id: o.initrd_image_id ?? t.initrd_image_id ?? undefined,
      disk_size_mib: o.disk_size_mib ?? t.disk_size_mib ?? undefined,
      boot_args: o.boot_args ?? t.boot_args ?? undefined,
      vmm: o.vmm ?? t.vmm ?? undefined,
      networks: o.networks ?? t.networks ?? undefined,
      volumes: o.volumes ?? [],
      guest_config: {
        mode: og.mode ?? gc.mode,
        username: og.username ?? gc.username ?? undefined,
        password: og.password,
        ssh_authorized_keys: og.ssh_authorized_keys ?? gc.ssh_authorized_keys,
        hostname: og.hostname ?? gc.hostname ?? undefined,
        user_data: og.user_data ?? gc.user_data ?? undefined,
      },
      restart_policy: o.restart_policy ?? t.restart_policy,
      labels: { ...t.labels, ...o.labels },
      start: o.start ?? true,
    });
    if (!merged.success) {
      const fields = merged.error.issues.map((i) => ({
        path: ['body', 'overrides', ...i.path.map(String)].join('.'),
        message: i.message,
      }));
      throw new NqvmError(
        'VALIDATION_FAILED',
        `invalid ${fields.map((f) => f.path).join(', ')} (template and overrides merged)`,
        {
          fields,
        },
      );
    }
    const hash = og.password === undefined ? gc.password_hash : null;
    return this.vms.create(merged.data, actor, { passwordHash: hash });
  }

  /** A template of an existing VM's shape (its password hash carried, its addresses not). */
  async fromVm(
    vmId: string,
    name: string,
    description: string | null,
    actor: string | null,
  ): Promise<Template> {
    const row = await this.vms.getRow(vmId);
    const spec = JSON.parse(row.spec) as StoredSpec;
    const stored: StoredTemplate = {
      description,
      created_by: actor,
      vcpu: row.vcpu,
      mem_mib: Number(row.mem_mib),
      kernel_image_id: spec.kernel_image_id,
      rootfs_image_id: spec.rootfs_image_id,
      initrd_image_id: spec.initrd_image_id,
      disk_size_mib: spec.disk_size_mib,
      boot_args: spec.boot_args,
      vmm: (row.vmm as StoredTemplate['vmm']) ?? null,
      networks: spec.networks.map((n) => ({ network_id: n.network_id })),
      guest_config: { ...spec.guest_config },
      restart_policy: row.restart_policy as StoredTemplate['restart_policy'],
      labels: JSON.parse(row.labels),
    };
    return this.insert(name, stored);
  }

  private async getRow(id: string): Promise<TemplateRow> {
    const row = await this.store.db
      .selectFrom('templates')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirst();
    if (!row) throw new NqvmError('TEMPLATE_NOT_FOUND', { id });
    return row;
  }

  private async insert(name: string, stored: StoredTemplate): Promise<Template> {
    const at = nowIso();
    const row: TemplateRow = {
      id: randomUUID(),
      name,
      spec: JSON.stringify(stored),
      created_at: at,
      updated_at: at,
    };
    try {
      await this.store.db.insertInto('templates').values(row).execute();
    } catch (err) {
      if (isUniqueViolation(err)) throw nameTaken(name);
      throw err;
    }
    return this.publish('template.created', toTemplate(row));
  }

  private async publish(type: string, t: Template): Promise<Template> {
    await this.bus.publish({ type, resourceType: 'template', resourceId: t.id, data: t });
    return t;
  }

  /** Images named by the spec exist and are of their field's kind, networks exist: 400 otherwise. */
  private async checkReferences(spec: TemplateSpecInput): Promise<void> {
    const images: Array<[string | undefined, string, string]> = [
      [spec.kernel_image_id, 'kernel', 'kernel_image_id'],
      [spec.rootfs_image_id, 'rootfs', 'rootfs_image_id'],
      [spec.initrd_image_id, 'initrd', 'initrd_image_id'],
    ];
    for (const [id, kind, field] of images) {
      if (!id) continue;
      const image = await this.store.db
        .selectFrom('images')
        .select(['kind'])
        .where('id', '=', id)
        .executeTakeFirst();
      if (!image)
        throw new NqvmError('VALIDATION_FAILED', `spec.${field}: no image ${id}`, {
          fields: [{ path: `body.spec.${field}`, message: 'unknown image' }],
        });
      if (image.kind !== kind)
        throw new NqvmError(
          'VALIDATION_FAILED',
          `spec.${field}: image ${id} is a ${image.kind}, not a ${kind}`,
          {
            fields: [{ path: `body.spec.${field}`, message: `not a ${kind}` }],
          },
        );
    }
    for (const [index, n] of (spec.networks ?? []).entries()) {
      const found = await this.store.db
        .selectFrom('networks')
        .select('id')
        .where('id', '=', n.network_id)
        .executeTakeFirst();
      if (!found)
        throw new NqvmError(
          'VALIDATION_FAILED',
          `spec.networks.${index}.network_id: no network ${n.network_id}`,
          {
            fields: [{ path: `body.spec.networks.${index}.network_id`, message: 'unknown network' }],
          },
        );
    }
  }
}

function nameTaken(name: string): NqvmError {
  return new NqvmError('NAME_TAKEN', `a template named "${name}" exists`, { field: 'name' });
}

function storedOf(
  spec: TemplateSpecInput,
  keptHash: string | null,
  description: string | null,
  actor: string | null,
): StoredTemplate {
  const gc = spec.guest_config;
  return {
    description,
    created_by: actor,
    vcpu: spec.vcpu,
    mem_mib: spec.mem_mib,
    kernel_image_id: spec.kernel_image_id ?? null,
    rootfs_image_id: spec.rootfs_image_id ?? null,
    initrd_image_id: spec.initrd_image_id ?? null,
    disk_size_mib: spec.disk_size_mib ?? null,
    boot_args: spec.boot_args ?? null,
    vmm: spec.vmm ?? null,
    networks: spec.networks ?? null,
    guest_config: {
      mode: gc?.mode ?? 'auto',
      username: gc?.username ?? null,
      password_hash: gc?.password !== undefined ? hashGuestPassword(gc.password) : keptHash,
      ssh_authorized_keys: gc?.ssh_authorized_keys ?? [],
      hostname: gc?.hostname ?? null,
      user_data: gc?.user_data ?? null,
    },
    restart_policy: spec.restart_policy,
    labels: spec.labels,
  };
}
