import {
  DeletedResponse,
  IdParams,
  listOf,
  Template,
  TemplateCreate,
  TemplateInstantiate,
  TemplateListQuery,
  TemplatePatch,
  VmActionResponse,
  VmToTemplate,
} from '@nqvm/api';
import type { App } from '../http/app-type';
import type { Services } from '../services';
import { actorName } from './vms';

export function templateRoutes(app: App, s: Services): void {
  const tags = ['templates'];

  app.get(
    '/api/v1/templates',
    {
      config: { access: 'viewer' },
      schema: {
        tags,
        summary: 'List templates',
        querystring: TemplateListQuery,
        response: { 200: listOf(Template) },
      },
    },
    async (req) => s.templates.list(req.query),
  );

  app.post(
    '/api/v1/templates',
    {
      config: { access: 'operator', audit: 'template.create' },
      schema: {
        tags,
        summary: 'Create a template',
        description:
          'A named VM shape. Images and networks it names must exist (400 naming the field). ' +
          'A guest password is kept only as its hash and never returned.',
        body: TemplateCreate,
        response: { 201: Template },
      },
    },
    async (req, reply) => {
      const template = await s.templates.create(req.body, actorName(req.principal));
      req.auditTarget = { type: 'template', id: template.id };
      return reply.status(201).send(template);
    },
  );

  app.get(
    '/api/v1/templates/:id',
    {
      config: { access: 'viewer' },
      schema: { tags, summary: 'Get a template', params: IdParams, response: { 200: Template } },
    },
    async (req) => s.templates.get(req.params.id),
  );

  app.patch(
    '/api/v1/templates/:id',
    {
      config: { access: 'operator', audit: 'template.update' },
      schema: {
        tags,
        summary: 'Rename a template, change its description, or replace its spec',
        params: IdParams,
        body: TemplatePatch,
        response: { 200: Template },
      },
    },
    async (req) => s.templates.patch(req.params.id, req.body),
  );

  app.delete(
    '/api/v1/templates/:id',
    {
      config: { access: 'operator', audit: 'template.delete' },
      schema: {
        tags,
        summary: 'Delete a template (VMs made from it are not affected)',
        params: IdParams,
        response: { 200: DeletedResponse },
      },
    },
    async (req) => {
      await s.templates.delete(req.params.id);
      return { id: req.params.id, deleted: true as const };
    },
  );

  app.post(
    '/api/v1/templates/:id/instantiate',
    {
      config: { access: 'operator', audit: 'template.instantiate' },
      schema: {
        tags: [...tags, 'vms'],
        summary: 'Create a VM from a template',
        description:
          'The template spec with the overrides applied (labels merged), created as POST /api/v1/vms ' +
          'does: 202 with the VM and its operation. Invalid overrides: 400, nothing created.',
        params: IdParams,
        body: TemplateInstantiate,
        response: { 202: VmActionResponse },
      },
    },
    async (req, reply) => {
      const out = await s.templates.instantiate(
        req.params.id,
        req.body.name,
        req.body.overrides,
        actorName(req.principal),
      );
      req.auditTarget = { type: 'vm', id: out.vm.id };
      void s.reconciler.reconcile(out.vm.id);
      return reply.status(202).send(out);
    },
  );

  app.post(
    '/api/v1/vms/:id/template',
    {
      config: { access: 'operator', audit: 'template.create' },
      schema: {
        tags: ['vms', ...tags],
        summary: "Make a template of a VM's spec",
        description: "The VM's size, images, networks (not its addresses) and guest configuration.",
        params: IdParams,
        body: VmToTemplate,
        response: { 201: Template },
      },
    },
    async (req, reply) => {
      const template = await s.templates.fromVm(
        req.params.id,
        req.body.name,
        req.body.description ?? null,
        actorName(req.principal),
      );
      req.auditTarget = { type: 'template', id: template.id };
      return reply.status(201).send(template);
    },
  );
}
