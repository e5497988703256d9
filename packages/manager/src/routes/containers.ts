import {
  Container,
  ContainerActionResponse,
  ContainerCreate,
  ContainerExec,
  ContainerExecResult,
  ContainerListQuery,
  ContainerLogsQuery,
  ContainerStats,
  ContainerStop,
  DeleteVmQuery,
  IdParams,
  listOf,
} from '@nqvm/api';
import type { App } from '../http/app-type';
import type { Services } from '../services';
import { actorName } from './vms';

export function containerRoutes(app: App, s: Services): void {
  const tags = ['containers'];

  app.get(
    '/api/v1/containers',
    {
      config: { access: 'viewer' },
      schema: {
        tags,
        summary: 'List containers',
        querystring: ContainerListQuery,
        response: { 200: listOf(Container) },
      },
    },
    async (req) => s.containers.list(req.query),
  );

  app.post(
    '/api/v1/containers',
    {
      config: { access: 'operator', audit: 'container.create' },
      schema: {
        tags,
        summary: 'Run an OCI image as its own microVM',
        description:
          'Checked at once, recording nothing when a check fails: the name is free among containers and VMs ' +
          "(409 NAME_TAKEN), the network is known (400), each host port is free (409 PORT_IN_USE), nqvm's " +
          'container init and the default kernel are registered (409 CONTAINER_INIT_MISSING), and the image ' +
          'reference resolves at its registry to a linux/amd64 image with something to run: 400 for an invalid ' +
          'reference, 422 REGISTRY_IMAGE_NOT_FOUND, REGISTRY_AUTH_FAILED, IMAGE_UNSUPPORTED, ' +
          'CONTAINER_COMMAND_MISSING, 502 REGISTRY_UNREACHABLE, REGISTRY_ERROR. Then answers 202 with the ' +
          '`container.create` operation, which pulls the image (once per manifest digest: a later container ' +
          'of it reuses the root file system), creates the VM, its port forwards, and starts it (it succeeds ' +
          'once the process started, or already ran). A failure there leaves no VM behind: the operation ' +
          'fails and the container stays `failed` with `last_error` until it is deleted. ' +
          '`registry_credentials` serve this pull only and are stored nowhere.',
        body: ContainerCreate,
        response: { 202: ContainerActionResponse },
      },
    },
    async (req, reply) => {
      const out = await s.containers.create(req.body, actorName(req.principal));
      req.auditTarget = { type: 'container', id: out.container.id };
      return reply.status(202).send(out);
    },
  );

  app.get(
    '/api/v1/containers/:id',
    {
      config: { access: 'viewer' },
      schema: { tags, summary: 'Get a container', params: IdParams, response: { 200: Container } },
    },
    async (req) => s.containers.get(req.params.id),
  );

  app.delete(
    '/api/v1/containers/:id',
    {
      config: { access: 'operator', audit: 'container.delete' },
      schema: {
        tags,
        summary: 'Delete a container and its VM (409 while it runs, unless force=true)',
        description:
          'Its VM and port forwards go (the operation follows the VM delete) and the container goes with ' +
          'its VM. A failed container goes at once; one being created has its create cancelled first.',
        params: IdParams,
        querystring: DeleteVmQuery.pick({ force: true }),
        response: { 202: ContainerActionResponse },
      },
    },
    async (req, reply) => {
      const out = await s.containers.delete(
        req.params.id,
        req.query.force === 'true',
        actorName(req.principal),
      );
      void s.reconciler.reconcile(req.params.id);
      return reply.status(202).send(out);
    },
  );

  const action = (
    name: 'start' | 'stop' | 'restart' | 'pause' | 'resume',
    summary: string,
    description?: string,
  ) => {
    // Fastify validates a missing body as null: the stop body is optional.
    const body = name === 'stop' ? { body: ContainerStop.nullish() } : {};
    app.post(
      `/api/v1/containers/:id/${name}`,
      {
        config: { access: 'operator', audit: `container.${name}` },
        schema: {
          tags,
          summary,
          ...(description ? { description } : {}),
          params: IdParams,
          ...body,
          response: { 202: ContainerActionResponse },
        },
      },
      async (req, reply) => {
        let params = {};
        if (name === 'stop') {
          const { timeout_s } = ContainerStop.parse(req.body ?? {});
          // 0: no grace at all; the VM (and the process with it) is stopped at once.
          params = { force: timeout_s === 0, timeout_s: Math.max(1, timeout_s) };
        }
        const out = await s.containers.act(req.params.id, name, actorName(req.principal), params);
        void s.reconciler.reconcile(req.params.id);
        return reply.status(202).send(out);
      },
    );
  };
  action('start', 'Start a created or exited container (a new run of its process)');
  action(
    'stop',
    'Stop a container',
    'The process gets SIGTERM through the guest agent and SIGKILL after timeout_s; then its VM powers off. timeout_s=0 stops the VM at once.',
  );
  action(
    'restart',
    'Restart a container',
    "A running container's VM reboots (its init runs the process anew: a new process, restart_count unchanged); " +
      'an exited or failed one starts. Answers the VM reboot or start operation.',
  );
  action('pause', 'Pause a running container (its VM is paused)');
  action('resume', 'Resume a paused container');

  app.get(
    '/api/v1/containers/:id/logs',
    {
      config: { access: 'viewer' },
      schema: {
        tags,
        summary: "The container's output (text/plain)",
        description:
          'Lines `<RFC 3339 time> <stdout|stderr> <text>` (the text alone with timestamps=false), from the agent ' +
          "of the container's host. follow=true keeps the response open with each new line until the container's " +
          'VM is down or the client leaves. A container never placed on a host answers an empty body.',
        params: IdParams,
        querystring: ContainerLogsQuery,
      },
    },
    async (req, reply) => {
      const q = req.query;
      const ac = new AbortController();
      // The client left (or the response ended): the agent's stream is not needed any more.
      reply.raw.once('close', () => ac.abort(new Error('the client went away')));
      const body = await s.containers.logs(
        req.params.id,
        { tail: q.tail, follow: q.follow === 'true', timestamps: q.timestamps === 'true', stream: q.stream },
        ac.signal,
      );
      const headers = { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' };
      if (!body) return reply.status(200).headers(headers).send('');
      // Hijacked to send the head at once: a followed stream may stay quiet for a long time.
      reply.hijack();
      reply.raw.writeHead(200, headers);
      reply.raw.flushHeaders();
      body.on('error', () => reply.raw.destroy());
      body.pipe(reply.raw);
    },
  );

  app.post(
    '/api/v1/containers/:id/exec',
    {
      config: { access: 'operator', audit: 'container.exec' },
      schema: {
        tags,
        summary: "Run a command in a running container's environment",
        description:
          "As POST /api/v1/vms/{id}/exec, with the container's environment, user and working dir unless the " +
          'request sets them; answers once the command ended (or was killed after timeout_s).',
        params: IdParams,
        body: ContainerExec,
        response: { 200: ContainerExecResult },
      },
    },
    async (req) => s.containers.exec(req.params.id, req.body),
  );

  app.get(
    '/api/v1/containers/:id/stats',
    {
      config: { access: 'viewer' },
      schema: {
        tags,
        summary: "The container's VMM process and guest figures",
        description: 'host and guest are null while its VM runs nowhere.',
        params: IdParams,
        response: { 200: ContainerStats },
      },
    },
    async (req) => s.containers.stats(req.params.id),
  );
}
