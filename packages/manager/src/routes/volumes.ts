import {
  DeletedResponse,
  IdParams,
  listOf,
  Vm,
  VmVolumeParams,
  Volume,
  VolumeAttach,
  VolumeCreate,
  VolumeListQuery,
  VolumePatch,
} from '@nqvm/api';
import type { App } from '../http/app-type';
import type { Services } from '../services';
import { actorName } from './vms';

export function volumeRoutes(app: App, s: Services): void {
  const tags = ['volumes'];

  app.get(
    '/api/v1/volumes',
    {
      config: { access: 'viewer' },
      schema: {
        tags,
        summary: 'List volumes',
        querystring: VolumeListQuery,
        response: { 200: listOf(Volume) },
      },
    },
    async (req) => s.volumes.list(req.query),
  );

  app.post(
    '/api/v1/volumes',
    {
      config: { access: 'operator', audit: 'volume.create' },
      schema: {
        tags,
        summary: 'Create a volume',
        description:
          'Records the volume; the host a VM using it is first placed on makes the file (sparse, ext4 when asked), and keeps it.',
        body: VolumeCreate,
        response: { 201: Volume },
      },
    },
    async (req, reply) => {
      const volume = await s.volumes.create(req.body, actorName(req.principal));
      req.auditTarget = { type: 'volume', id: volume.id };
      return reply.status(201).send(volume);
    },
  );

  app.get(
    '/api/v1/volumes/:id',
    {
      config: { access: 'viewer' },
      schema: { tags, summary: 'Get a volume', params: IdParams, response: { 200: Volume } },
    },
    async (req) => s.volumes.get(req.params.id),
  );

  app.patch(
    '/api/v1/volumes/:id',
    {
      config: { access: 'operator', audit: 'volume.update' },
      schema: {
        tags,
        summary: 'Rename, set delete_with_vm, or grow a detached volume',
        params: IdParams,
        body: VolumePatch,
        response: { 200: Volume },
      },
    },
    async (req) => s.volumes.patch(req.params.id, req.body),
  );

  app.delete(
    '/api/v1/volumes/:id',
    {
      config: { access: 'operator', audit: 'volume.delete' },
      schema: {
        tags,
        summary: 'Delete a detached volume (409 while attached; 503 while its host does not answer)',
        params: IdParams,
        response: { 200: DeletedResponse },
      },
    },
    async (req) => {
      await s.volumes.delete(req.params.id);
      return { id: req.params.id, deleted: true as const };
    },
  );

  app.post(
    '/api/v1/vms/:id/volumes',
    {
      config: { access: 'operator', audit: 'vm.attach_volume' },
      schema: {
        tags: ['vms', ...tags],
        summary: 'Attach a volume to a stopped VM',
        params: IdParams,
        body: VolumeAttach,
        response: { 200: Vm },
      },
    },
    async (req) => {
      const vm = await s.volumes.attach(req.params.id, req.body.volume_id);
      void s.reconciler.reconcile(vm.id);
      return vm;
    },
  );

  app.delete(
    '/api/v1/vms/:id/volumes/:volume_id',
    {
      config: { access: 'operator', audit: 'vm.detach_volume' },
      schema: {
        tags: ['vms', ...tags],
        summary: 'Detach a volume from a stopped VM',
        params: VmVolumeParams,
        response: { 200: Vm },
      },
    },
    async (req) => {
      const vm = await s.volumes.detach(req.params.id, req.params.volume_id);
      void s.reconciler.reconcile(vm.id);
      return vm;
    },
  );
}
