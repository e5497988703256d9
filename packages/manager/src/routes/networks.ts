import {
  DeletedResponse,
  IdParams,
  listOf,
  Network,
  NetworkCreate,
  NetworkListQuery,
  NetworkPatch,
  PortForward,
  PortForwardCreate,
  VmPortForwardParams,
} from '@nqvm/api';
import { z } from 'zod';
import type { App } from '../http/app-type';
import type { Services } from '../services';

export function networkRoutes(app: App, s: Services): void {
  const tags = ['networks'];

  app.get(
    '/api/v1/networks',
    {
      config: { access: 'viewer' },
      schema: {
        tags,
        summary: 'List networks',
        querystring: NetworkListQuery,
        response: { 200: listOf(Network) },
      },
    },
    async (req) => s.networks.list(req.query),
  );

  app.post(
    '/api/v1/networks',
    {
      config: { access: 'admin', audit: 'network.create' },
      schema: {
        tags,
        summary: 'Create a network',
        description:
          'nat and isolated networks need a cidr no other network overlaps (409 NETWORK_OVERLAP) outside loopback, 0/8, link-local, multicast and class E (400 NETWORK_CIDR_RESERVED); the gateway defaults to its first host address. A bridge or uplink must be reported by a host (422 NETWORK_INTERFACE_NOT_FOUND); the network is available on those hosts (available_on) and its VMs are placed there. Hosts make the network when a VM on it is placed there.',
        body: NetworkCreate,
        response: { 201: Network },
      },
    },
    async (req, reply) => {
      const network = await s.networks.create(req.body);
      req.auditTarget = { type: 'network', id: network.id };
      return reply.status(201).send(network);
    },
  );

  app.get(
    '/api/v1/networks/:id',
    {
      config: { access: 'viewer' },
      schema: { tags, summary: 'Get a network', params: IdParams, response: { 200: Network } },
    },
    async (req) => s.networks.get(req.params.id),
  );

  app.patch(
    '/api/v1/networks/:id',
    {
      config: { access: 'admin', audit: 'network.update' },
      schema: {
        tags,
        summary: 'Rename a network or make it the default',
        params: IdParams,
        body: NetworkPatch,
        response: { 200: Network },
      },
    },
    async (req) => s.networks.patch(req.params.id, req.body),
  );

  app.delete(
    '/api/v1/networks/:id',
    {
      config: { access: 'admin', audit: 'network.delete' },
      schema: {
        tags,
        summary: 'Delete a network no NIC uses (409 NETWORK_IN_USE otherwise)',
        params: IdParams,
        response: { 200: DeletedResponse },
      },
    },
    async (req) => {
      await s.networks.delete(req.params.id);
      return { id: req.params.id, deleted: true as const };
    },
  );

  const pfTags = ['vms', 'networks'];

  app.get(
    '/api/v1/vms/:id/port-forwards',
    {
      config: { access: 'viewer' },
      schema: {
        tags: pfTags,
        summary: "List a VM's port forwards",
        params: IdParams,
        response: { 200: z.object({ items: z.array(PortForward) }) },
      },
    },
    async (req) => ({ items: await s.portForwards.list(req.params.id) }),
  );

  app.post(
    '/api/v1/vms/:id/port-forwards',
    {
      config: { access: 'operator', audit: 'vm.add_port_forward' },
      schema: {
        tags: pfTags,
        summary: 'Forward a host port to a port of the VM',
        description:
          "Opened on every address of the VM's host. 409 PORT_IN_USE when another forward holds the port there; a port the host already listens on fails on the host and shows as the VM's last_error.",
        params: IdParams,
        body: PortForwardCreate,
        response: { 201: PortForward },
      },
    },
    async (req, reply) => {
      const pf = await s.portForwards.create(req.params.id, req.body);
      void s.reconciler.reconcile(req.params.id);
      return reply.status(201).send(pf);
    },
  );

  app.delete(
    '/api/v1/vms/:id/port-forwards/:pf_id',
    {
      config: { access: 'operator', audit: 'vm.remove_port_forward' },
      schema: {
        tags: pfTags,
        summary: 'Remove a port forward',
        params: VmPortForwardParams,
        response: { 200: DeletedResponse },
      },
    },
    async (req) => {
      await s.portForwards.delete(req.params.id, req.params.pf_id);
      void s.reconciler.reconcile(req.params.id);
      return { id: req.params.pf_id, deleted: true as const };
    },
  );
}
