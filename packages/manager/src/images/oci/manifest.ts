/**
 * The registry documents an import reads: indexes (OCI index, Docker manifest list), image
 * manifests (OCI, Docker v2 schema 2) and the image config, with the shape checks that matter.
 */
import { NqvmError } from '@nqvm/api';

export const MANIFEST_MEDIA_TYPES = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
} as const;

/** The Accept header of a manifest request: every kind the import understands. */
export const MANIFEST_ACCEPT = Object.values(MANIFEST_MEDIA_TYPES).join(', ');

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
}

export interface IndexEntry extends Descriptor {
  platform?: { os?: string; architecture?: string; variant?: string };
}

export type ManifestDocument =
  | { kind: 'index'; manifests: IndexEntry[] }
  | { kind: 'manifest'; config: Descriptor; layers: Descriptor[] };

/** What nqvm keeps of an image's config (see OciImageConfig in index.ts). */
export interface ImageConfigFields {
  entrypoint: string[] | null;
  cmd: string[] | null;
  env: string[];
  working_dir: string | null;
  user: string | null;
  exposed_ports: string[];
}

export interface ImageConfigDocument {
  os: string | null;
  architecture: string | null;
  config: ImageConfigFields;
}

const DIGEST = /^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;

function malformed(what: string): NqvmError {
  return new NqvmError('IMPORT_FAILED', `the registry sent a malformed ${what}`);
}

function isDescriptor(v: unknown): v is Descriptor {
  const d = v as Descriptor;
  return (
    typeof d === 'object' &&
    d !== null &&
    typeof d.mediaType === 'string' &&
    typeof d.digest === 'string' &&
    DIGEST.test(d.digest) &&
    Number.isSafeInteger(d.size) &&
    d.size >= 0
  );
}

/** Parses a manifest or index; `contentType` is the response's, the body's `mediaType` is the fallback. */
export function parseManifest(body: Buffer, contentType: string | null): ManifestDocument {
  let doc: {
    mediaType?: string;
    schemaVersion?: number;
    manifests?: unknown;
    config?: unknown;
    layers?: unknown;
  };
  try {
    doc = JSON.parse(body.toString('utf8'));
  } catch {
    throw malformed('manifest (not JSON)');
  }
  const type = (contentType?.split(';')[0]?.trim() || doc.mediaType) ?? '';
  if (doc.schemaVersion === 1 || type.includes('distribution.manifest.v1')) {
    throw new NqvmError(
      'IMPORT_FAILED',
      'the image uses the Docker v1 manifest format, which is not supported',
      { reason: 'unsupported' },
    );
  }
  const isIndex =
    type === MANIFEST_MEDIA_TYPES.ociIndex ||
    type === MANIFEST_MEDIA_TYPES.dockerList ||
    (!type.includes('manifest.v') && Array.isArray(doc.manifests));
  if (isIndex) {
    if (!Array.isArray(doc.manifests) || !doc.manifests.every(isDescriptor)) throw malformed('index');
    return { kind: 'index', manifests: doc.manifests as IndexEntry[] };
  }
  if (!isDescriptor(doc.config) || !Array.isArray(doc.layers) || !doc.layers.every(isDescriptor)) {
    throw malformed('image manifest');
  }
  return { kind: 'manifest', config: doc.config, layers: doc.layers };
}

/** The linux/amd64 image of an index (an entry without a variant, or `v1`, preferred). */
export function selectLinuxAmd64(manifests: IndexEntry[]): IndexEntry {
  const candidates = manifests.filter(
    (m) => m.platform?.os === 'linux' && m.platform.architecture === 'amd64',
  );
  const chosen = candidates.find((m) => !m.platform?.variant || m.platform.variant === 'v1') ?? candidates[0];
  if (!chosen) {
    const offered = manifests
      .map((m) => (m.platform ? `${m.platform.os}/${m.platform.architecture}` : 'unknown'))
      .join(', ');
    throw new NqvmError(
      'IMPORT_FAILED',
      `the image has no linux/amd64 variant (it offers: ${offered || 'none'})`,
      { reason: 'platform' },
    );
  }
  return chosen;
}

function stringArray(v: unknown): string[] | null {
  return Array.isArray(v) && v.every((s) => typeof s === 'string') ? v : null;
}

function nonEmptyString(v: unknown): string | null {
  return typeof v === 'string' && v !== '' ? v : null;
}

export function parseImageConfig(body: Buffer): ImageConfigDocument {
  let doc: { os?: unknown; architecture?: unknown; config?: Record<string, unknown> | null };
  try {
    doc = JSON.parse(body.toString('utf8'));
  } catch {
    throw malformed('image config (not JSON)');
  }
  const c = doc.config ?? {};
  const ports = c.ExposedPorts;
  return {
    os: nonEmptyString(doc.os),
    architecture: nonEmptyString(doc.architecture),
    config: {
      entrypoint: stringArray(c.Entrypoint),
      cmd: stringArray(c.Cmd),
      env: stringArray(c.Env) ?? [],
      working_dir: nonEmptyString(c.WorkingDir),
      user: nonEmptyString(c.User),
      exposed_ports: ports && typeof ports === 'object' ? Object.keys(ports).sort() : [],
    },
  };
}
