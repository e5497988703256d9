import {
  AgentHeartbeat,
  AgentHeartbeatResponse,
  AgentRegister,
  AgentRegistered,
  DeletedResponse,
  Host,
  HostListQuery,
  IdParams,
  JoinToken,
  JoinTokenCreate,
  JoinTokenCreated,
  ListQuery,
  listOf,
  Operation,
  type VmState,
} from '@nqvm/api';
import { z } from 'zod';
import type { App } from '../http/app-type';
import type { Services } from '../services';
import { canTransition } from '../vms/state-machine';
import { actorName } from './vms';

export function hostRoutes(
  app: App,
  s: Services,
  onHeartbeat?: (hostId: string, hb: z.infer<typeof AgentHeartbeat>) => Promise<void>,
): void {
  const tags = ['hosts'];

  app.get(
    '/api/v1/hosts',
    {
      config: { access: 'viewer' },
      schema: { tags, summary: 'List hosts', querystring: HostListQuery, response: { 200: listOf(Host) } },
    },
    async (req) => s.hosts.list(req.query),
  );
  app.get(
    '/api/v1/hosts/:id',
    {
      config: { access: 'viewer' },
      schema: { tags, summary: 'Get a host', params: IdParams, response: { 200: Host } },
    },
    async (req) => s.hosts.get(req.params.id),
  );
  app.delete(
    '/api/v1/hosts/:id',
    {
      config: { access: 'admin', audit: 'host.delete' },
      schema: {
        tags,
        summary: 'Remove a host that has no VMs',
        params: IdParams,
        response: { 200: DeletedResponse },
      },
    },
    async (req) => {
      await s.hosts.remove(req.params.id);
      return { id: req.params.id, deleted: true as const };
    },
  );
  app.post(
    '/api/v1/hosts/:id/revoke-credential',
    {
      config: { access: 'admin', audit: 'host.revoke_credential' },
      schema: {
        tags,
        summary: "Revoke a host's credential; the agent must join again",
        params: IdParams,
        response: { 200: Host },
      },
    },
    async (req) => s.hosts.revokeCredential(req.params.id),
  );

  for (const [verb, schedulable, summary] of [
    ['cordon', false, 'Stop placing new VMs on this host'],
    ['uncordon', true, 'Place new VMs on this host again'],
  ] as const) {
    app.post(
      `/api/v1/hosts/:id/${verb}`,
      {
        config: { access: 'admin', audit: `host.${verb}` },
        schema: { tags, summary, params: IdParams, response: { 200: Host } },
      },
      async (req) => s.hosts.setSchedulable(req.params.id, schedulable),
    );
  }
  app.post(
    '/api/v1/hosts/:id/drain',
    {
      config: { access: 'admin', audit: 'host.drain' },
      schema: {
        tags,
        summary: 'Cordon the host and stop its VMs; mode=release also hands them back to the scheduler',
        description:
          'mode=stop (default) stops every VM (graceful, then forced after timeout_s) and keeps it on the host. ' +
          'mode=release also removes each stopped VM from the host (its disk there is deleted) and returns its ' +
          'capacity: its next start places it on any host, with a fresh disk from its images.',
        params: IdParams,
        body: z
          .strictObject({
            timeout_s: z.number().int().min(1).max(3600).default(30),
            mode: z.enum(['stop', 'release']).default('stop'),
          })
          .nullish(),
        response: {
          200: z.object({ host: Host, operations: z.array(Operation), released: z.array(z.string()) }),
        },
      },
    },
    async (req) => {
      await s.hosts.setSchedulable(req.params.id, false);
      const release = req.body?.mode === 'release';
      const operations = [];
      const released: string[] = [];
      for (const vm of await s.store.db
        .selectFrom('vms')
        .select(['id', 'state'])
        .where('host_id', '=', req.params.id)
        .execute()) {
        if (canTransition('stop', vm.state as VmState) && vm.state !== 'failed') {
          const out = await s.vms.act(vm.id, 'stop', actorName(req.principal), {
            force: false,
            timeout_s: req.body?.timeout_s ?? 30,
            release,
          });
          operations.push(out.operation);
          void s.reconciler.reconcile(vm.id);
        } else if (release && (vm.state === 'stopped' || vm.state === 'failed')) {
          await s.reconciler.release(vm.id);
          released.push(vm.id);
        }
      }
      return { host: await s.hosts.get(req.params.id), operations, released };
    },
  );

  app.get(
    '/api/v1/join-tokens',
    {
      config: { access: 'admin' },
      schema: {
        tags,
        summary: 'List join tokens',
        querystring: ListQuery,
        response: { 200: listOf(JoinToken) },
      },
    },
    async (req) => s.hosts.listJoinTokens(req.query),
  );
  app.post(
    '/api/v1/join-tokens',
    {
      config: { access: 'admin', audit: 'join_token.create' },
      schema: {
        tags,
        summary: 'Create a join token for a new agent (shown once)',
        body: JoinTokenCreate,
        response: { 201: JoinTokenCreated },
      },
    },
    async (req, reply) => {
      const out = await s.hosts.createJoinToken(req.body, actorName(req.principal));
      req.auditTarget = { type: 'join_token', id: out.id };
      return reply.status(201).send(out);
    },
  );
  app.delete(
    '/api/v1/join-tokens/:id',
    {
      config: { access: 'admin', audit: 'join_token.revoke' },
      schema: { tags, summary: 'Revoke a join token', params: IdParams, response: { 200: JoinToken } },
    },
    async (req) => s.hosts.revokeJoinToken(req.params.id),
  );

  const agentTags = ['agent protocol'];
  app.post(
    '/api/v1/agent/register',
    {
      config: { access: 'join', audit: 'host.register' },
      schema: {
        tags: agentTags,
        summary: 'An agent joins with a join token and receives its host credential',
        body: AgentRegister,
        response: { 201: AgentRegistered },
      },
    },
    async (req, reply) => {
      if (req.principal.kind !== 'join') throw new Error('unreachable: access checked');
      const out = await s.hosts.register(req.body, req.principal.joinTokenId);
      req.auditTarget = { type: 'host', id: out.host_id };
      return reply.status(201).send({ ...out, manager_public_key: s.managerKey.publicKeyPem });
    },
  );
  app.post(
    '/api/v1/agent/heartbeat',
    {
      config: { access: 'host', audit: false },
      schema: {
        tags: agentTags,
        summary: 'Agent heartbeat with capacity and VM states',
        body: AgentHeartbeat,
        response: { 200: AgentHeartbeatResponse },
      },
    },
    async (req) => {
      if (req.principal.kind !== 'host') throw new Error('unreachable: access checked');
      await s.hosts.heartbeat(req.principal.hostId, req.body);
      await onHeartbeat?.(req.principal.hostId, req.body);
      return { heartbeat_interval_s: s.hosts.heartbeatIntervalS };
    },
  );
  app.post(
    '/api/v1/agent/rotate-credential',
    {
      config: { access: 'host', audit: 'host.rotate_credential' },
      schema: {
        tags: agentTags,
        summary: 'Replace this host credential; the old one stops working',
        response: { 200: z.object({ credential: z.string() }) },
      },
    },
    async (req) => {
      if (req.principal.kind !== 'host') throw new Error('unreachable: access checked');
      req.auditTarget = { type: 'host', id: req.principal.hostId };
      return { credential: await s.hosts.rotateCredential(req.principal.hostId) };
    },
  );
}
