import fs from 'node:fs/promises';
import {
  BlobParams,
  DeletedResponse,
  DeleteImageQuery,
  IdParams,
  Image,
  ImageActionResponse,
  ImageCreate,
  ImageListQuery,
  ImagePatch,
  ImageUploadQuery,
  listOf,
  NqvmError,
} from '@nqvm/api';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { App } from '../http/app-type';
import type { Services } from '../services';
import { actorName } from './vms';

/**
 * The byte range a `Range` header asks for: null for the whole file (no header, a form this
 * server does not serve such as several ranges, or an If-Range that no longer matches), or
 * 'unsatisfiable'.
 */
export function parseRange(
  header: string | undefined,
  size: number,
): { start: number; end: number } | null | 'unsatisfiable' {
  const m = header ? /^bytes=(\d*)-(\d*)$/.exec(header.trim()) : null;
  if (!m || (m[1] === '' && m[2] === '')) return null;
  let start: number;
  let end: number;
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0) return 'unsatisfiable';
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
    if (m[2] !== '' && Number(m[2]) < start) return null;
  }
  if (start >= size) return 'unsatisfiable';
  return { start, end };
}

export function imageRoutes(app: App, s: Services): void {
  const tags = ['images'];

  app.get(
    '/api/v1/images',
    {
      config: { access: 'viewer' },
      schema: { tags, summary: 'List images', querystring: ImageListQuery, response: { 200: listOf(Image) } },
    },
    async (req) => s.images.list(req.query),
  );

  app.get(
    '/api/v1/images/:id',
    {
      config: { access: 'viewer' },
      schema: { tags, summary: 'Get an image', params: IdParams, response: { 200: Image } },
    },
    async (req) => s.images.get(req.params.id),
  );

  app.post(
    '/api/v1/images',
    {
      config: { access: 'operator', audit: 'image.create' },
      schema: {
        tags,
        summary: 'Import an image from a URL or an OCI registry, or register a host file',
        description:
          'url and oci sources answer 202 with the image (status importing) and the image.import ' +
          'operation doing the work; cancel it with POST /api/v1/operations/{id}/cancel. A failed or ' +
          'cancelled import leaves no image (its operation carries the error), nor does one whose ' +
          'manager stopped: the next manager start fails its operation and removes it. An OCI ' +
          'image becomes an ext4 rootfs; its registry password is used for this import only. ' +
          'A path (MANAGER_ALLOW_IMAGE_PATHS=true, under MANAGER_IMAGE_ROOT only) is hashed and ' +
          'registered in place: 201 with the ready image and no operation. A URL whose host is (or ' +
          'whose redirects or resolved addresses are) loopback, link-local, unspecified, multicast, ' +
          "reserved, the manager's machine or a registered host is refused with 400 URL_NOT_ALLOWED " +
          'unless NQVM_IMAGE_FETCH_ALLOW allows it. Bytes that are not an image of the kind fail with ' +
          '422 IMAGE_INVALID, naming what they are.',
        body: ImageCreate,
        response: { 201: ImageActionResponse, 202: ImageActionResponse },
      },
    },
    async (req, reply) => {
      const out = await s.images.create(req.body, actorName(req.principal));
      req.auditTarget = { type: 'image', id: out.image.id };
      return reply.status(out.operation ? 202 : 201).send(out);
    },
  );

  app.patch(
    '/api/v1/images/:id',
    {
      config: { access: 'operator', audit: 'image.update' },
      schema: {
        tags,
        summary: 'Rename an image, or make it the default of its kind',
        params: IdParams,
        body: ImagePatch,
        response: { 200: Image },
      },
    },
    async (req) => s.images.patch(req.params.id, req.body),
  );

  app.delete(
    '/api/v1/images/:id',
    {
      config: { access: 'operator', audit: 'image.delete' },
      schema: {
        tags,
        summary: 'Delete an image no VM, template or snapshot uses',
        description:
          '409 IMAGE_IN_USE lists the users. A default image is refused too unless force=true, ' +
          'since VMs and templates that name no image of its kind fall back to it. Its bytes ' +
          'are removed once no other image shares them.',
        params: IdParams,
        querystring: DeleteImageQuery,
        response: { 200: DeletedResponse },
      },
    },
    async (req) => {
      await s.images.delete(req.params.id, req.query.force === 'true');
      return { id: req.params.id, deleted: true as const };
    },
  );

  // Only this route takes a raw body, streamed to disk: its own scope has no other parser, so
  // no request body is ever buffered up to the image size limit.
  app.register(async (plugin) => {
    const scope = plugin.withTypeProvider<ZodTypeProvider>();
    scope.removeAllContentTypeParsers();
    // The handler reads req.raw itself; a stream as `body` would be walked by the NUL check.
    scope.addContentTypeParser('*', (_req, _payload, done) => done(null, undefined));
    scope.post(
      '/api/v1/images/upload',
      {
        bodyLimit: s.images.maxBytes,
        config: { access: 'operator', audit: 'image.upload' },
        schema: {
          tags,
          summary: 'Upload an image as the raw request body (Content-Type: application/octet-stream)',
          description:
            'The body is streamed to disk and hashed as it arrives (at most MANAGER_IMAGE_MAX_BYTES; ' +
            '413 beyond). The image (status importing) and its image.upload operation exist while ' +
            'bytes arrive; the operation shows progress from Content-Length. Blocks of zeros are ' +
            'stored as holes: stored_bytes is what a sparse image takes. Answers 201 once the ' +
            'image is ready. A sha256 that does not match answers 422 CHECKSUM_MISMATCH, bytes that ' +
            'are not an image of the kind 422 IMAGE_INVALID (naming what they are); any failure ' +
            'removes the image and its bytes.',
          querystring: ImageUploadQuery,
          response: { 201: ImageActionResponse },
        },
      },
      async (req, reply) => {
        const header = req.headers['content-length'];
        const contentLength = header !== undefined && /^\d+$/.test(header) ? Number(header) : null;
        try {
          const out = await s.images.upload(req.query, req.raw, contentLength, actorName(req.principal));
          req.auditTarget = { type: 'image', id: out.image.id };
          return reply.status(201).send(out);
        } catch (err) {
          // The client may still be sending: do not read the rest of a refused body.
          if (!req.raw.complete) reply.header('connection', 'close');
          throw err;
        }
      },
    );
  });

  app.get(
    '/api/v1/agent/images/:sha256',
    {
      config: { access: 'host' },
      schema: {
        tags: ['agent protocol'],
        summary: "An image's bytes by digest, for an agent's cache (Range supported; ETag is the digest)",
        params: BlobParams,
      },
    },
    async (req, reply) => {
      const { sha256 } = req.params;
      const fh = await fs.open((await s.images.fileOf(sha256)).path, 'r');
      try {
        const size = (await fh.stat()).size;
        const etag = `"${sha256}"`;
        reply
          .header('etag', etag)
          .header('accept-ranges', 'bytes')
          .header('cache-control', 'private, max-age=31536000, immutable')
          .type('application/octet-stream');
        if (req.headers['if-none-match'] === etag) {
          await fh.close();
          return reply.status(304).send();
        }
        const ifRange = req.headers['if-range'];
        const range = ifRange === undefined || ifRange === etag ? parseRange(req.headers.range, size) : null;
        if (range === 'unsatisfiable') {
          reply.header('content-range', `bytes */${size}`);
          throw new NqvmError('RANGE_NOT_SATISFIABLE', `the blob has ${size} bytes`, { size });
        }
        const { start, end } = range ?? { start: 0, end: size - 1 };
        if (range) reply.status(206).header('content-range', `bytes ${start}-${end}/${size}`);
        reply.header('content-length', String(Math.max(0, end - start + 1)));
        // The stream owns the descriptor from here and closes it when done.
        return reply.send(fh.createReadStream({ start, end: Math.max(start, end), autoClose: true }));
      } catch (err) {
        await fh.close().catch(() => undefined);
        throw err;
      }
    },
  );
}
