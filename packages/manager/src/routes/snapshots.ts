import {
  DeletedResponse,
  IdParams,
  listOf,
  Snapshot,
  SnapshotActionResponse,
  SnapshotCreate,
  SnapshotInstantiate,
  SnapshotInstantiateResponse,
  SnapshotListQuery,
  VmActionResponse,
  VmRestore,
} from '@nqvm/api';
import type { App } from '../http/app-type';
import type { Services } from '../services';
import { actorName } from './vms';

export function snapshotRoutes(app: App, s: Services): void {
  const tags = ['snapshots'];

  app.get(
    '/api/v1/snapshots',
    {
      config: { access: 'viewer' },
      schema: {
        tags,
        summary: 'List snapshots',
        querystring: SnapshotListQuery,
        response: { 200: listOf(Snapshot) },
      },
    },
    async (req) => s.snapshots.list(req.query),
  );

  app.get(
    '/api/v1/snapshots/:id',
    {
      config: { access: 'viewer' },
      schema: { tags, summary: 'Get a snapshot', params: IdParams, response: { 200: Snapshot } },
    },
    async (req) => s.snapshots.get(req.params.id),
  );

  app.get(
    '/api/v1/vms/:id/snapshots',
    {
      config: { access: 'viewer' },
      schema: {
        tags: ['vms', ...tags],
        summary: "List a VM's snapshots",
        params: IdParams,
        querystring: SnapshotListQuery.omit({ vm_id: true }),
        response: { 200: listOf(Snapshot) },
      },
    },
    async (req) => {
      await s.vms.getRow(req.params.id);
      return s.snapshots.list({ ...req.query, vm_id: req.params.id });
    },
  );

  app.post(
    '/api/v1/vms/:id/snapshots',
    {
      config: { access: 'operator', audit: 'snapshot.create' },
      schema: {
        tags: ['vms', ...tags],
        summary: 'Snapshot a running or paused VM',
        description:
          "The VM's host pauses it, writes its memory, device state and disk, and resumes it; the snapshot " +
          'is `creating` until then and the operation follows the work. Refused, with nothing recorded: a VM ' +
          'not running or paused (409 VM_INVALID_STATE), a VM with volumes (409 SNAPSHOT_UNSUPPORTED: volumes ' +
          'are not captured), a Diff where the VM does not run on Firecracker with dirty-page tracking ' +
          '(400 SNAPSHOT_TYPE_UNSUPPORTED), a taken name (409 NAME_TAKEN).',
        params: IdParams,
        body: SnapshotCreate,
        response: { 202: SnapshotActionResponse },
      },
    },
    async (req, reply) => {
      const out = await s.snapshots.create(req.params.id, req.body, actorName(req.principal));
      req.auditTarget = { type: 'snapshot', id: out.snapshot.id };
      return reply.status(202).send(out);
    },
  );

  app.delete(
    '/api/v1/snapshots/:id',
    {
      config: { access: 'operator', audit: 'snapshot.delete' },
      schema: {
        tags,
        summary: 'Delete a snapshot',
        description:
          'Its host removes the files; while the host is unreachable the snapshot stays `deleting` and goes once it is back. ' +
          '409 SNAPSHOT_IN_USE while a Diff builds on it, a VM is booting from it, or (as its host says) a VM ' +
          'restored from it maps its memory; 409 SNAPSHOT_NOT_READY while it is being taken.',
        params: IdParams,
        response: { 200: DeletedResponse },
      },
    },
    async (req) => {
      await s.snapshots.delete(req.params.id);
      return { id: req.params.id, deleted: true as const };
    },
  );

  app.post(
    '/api/v1/vms/:id/restore',
    {
      config: { access: 'operator', audit: 'vm.restore' },
      schema: {
        tags: ['vms', ...tags],
        summary: 'Restore a VM from one of its snapshots',
        description:
          'The VM (running, paused, stopped or failed) returns to the state the snapshot froze, and runs. The ' +
          "snapshot must be ready, of this VM (400 SNAPSHOT_MISMATCH otherwise: instantiate another VM's), on " +
          "the VM's host and of the VM's vCPU and memory (409 otherwise).",
        params: IdParams,
        body: VmRestore,
        response: { 202: VmActionResponse },
      },
    },
    async (req, reply) => {
      const out = await s.snapshots.restore(req.params.id, req.body.snapshot_id, actorName(req.principal));
      void s.reconciler.reconcile(req.params.id);
      return reply.status(202).send(out);
    },
  );

  app.post(
    '/api/v1/snapshots/:id/instantiate',
    {
      config: { access: 'operator', audit: 'snapshot.instantiate' },
      schema: {
        tags: [...tags, 'vms'],
        summary: 'Create a VM from a snapshot (a clone)',
        description:
          "A new VM with the snapshot's shape, images and guest configuration, on the same networks with new " +
          "MACs and addresses, booting from the snapshot's memory on the host that keeps its files. `warnings` " +
          'say what clones share with their source. 409 when the snapshot is not ready or a network of its VM is gone.',
        params: IdParams,
        body: SnapshotInstantiate,
        response: { 202: SnapshotInstantiateResponse },
      },
    },
    async (req, reply) => {
      const out = await s.snapshots.instantiate(req.params.id, req.body, actorName(req.principal));
      req.auditTarget = { type: 'vm', id: out.vm.id };
      void s.reconciler.reconcile(out.vm.id);
      return reply.status(202).send(out);
    },
  );
}
