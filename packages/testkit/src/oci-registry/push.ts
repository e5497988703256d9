/**
 * Pushes built images through a registry's HTTP API v2, as `docker push` does: each blob with
 * POST /v2/<name>/blobs/uploads/ then PUT <location>?digest=..., then the manifest.
 */
import type { BuiltImage, OciBlob } from './image';

export interface PushTarget {
  /** `http://127.0.0.1:<port>` */
  url: string;
  repository: string;
  /** An Authorization header value (`Basic ...`, `Bearer ...`) when the registry wants one. */
  authorization?: string;
}

export function basicAuthorization(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
}

function headers(target: PushTarget, extra: Record<string, string> = {}): Record<string, string> {
  return { ...extra, ...(target.authorization ? { authorization: target.authorization } : {}) };
}

async function expectStatus(res: Response, ok: number[], what: string): Promise<void> {
  if (ok.includes(res.status)) return;
  throw new Error(`${what}: HTTP ${res.status} ${await res.text()}`);
}

export async function pushBlob(target: PushTarget, blob: OciBlob): Promise<void> {
  const base = `${target.url}/v2/${target.repository}`;
  const head = await fetch(`${base}/blobs/${blob.digest}`, { method: 'HEAD', headers: headers(target) });
  if (head.status === 200) return;
  const start = await fetch(`${base}/blobs/uploads/`, { method: 'POST', headers: headers(target) });
  await expectStatus(start, [202], `start upload of ${blob.digest}`);
  await start.arrayBuffer();
  const location = new URL(start.headers.get('location') ?? '', target.url);
  location.searchParams.set('digest', blob.digest);
  const put = await fetch(location, {
    method: 'PUT',
    headers: headers(target, {
      'content-type': 'application/octet-stream',
      'content-length': String(blob.size),
    }),
    body: new Uint8Array(blob.data),
  });
  await expectStatus(put, [201], `upload of ${blob.digest}`);
  await put.arrayBuffer();
}

/** Puts a manifest or index under `reference` (a tag, or its digest). */
export async function pushManifest(target: PushTarget, reference: string, manifest: OciBlob): Promise<void> {
  const res = await fetch(`${target.url}/v2/${target.repository}/manifests/${reference}`, {
    method: 'PUT',
    headers: headers(target, { 'content-type': manifest.mediaType }),
    body: new Uint8Array(manifest.data),
  });
  await expectStatus(res, [201], `manifest ${reference}`);
  await res.arrayBuffer();
}

/** Pushes an image's config and layers, then its manifest under `tag`. */
export async function pushImage(target: PushTarget, tag: string, image: BuiltImage): Promise<void> {
  for (const blob of [image.config, ...image.layers]) await pushBlob(target, blob);
  await pushManifest(target, tag, image.manifest);
}

/** Pushes each image by digest, then the index under `tag`. */
export async function pushIndex(
  target: PushTarget,
  tag: string,
  images: BuiltImage[],
  index: OciBlob,
): Promise<void> {
  for (const image of images) await pushImage(target, image.manifest.digest, image);
  await pushManifest(target, tag, index);
}
