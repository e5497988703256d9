/**
 * Host-path image registration: a file is accepted only when the feature is on and the file,
 * with every symlink resolved, stays under the image root.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { NqvmError } from '@nqvm/api';

export interface HostPathPolicy {
  allowImagePaths: boolean;
  imageRoot: string;
  /** Folders under the root that hold the manager's own files (the blob store). */
  reserved: string[];
}

function outside(requested: string, why: string): NqvmError {
  return new NqvmError('IMAGE_PATH_OUTSIDE_ROOT', `${requested} ${why}`, {
    field: 'source.path',
    path: requested,
  });
}

function within(root: string, p: string): boolean {
  const rel = path.relative(root, p);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/**
 * The real path of an image file the request may register, or an error saying why not.
 * Relative paths are taken from the image root.
 *
 * @example
 * await resolveHostPath({ allowImagePaths: true, imageRoot: '/srv/images', reserved: [] },
 *   'kernels/vmlinux-6.1'); // '/srv/images/kernels/vmlinux-6.1'
 */
export async function resolveHostPath(policy: HostPathPolicy, requested: string): Promise<string> {
  if (!policy.allowImagePaths)
    throw new NqvmError(
      'IMAGE_PATHS_DISABLED',
      'registering images by host path is disabled; set MANAGER_ALLOW_IMAGE_PATHS=true to allow it',
    );
  if (requested.split(/[\\/]/).includes('..'))
    throw outside(requested, 'contains a ".." segment; give a path under MANAGER_IMAGE_ROOT');
  let root: string;
  try {
    root = await fs.realpath(policy.imageRoot);
  } catch {
    throw outside(requested, `cannot be under MANAGER_IMAGE_ROOT: ${policy.imageRoot} does not exist`);
  }
  const joined = path.resolve(policy.imageRoot, requested);
  if (!within(path.resolve(policy.imageRoot), joined) && !within(root, joined))
    throw outside(requested, `is not under MANAGER_IMAGE_ROOT (${policy.imageRoot})`);
  let real: string;
  try {
    real = await fs.realpath(joined);
  } catch {
    throw new NqvmError('VALIDATION_FAILED', `${requested} does not exist`, {
      field: 'source.path',
      path: requested,
    });
  }
  if (!within(root, real))
    throw outside(requested, `leads outside MANAGER_IMAGE_ROOT (${policy.imageRoot}) through a symlink`);
  for (const dir of policy.reserved) {
    const reserved = await fs.realpath(dir).catch(() => path.resolve(dir));
    if (within(reserved, real))
      throw new NqvmError(
        'VALIDATION_FAILED',
        `${requested} is inside the manager's own image store; upload the file instead`,
        {
          field: 'source.path',
        },
      );
  }
  const st = await fs.stat(real);
  if (!st.isFile())
    throw new NqvmError('VALIDATION_FAILED', `${requested} is not a regular file`, {
      field: 'source.path',
      path: requested,
    });
  return real;
}
