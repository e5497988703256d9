/**
 * Image references normalized as Docker does: `alpine` is `docker.io/library/alpine:latest`, a
 * first component with a `.` or `:` (or `localhost`) names the registry, and `docker.io` is
 * served by `registry-1.docker.io`.
 */
import { NqvmError } from '@nqvm/api';

export interface ImageReference {
  /** The registry as named in references (`docker.io`, `registry.example:5000`). */
  registry: string;
  /** The host:port the HTTP API is reached at. */
  apiHost: string;
  repository: string;
  tag: string | null;
  digest: string | null;
}

const COMPONENT = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;
const DOMAIN =
  /^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;

function invalid(reference: string, why: string): NqvmError {
  return new NqvmError('VALIDATION_FAILED', `invalid image reference "${reference}": ${why}`, {
    field: 'reference',
  });
}

/**
 * Parses an image reference.
 *
 * @example
 * parseImageReference('alpine');
 * // { registry: 'docker.io', apiHost: 'registry-1.docker.io', repository: 'library/alpine', tag: 'latest', digest: null }
 */
export function parseImageReference(reference: string): ImageReference {
  let rest = reference.trim();
  if (!rest) throw invalid(reference, 'it is empty');

  let digest: string | null = null;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest))
      throw invalid(reference, 'the digest must be sha256:<64 hex> or sha512:<128 hex>');
  }
  let tag: string | null = null;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw invalid(reference, `"${tag}" is not a valid tag`);
  }

  let registry = 'docker.io';
  let path = rest;
  const slash = rest.indexOf('/');
  if (slash >= 0) {
    const first = rest.slice(0, slash);
    if (/[.:]/.test(first) || first === 'localhost' || first !== first.toLowerCase()) {
      registry = first;
      path = rest.slice(slash + 1);
    }
  }
  if (registry === 'index.docker.io') registry = 'docker.io';
  if (!DOMAIN.test(registry)) throw invalid(reference, `"${registry}" is not a valid registry host`);
  if (registry === 'docker.io' && !path.includes('/')) path = `library/${path}`;
  if (!path.split('/').every((c) => COMPONENT.test(c))) {
    throw invalid(reference, 'the repository must be lowercase letters, digits and separators (. _ __ -)');
  }
  if (registry.length + 1 + path.length > 255)
    throw invalid(reference, 'the name is longer than 255 characters');

  return {
    registry,
    apiHost: registry === 'docker.io' ? 'registry-1.docker.io' : registry,
    repository: path,
    tag: tag ?? (digest ? null : 'latest'),
    digest,
  };
}

/** The canonical form, e.g. `docker.io/library/alpine:3.20` or `host:5000/a/b@sha256:...`. */
export function formatImageReference(ref: ImageReference): string {
  return `${ref.registry}/${ref.repository}${ref.tag ? `:${ref.tag}` : ''}${ref.digest ? `@${ref.digest}` : ''}`;
}

/**
 * Whether the registry is reached over plain HTTP: as asked, else only for loopback registries
 * (`localhost`, `127.x.x.x`, `[::1]`), as Docker treats them as insecure by default.
 */
export function usesPlainHttp(ref: ImageReference, plainHttp: boolean | undefined): boolean {
  if (plainHttp !== undefined) return plainHttp;
  const host = ref.apiHost.replace(/:\d+$/, '');
  return host === 'localhost' || /^127\.\d+\.\d+\.\d+$/.test(host) || host === '[::1]';
}
