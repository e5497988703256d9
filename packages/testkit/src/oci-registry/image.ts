/**
 * Builds OCI images in memory for tests and benchmarks: tar layers from a list of entries,
 * compressed with gzip, zstd or not at all, an image config, a manifest and an index.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { pack } from 'tar-stream';

export const OCI_MEDIA_TYPES = {
  index: 'application/vnd.oci.image.index.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layerTar: 'application/vnd.oci.image.layer.v1.tar',
  layerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  layerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;

/** One blob as a registry stores it. */
export interface OciBlob {
  mediaType: string;
  digest: string;
  size: number;
  data: Buffer;
}

/** A tar entry; `name` is written as given (a test may put `../x` or `/x` on purpose). */
export type LayerEntry = {
  name: string;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: Date;
} & (
  | { type: 'file'; content: string | Buffer }
  | { type: 'directory' }
  | { type: 'symlink'; linkname: string }
  | { type: 'link'; linkname: string }
  | { type: 'character-device' | 'block-device'; devmajor: number; devminor: number }
  | { type: 'fifo' }
);

export type LayerCompression = 'gzip' | 'zstd' | 'none';

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface ImageConfigInput {
  Entrypoint?: string[];
  Cmd?: string[];
  Env?: string[];
  WorkingDir?: string;
  User?: string;
  ExposedPorts?: Record<string, object>;
}

/** OCI media types, or Docker's (v2 schema 2 manifest, manifest list, container config). */
export type ImageFormat = 'oci' | 'docker';

export interface BuiltImage {
  config: OciBlob;
  layers: OciBlob[];
  manifest: OciBlob;
  platform: Platform;
}

export function blobOf(mediaType: string, data: Buffer): OciBlob {
  return { mediaType, digest: `sha256:${sha256(data)}`, size: data.length, data };
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** An uncompressed tar archive holding `entries` in order. */
export async function tarLayer(entries: LayerEntry[]): Promise<Buffer> {
  const p = pack();
  const chunks: Buffer[] = [];
  p.on('data', (c) => {
    chunks.push(c as Buffer);
  });
  const done = new Promise<void>((resolve, reject) => {
    p.on('end', resolve);
    p.on('error', reject);
  });
  for (const e of entries) {
    const header = {
      name: e.name,
      type: e.type,
      mode: e.mode ?? (e.type === 'directory' ? 0o755 : e.type === 'symlink' ? 0o777 : 0o644),
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      mtime: e.mtime ?? new Date('2024-01-02T03:04:05Z'),
      ...('linkname' in e ? { linkname: e.linkname } : {}),
      ...('devmajor' in e ? { devmajor: e.devmajor, devminor: e.devminor } : {}),
    };
    if (e.type === 'file') {
      const content = typeof e.content === 'string' ? Buffer.from(e.content) : e.content;
      await new Promise<void>((resolve, reject) =>
        p.entry({ ...header, size: content.length }, content, (err) => (err ? reject(err) : resolve())),
      );
    } else {
      await new Promise<void>((resolve, reject) => p.entry(header, (err) => (err ? reject(err) : resolve())));
    }
  }
  p.finalize();
  await done;
  return Buffer.concat(chunks);
}

/** Compresses with the `zstd` CLI (Node 20's zlib has no zstd). */
export function zstdCompress(data: Buffer, level = 3): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn('zstd', ['-q', '-c', `-${level}`, '-T0'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => {
      err += c.toString();
    });
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0 ? resolve(Buffer.concat(out)) : reject(new Error(`zstd exited ${code}: ${err}`)),
    );
    child.stdin.end(data);
  });
}

export async function compressLayer(tar: Buffer, compression: LayerCompression): Promise<OciBlob> {
  if (compression === 'gzip') return blobOf(OCI_MEDIA_TYPES.layerGzip, gzipSync(tar));
  if (compression === 'zstd') return blobOf(OCI_MEDIA_TYPES.layerZstd, await zstdCompress(tar));
  return blobOf(OCI_MEDIA_TYPES.layerTar, tar);
}

