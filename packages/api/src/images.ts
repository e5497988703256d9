/**
 * The image registry's schemas: kernels, initrds and root filesystems, stored by content
 * (sha256) on the manager and fetched by agents by digest.
 */
import { z } from 'zod';
import { ListQuery, Name, Operation, Timestamp, Uuid } from './schemas';

export const ImageKind = z.enum(['kernel', 'initrd', 'rootfs']);
export type ImageKind = z.infer<typeof ImageKind>;

/**
 * `importing` while bytes arrive or a source is converted, then `ready`. A failed or cancelled
 * import leaves no image: its operation carries the error.
 */
export const ImageStatus = z.enum(['importing', 'ready']);
export type ImageStatus = z.infer<typeof ImageStatus>;

export const Sha256 = z.string().regex(/^[a-f0-9]{64}$/, '64 lowercase hexadecimal digits');

/** Where an image came from; credentials are never part of it. */
export const ImageSource = z.object({
  type: z.enum(['upload', 'url', 'oci', 'path']),
  url: z.string().optional(),
  reference: z.string().optional(),
  path: z.string().optional(),
});
export type ImageSource = z.infer<typeof ImageSource>;

/** The parts of an OCI image config a microVM can use later (what `docker inspect` shows). */
export const OciImageConfig = z.object({
  entrypoint: z.array(z.string()).nullable(),
  cmd: z.array(z.string()).nullable(),
  env: z.array(z.string()),
  working_dir: z.string().nullable(),
  user: z.string().nullable(),
  exposed_ports: z.array(z.string()),
});
export type OciImageConfig = z.infer<typeof OciImageConfig>;

export const ImageMetadata = z.object({
  /** Kernels imported as a bzImage: the ELF vmlinux extracted for Firecracker, stored as a blob. */
  vmlinux: z.object({ sha256: Sha256, size_bytes: z.number().int() }).optional(),
  /** ext4 root filesystems: whether /usr/bin/cloud-init exists in the image. */
  has_cloud_init: z.boolean().optional(),
  oci: z.object({ reference: z.string(), manifest_digest: z.string(), config: OciImageConfig }).optional(),
  /**
   * Kernels whose drivers are modules: the initrd a VM naming this kernel and no initrd boots
   * with (the built-in kernel's is the built-in initrd); without one it could not mount its root.
   */
  companion_initrd_id: Uuid.optional(),
});
export type ImageMetadata = z.infer<typeof ImageMetadata>;

export const Image = z.object({
  id: Uuid,
  name: z.string(),
  kind: ImageKind,
  status: ImageStatus,
  sha256: Sha256.nullable(),
  size_bytes: z.number().int().nullable().describe('length of the image file (its apparent size)'),
  stored_bytes: z
    .number()
    .int()
    .nullable()
    .describe(
      "bytes it takes on the manager's disk (allocated blocks): zero blocks are stored as holes, " +
        'so a sparse image (a mostly empty ext4) takes less than size_bytes; null while importing',
    ),
  /** kernel: bzimage | vmlinux; initrd: cpio, cpio.gz, cpio.zst...; rootfs: ext4 | qcow2 | raw. */
  format: z.string().nullable(),
  source: ImageSource,
  is_default: z.boolean(),
  metadata: ImageMetadata,
  created_at: Timestamp,
  updated_at: Timestamp,
});
export type Image = z.infer<typeof Image>;

export const ImageListQuery = ListQuery.extend({
  kind: ImageKind.optional(),
  status: ImageStatus.optional(),
  name: z.string().max(63).optional().describe('case-sensitive name prefix'),
});

export const ImagePatch = z.strictObject({
  name: Name.optional(),
  is_default: z.boolean().optional().describe('true makes it the default of its kind (ready images only)'),
});
export type ImagePatch = z.infer<typeof ImagePatch>;

export const DeleteImageQuery = z.object({
  force: z
    .enum(['true', 'false'])
    .optional()
    .describe(
      'delete a default image (VMs and templates that name no image of its kind lose their fallback)',
    ),
});

export const ImageUploadQuery = z.object({
  name: Name,
  kind: ImageKind,
  sha256: Sha256.optional().describe('expected digest; a mismatch answers 422 and keeps nothing'),
});

const HttpUrl = z
  .url({ protocol: /^https?$/ })
  .max(4096)
  .refine((u) => {
    const p = new URL(u);
    return p.username === '' && p.password === '';
  }, 'credentials in the URL are not accepted');

export const ImageSourceInput = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('url'), url: HttpUrl, sha256: Sha256.optional() }),
  z.strictObject({
    type: z.literal('oci'),
    reference: z.string().min(1).max(512).describe('e.g. docker.io/library/alpine:3.20'),
    username: z.string().max(256).optional(),
    password: z.string().max(8192).optional().describe('used for this import only; never stored'),
    plain_http: z.boolean().optional().describe('talk HTTP, not HTTPS, to the registry'),
  }),
  z.strictObject({
    type: z.literal('path'),
    path: z.string().min(1).max(4096).describe('a file under MANAGER_IMAGE_ROOT'),
  }),
]);
export type ImageSourceInput = z.infer<typeof ImageSourceInput>;

export const ImageCreate = z.strictObject({ name: Name, kind: ImageKind, source: ImageSourceInput });
export type ImageCreate = z.infer<typeof ImageCreate>;

/** An image and the operation doing (or that did) its work; null for path registrations. */
export const ImageActionResponse = z.object({ image: Image, operation: Operation.nullable() });
export type ImageActionResponse = z.infer<typeof ImageActionResponse>;

export const BlobParams = z.object({ sha256: Sha256 });
