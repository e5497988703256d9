/**
 * Volumes: data disks that outlive VMs. A volume is made on one host the first time a VM using
 * it is placed, and stays on that host: every VM it is attached to later runs there.
 */
import { z } from 'zod';
import { ListQuery, Name, Timestamp, Uuid } from './schemas';

/** 4 TiB: the largest volume, in MiB. */
export const MAX_VOLUME_MIB = 4 * 1024 * 1024;

export const VolumeFilesystem = z.enum(['none', 'ext4']);
export const VolumeStatus = z.enum(['available', 'in-use', 'deleting']);
export type VolumeStatus = z.infer<typeof VolumeStatus>;

const VolumeSize = z.number().int().min(1).max(MAX_VOLUME_MIB);

export const VolumeCreate = z.strictObject({
  name: Name,
  size_mib: VolumeSize,
  filesystem: VolumeFilesystem.default('ext4').describe('ext4: formatted on the host at first use'),
  delete_with_vm: z.boolean().default(false).describe('deleted with the VM it is attached to'),
});
export type VolumeCreate = z.infer<typeof VolumeCreate>;

export const VolumePatch = z.strictObject({
  name: Name.optional(),
  size_mib: VolumeSize.optional().describe('grow only, and only while detached'),
  delete_with_vm: z.boolean().optional(),
});
export type VolumePatch = z.infer<typeof VolumePatch>;

export const Volume = z.object({
  id: Uuid,
  name: z.string(),
  size_mib: z.number().int(),
  filesystem: VolumeFilesystem,
  host_id: Uuid.nullable().describe('the host holding it; null until a VM using it is placed'),
  vm_id: Uuid.nullable(),
  status: VolumeStatus,
  delete_with_vm: z.boolean(),
  created_at: Timestamp,
  updated_at: Timestamp,
});
export type Volume = z.infer<typeof Volume>;

export const VolumeListQuery = ListQuery.extend({
  vm_id: Uuid.optional(),
  host_id: Uuid.optional(),
  status: VolumeStatus.optional(),
  name: z.string().max(63).optional().describe('case-sensitive name prefix'),
});

export const VolumeAttach = z.strictObject({ volume_id: Uuid });
export const VmVolumeParams = z.object({ id: Uuid, volume_id: Uuid });
