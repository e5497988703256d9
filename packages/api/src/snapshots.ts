/**
 * Snapshots: a VM's memory, device state and writable disks frozen at one paused instant,
 * kept by the agent of the VM's host. A snapshot restores its VM in place or becomes a new VM
 * (a clone with its own disk copy and its own network identity).
 */
import { z } from 'zod';
import { Labels, ListQuery, Name, Operation, Timestamp, Uuid, Vm, Vmm } from './schemas';

export const SnapshotType = z.enum(['Full', 'Diff']);
export type SnapshotType = z.infer<typeof SnapshotType>;

export const SnapshotStatus = z.enum(['creating', 'ready', 'failed', 'deleting']);
export type SnapshotStatus = z.infer<typeof SnapshotStatus>;

/** POST /api/v1/vms/{id}/snapshots (the reference form). */
export const SnapshotCreate = z.strictObject({
  name: Name.describe('unique among the snapshots of the VM'),
  snapshot_type: SnapshotType.default('Full').describe(
    'Diff: only the memory pages written since the previous snapshot of the same run (Firecracker only)',
  ),
  description: z.string().max(500).optional(),
});
export type SnapshotCreate = z.infer<typeof SnapshotCreate>;

export const Snapshot = z.object({
  id: Uuid,
  name: z.string(),
  description: z.string().nullable(),
  /** The VM it was taken from; null once that VM is deleted (the snapshot stays usable). */
  vm_id: Uuid.nullable(),
  vm_name: z.string(),
  /** The host whose agent keeps the files; instantiating places the new VM there. */
  host_id: Uuid.nullable(),
  snapshot_type: SnapshotType,
  /** Diff: the snapshot whose memory it builds on. */
  parent_id: Uuid.nullable(),
  status: SnapshotStatus,
  vmm: Vmm,
  vcpu: z.number().int(),
  mem_mib: z.number().int(),
  /** Bytes the files take on the host (allocated: sparse files count what they hold). */
  size_bytes: z.number().int().nullable(),
  sizes: z
    .object({ state_bytes: z.number().int(), memory_bytes: z.number().int(), disk_bytes: z.number().int() })
    .nullable(),
  /** Whether the guest ran nqvm's guest agent, which re-addresses a clone's NICs after restore. */
  guest_agent: z.boolean(),
  error: z.string().nullable(),
  created_by: z.string().nullable(),
  created_at: Timestamp,
  updated_at: Timestamp,
});
export type Snapshot = z.infer<typeof Snapshot>;

export const SnapshotListQuery = ListQuery.extend({
  vm_id: Uuid.optional(),
  name: Name.optional().describe("exactly this name (unique per VM: several VMs' snapshots may share it)"),
  host_id: Uuid.optional(),
  status: SnapshotStatus.optional(),
});

export const SnapshotActionResponse = z.object({ snapshot: Snapshot, operation: Operation });

/** POST /api/v1/vms/{id}/restore: the VM returns to the snapshot's state (running). */
export const VmRestore = z.strictObject({ snapshot_id: Uuid });

/** POST /api/v1/snapshots/{id}/instantiate: a new VM from the snapshot. */
export const SnapshotInstantiate = z.strictObject({
  name: Name,
  labels: Labels.default({}),
});
export type SnapshotInstantiate = z.infer<typeof SnapshotInstantiate>;

export const SnapshotInstantiateResponse = z.object({
  vm: Vm,
  operation: Operation,
  /** Where the VM runs and why: the snapshot's files live on one host. */
  placement: z.object({ host_id: Uuid, reason: z.string() }),
  /** E.g. that clones of one snapshot share the guest's entropy pool and identity state. */
  warnings: z.array(z.string()),
});
export type SnapshotInstantiateResponse = z.infer<typeof SnapshotInstantiateResponse>;
