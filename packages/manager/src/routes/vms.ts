import {
  DeleteVmQuery,
  ExecRequest,
  ExecResult,
  IdParams,
  listOf,
  NqvmError,
  Vm,
  VmActionResponse,
  VmCreate,
  VmListQuery,
  VmMetrics,
  VmPatch,
  VmStop,
} from '@nqvm/api';
import { z } from 'zod';
import type { Principal } from '../auth/principal';
import { actorOf } from '../auth/principal';
import type { App } from '../http/app-type';
import type { Services } from '../services';
import type { VmAction } from '../vms/state-machine';
import { execInVm } from '../vms/vm-exec';

export function actorName(p: Principal): string | null {
  const a = actorOf(p);
  return a.name ?? a.id;
}

export function vmRoutes(app: App, s: Services): void {
  const tags = ['vms'];

  app.get(
    '/api/v1/vms',
    {
      config: { access: 'viewer' },
      schema: { tags, summary: 'List VMs', querystring: VmListQuery, response: { 200: listOf(Vm) } },
    },
    async (req) => s.vms.list(req.query),
  );

  app.post(
    '/api/v1/vms',
    {
      config: { access: 'operator', audit: 'vm.create' },
      schema: {
        tags,
        summary: 'Create a VM (and start it unless start=false)',
        description: 'Answers 202 with the VM and the operation that places and boots it.',
        body: VmCreate,
        response: { 202: VmActionResponse },
      },
    },
    async (req, reply) => {
      const out = await s.vms.create(req.body, actorName(req.principal));
      req.auditTarget = { type: 'vm', id: out.vm.id };
      void s.reconciler.reconcile(out.vm.id);
      return reply.status(202).send(out);
    },
  );

  app.get(
    '/api/v1/vms/:id',
    {
      config: { access: 'viewer' },
      schema: { tags, summary: 'Get a VM', params: IdParams, response: { 200: Vm } },
    },
    async (req) => s.vms.get(req.params.id),
  );

  app.patch(
    '/api/v1/vms/:id',
    {
      config: { access: 'operator', audit: 'vm.update' },
      schema: {
        tags,
        summary: 'Rename, relabel, change restart policy; vCPU/memory only while stopped',
        params: IdParams,
        body: VmPatch,
        response: { 200: Vm },
      },
    },
    async (req) => s.vms.patch(req.params.id, req.body),
  );

  app.delete(
    '/api/v1/vms/:id',
    {
      config: { access: 'operator', audit: 'vm.delete' },
      schema: {
        tags,
        summary:
          'Delete a VM (409 while it runs, unless force=true); delete_volumes=true deletes its volumes too',
        params: IdParams,
        querystring: DeleteVmQuery,
        response: { 202: VmActionResponse },
      },
    },
    async (req, reply) => {
      const out = await s.vms.delete(
        req.params.id,
        req.query.force === 'true',
        actorName(req.principal),
        req.query.delete_volumes === 'true',
      );
      // A VM without a host is gone already: its volumes to delete can go now.
      s.volumes.sweep().catch((err) => req.log.warn({ err }, 'volume sweep failed; the loop retries'));
      return reply.status(202).send(out);
    },
  );

  const action = (name: VmAction, summary: string, method: 'post' | 'patch' = 'post') => {
    // Fastify validates a missing body as null: the stop body is optional.
    const body = name === 'stop' ? { body: VmStop.nullish() } : {};
    app[method](
      `/api/v1/vms/:id/${name}`,
      {
        config: { access: 'operator', audit: `vm.${name}` },
        schema: { tags, summary, params: IdParams, ...body, response: { 202: VmActionResponse } },
      },
      async (req, reply) => {
        const params = name === 'stop' ? VmStop.parse(req.body ?? {}) : {};
        const out = await s.vms.act(req.params.id, name, actorName(req.principal), params);
        void s.reconciler.reconcile(req.params.id);
        return reply.status(202).send(out);
      },
    );
  };
  action('start', 'Start a stopped VM');
  action('stop', 'Stop a VM (graceful, then forced after timeout_s; force=true skips the guest)');
  action('pause', 'Pause a running VM');
  action('resume', 'Resume a paused VM');
  action('reboot', 'Reboot a running VM');
  action('pause', 'Pause a running VM (reference form)', 'patch');
  action('resume', 'Resume a paused VM (reference form)', 'patch');
}

export function vmConsoleRoutes(app: App, s: Services): void {
  app.get(
    '/api/v1/vms/:id/console',
    {
      config: { access: 'viewer' },
      schema: {
        tags: ['vms'],
        summary: "The VM's recent serial console output (raw bytes)",
        params: IdParams,
        querystring: z.object({
          tail: z.coerce
            .number()
            .int()
            .min(1)
            .max(1024 * 1024)
            .default(65_536),
        }),
      },
    },
    async (req, reply) => {
      const vm = await s.vms.getRow(req.params.id);
      if (!vm.host_id)
        throw new NqvmError('VM_INVALID_STATE', 'the VM has not been placed on a host yet', {
          state: vm.state,
        });
      const host = await s.hosts.getRow(vm.host_id);
      const bytes = await s.agents.consoleTail(host.address, vm.id, req.query.tail);
      return reply.type('application/octet-stream').send(bytes);
    },
  );

  app.post(
    '/api/v1/vms/:id/exec',
    {
      config: { access: 'operator', audit: 'vm.exec' },
      schema: {
        tags: ['vms'],
        summary: 'Run a command in a running VM',
        description:
          "Through nqvm's guest agent (a host-to-guest channel: nothing listens on the guest's network); answers " +
          'once the command ended, or was killed (signal 9, timed_out) after timeout_s. Output is UTF-8 text, ' +
          '4 MiB per stream at most (truncated). 400 EXEC_FAILED when the command cannot start; 409 ' +
          'VM_INVALID_STATE when the VM does not run, GUEST_AGENT_UNAVAILABLE when its guest runs no guest agent.',
        params: IdParams,
        body: ExecRequest,
        response: { 200: ExecResult },
      },
    },
    async (req) => execInVm(s, req.params.id, req.body),
  );

  app.get(
    '/api/v1/vms/:id/metrics',
    {
      config: { access: 'viewer' },
      schema: {
        tags: ['vms'],
        summary: "The VMM's own metrics for a running VM (Firecracker's metrics; null for QEMU)",
        params: IdParams,
        response: { 200: VmMetrics },
      },
    },
    async (req) => {
      const vm = await s.vms.getRow(req.params.id);
      if (!vm.host_id)
        throw new NqvmError('VM_INVALID_STATE', 'the VM has not been placed on a host yet', {
          state: vm.state,
        });
      const host = await s.hosts.getRow(vm.host_id);
      return s.agents.metrics(host.address, vm.id);
    },
  );
}
