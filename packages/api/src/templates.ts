/**
 * Templates: a named VM shape (size, images, networks, guest configuration defaults) that VMs
 * are made from. A template password is kept only as its hash and carried to the VMs made from
 * the template; it is never returned.
 */
import { z } from 'zod';
import {
  GuestConfigInput,
  Labels,
  ListQuery,
  Name,
  RestartPolicy,
  Timestamp,
  Uuid,
  VmCreate,
  Vmm,
  VmNetworkInput,
} from './schemas';

const Vcpu = z.number().int().min(1).max(32);
const MemMib = z.number().int().min(64).max(262_144);
const DiskMib = z.number().int().min(16).max(4_194_304);
const BootArgs = z.string().max(2048);
const Description = z.string().max(500);

export const TemplateSpecInput = z.strictObject({
  vcpu: Vcpu.default(1),
  mem_mib: MemMib.default(256),
  kernel_image_id: Uuid.optional(),
  rootfs_image_id: Uuid.optional(),
  initrd_image_id: Uuid.optional(),
  disk_size_mib: DiskMib.optional(),
  boot_args: BootArgs.optional(),
  vmm: Vmm.optional(),
  networks: z
    .array(z.strictObject({ network_id: Uuid }))
    .max(8)
    .optional()
    .describe('one NIC per entry; omitted: one NIC on the default network, if there is one; []: none'),
  guest_config: GuestConfigInput.optional(),
  restart_policy: RestartPolicy.default('never'),
  labels: Labels.default({}),
});
export type TemplateSpecInput = z.infer<typeof TemplateSpecInput>;

export const TemplateCreate = z.strictObject({
  name: Name,
  description: Description.optional(),
  spec: TemplateSpecInput,
});
export type TemplateCreate = z.infer<typeof TemplateCreate>;

export const TemplatePatch = z.strictObject({
  name: Name.optional(),
  description: Description.nullable().optional(),
  spec: TemplateSpecInput.optional().describe(
    'replaces the whole spec; a stored password is kept unless the new spec sets one',
  ),
});
export type TemplatePatch = z.infer<typeof TemplatePatch>;

/** What a VM made from a template may change; labels are merged over the template's. */
export const TemplateOverrides = z.strictObject({
  vcpu: Vcpu.optional(),
  mem_mib: MemMib.optional(),
  kernel_image_id: Uuid.optional(),
  rootfs_image_id: Uuid.optional(),
  initrd_image_id: Uuid.optional(),
  disk_size_mib: DiskMib.optional(),
  boot_args: BootArgs.optional(),
  vmm: Vmm.optional(),
  networks: z.array(VmNetworkInput).max(8).optional().describe("replaces the template's networks"),
  volumes: VmCreate.shape.volumes.optional(),
  guest_config: GuestConfigInput.extend({
    mode: z.enum(['auto', 'cloud-init', 'inject', 'none']).optional(),
  })
    .optional()
    .describe("each field given replaces the template's"),
  restart_policy: RestartPolicy.optional(),
  labels: Labels.optional().describe("merged over the template's labels"),
  start: z.boolean().optional(),
});
export type TemplateOverrides = z.infer<typeof TemplateOverrides>;

export const TemplateInstantiate = z.strictObject({
  name: Name.describe('the new VM'),
  overrides: TemplateOverrides.default({}),
});

export const VmToTemplate = z.strictObject({ name: Name, description: Description.optional() });

export const TemplateSpec = z.object({
  vcpu: z.number().int(),
  mem_mib: z.number().int(),
  kernel_image_id: Uuid.nullable(),
  rootfs_image_id: Uuid.nullable(),
  initrd_image_id: Uuid.nullable(),
  disk_size_mib: z.number().int().nullable(),
  boot_args: z.string().nullable(),
  vmm: Vmm.nullable(),
  networks: z
    .array(z.object({ network_id: Uuid }))
    .nullable()
    .describe('null: the default network at instantiation'),
  guest_config: z.object({
    mode: z.enum(['auto', 'cloud-init', 'inject', 'none']),
    username: z.string().nullable(),
    has_password: z.boolean(),
    ssh_authorized_keys: z.array(z.string()),
    hostname: z.string().nullable(),
    has_user_data: z.boolean(),
  }),
  restart_policy: RestartPolicy,
  labels: z.record(z.string(), z.string()),
});

export const Template = z.object({
  id: Uuid,
  name: z.string(),
  description: z.string().nullable(),
  spec: TemplateSpec,
  created_by: z.string().nullable(),
  created_at: Timestamp,
  updated_at: Timestamp,
});
export type Template = z.infer<typeof Template>;

export const TemplateListQuery = ListQuery.extend({
  name: z.string().max(63).optional().describe('case-sensitive name prefix'),
});