/** An image (config, layers, manifest) from already built layer blobs. */
export function buildImage(input: {
  layers: OciBlob[];
  diffIds: string[];
  config?: ImageConfigInput;
  platform?: Platform;
  format?: ImageFormat;
}): BuiltImage {
  const docker = input.format === 'docker';
  const platform = input.platform ?? { os: 'linux', architecture: 'amd64' };
  const layers = input.layers.map((l) =>
    docker && l.mediaType === OCI_MEDIA_TYPES.layerGzip
      ? { ...l, mediaType: OCI_MEDIA_TYPES.dockerLayerGzip }
      : l,
  );
  const config = blobOf(
    docker ? OCI_MEDIA_TYPES.dockerConfig : OCI_MEDIA_TYPES.config,
    Buffer.from(
      JSON.stringify({
        created: '2024-01-02T03:04:05Z',
        ...platform,
        config: input.config ?? {},
        rootfs: { type: 'layers', diff_ids: input.diffIds },
        history: input.layers.map(() => ({ created_by: 'nqvm testkit' })),
      }),
    ),
  );
  const manifestType = docker ? OCI_MEDIA_TYPES.dockerManifest : OCI_MEDIA_TYPES.manifest;
  const manifest = blobOf(
    manifestType,
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: manifestType,
        config: descriptor(config),
        layers: layers.map(descriptor),
      }),
    ),
  );
  return { config, layers, manifest, platform };
}

/** Builds an image whose layers are given as entry lists with their compression. */
export async function buildImageFromEntries(input: {
  layers: Array<{ entries: LayerEntry[]; compression: LayerCompression }>;
  config?: ImageConfigInput;
  platform?: Platform;
  format?: ImageFormat;
}): Promise<BuiltImage> {
  const blobs: OciBlob[] = [];
  const diffIds: string[] = [];
  for (const layer of input.layers) {
    const tar = await tarLayer(layer.entries);
    diffIds.push(`sha256:${sha256(tar)}`);
    blobs.push(await compressLayer(tar, layer.compression));
  }
  return buildImage({ ...input, layers: blobs, diffIds });
}

export function descriptor(blob: OciBlob): { mediaType: string; digest: string; size: number } {
  return { mediaType: blob.mediaType, digest: blob.digest, size: blob.size };
}

/** An OCI image index (or Docker manifest list) listing each image's manifest with its platform. */
export function buildIndex(images: BuiltImage[], format: ImageFormat = 'oci'): OciBlob {
  const mediaType = format === 'docker' ? OCI_MEDIA_TYPES.dockerManifestList : OCI_MEDIA_TYPES.index;
  return blobOf(
    mediaType,
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType,
        manifests: images.map((i) => ({ ...descriptor(i.manifest), platform: i.platform })),
      }),
    ),
  );
}

/**
 * The image the OCI import tests use. Layer 1 (gzip) adds /etc/hello, /a/b/c, /gone.txt and
 * /opq/x; layer 2 (zstd) whites out /gone.txt, makes /opq opaque with /opq/y, and adds a
 * symlink /etc/hello.link -> hello and a hardlink /a/b/c.hard -> /a/b/c.
 */
export function sampleImage(opts: { hello?: string; platform?: Platform } = {}): Promise<BuiltImage> {
  return buildImageFromEntries({
    platform: opts.platform,
    layers: [
      {
        compression: 'gzip',
        entries: [
          { name: 'etc/', type: 'directory' },
          { name: 'etc/hello', type: 'file', content: opts.hello ?? 'hello from layer 1\n' },
          { name: 'a/', type: 'directory' },
          { name: 'a/b/', type: 'directory', mode: 0o750 },
          { name: 'a/b/c', type: 'file', content: 'c\n', mode: 0o640, uid: 1000, gid: 1001 },
          { name: 'gone.txt', type: 'file', content: 'to be whited out\n' },
          { name: 'opq/', type: 'directory' },
          { name: 'opq/x', type: 'file', content: 'x\n' },
          { name: 'bin/', type: 'directory' },
          { name: 'bin/tool', type: 'file', content: '#!/bin/sh\necho tool\n', mode: 0o4755 },
        ],
      },
      {
        compression: 'zstd',
        entries: [
          { name: '.wh.gone.txt', type: 'file', content: '' },
          { name: 'opq/', type: 'directory', mode: 0o700 },
          { name: 'opq/.wh..wh..opq', type: 'file', content: '' },
          { name: 'opq/y', type: 'file', content: 'y\n' },
          { name: 'etc/hello.link', type: 'symlink', linkname: 'hello' },
          { name: 'a/b/c.hard', type: 'link', linkname: 'a/b/c' },
        ],
      },
    ],
    config: {
      Entrypoint: ['/bin/tool'],
      Cmd: ['--serve', 'x'],
      Env: ['PATH=/usr/bin:/bin', 'GREETING=hi'],
      WorkingDir: '/opq',
      User: '1000:1001',
      ExposedPorts: { '8080/tcp': {} },
    },
  });
}
