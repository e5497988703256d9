/**
 * Small container images for tests and benchmarks, made from the host's busybox-static: the
 * same tree as an OCI layer (to push to a test registry) or as an ext4 file (what nqvm makes of
 * an OCI image), with a few users and any extra files.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  busyboxApplets,
  type GuestFile,
  HOST_BUSYBOX,
  rootfsTree,
  writeExt4Image,
} from '@nqvm/builtin-guest';
import type { LayerEntry } from '../oci-registry/image';

export interface ContainerImageOptions {
  /** Extra files, e.g. `{ path: 'srv/index.html', mode: 0o644, text: 'hi' }` (no leading slash). */
  files?: GuestFile[];
}

/** /etc of the image: root, `app` (1000:1000) and nobody. */
const ETC: GuestFile[] = [
  {
    path: 'etc/passwd',
    mode: 0o644,
    text: 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
  },
  { path: 'etc/group', mode: 0o644, text: 'root:x:0:\napp:x:1000:\nnogroup:x:65534:\n' },
  { path: 'home/app/.keep', mode: 0o644, text: '' },
];

function files(opts: ContainerImageOptions): GuestFile[] {
  return [...ETC, ...(opts.files ?? [])];
}

/**
 * The image's files as OCI layer entries (one layer), for `buildImageFromEntries`.
 *
 * @example
 * const image = await buildImageFromEntries({ layers: [await busyboxLayer()], config: { Cmd: ['sh'] } });
 */
export async function busyboxLayer(opts: ContainerImageOptions = {}): Promise<LayerEntry[]> {
  const busybox = await readFile(HOST_BUSYBOX);
  const applets = await busyboxApplets(HOST_BUSYBOX);
  const dirs = [
    'bin',
    'sbin',
    'usr/bin',
    'usr/sbin',
    'etc',
    'tmp',
    'root',
    'home',
    'home/app',
    'proc',
    'sys',
    'dev',
  ];
  return [
    ...dirs.map(
      (d): LayerEntry => ({ name: `${d}/`, type: 'directory', mode: d === 'tmp' ? 0o1777 : 0o755 }),
    ),
    { name: 'bin/busybox', type: 'file', mode: 0o755, content: busybox },
    ...applets
      .filter((p) => p !== 'bin/busybox')
      .map((p): LayerEntry => ({ name: p, type: 'symlink', linkname: '/bin/busybox' })),
    ...files(opts).map((f): LayerEntry => ({ name: f.path, type: 'file', mode: f.mode, content: f.text })),
  ];
}

/** The same image as an ext4 file of `sizeMiB` (made with mkfs.ext4 -d, no mount). */
export async function writeBusyboxRootfs(
  file: string,
  opts: ContainerImageOptions & { sizeMiB?: number } = {},
): Promise<void> {
  const busybox = { binary: await readFile(HOST_BUSYBOX), applets: await busyboxApplets(HOST_BUSYBOX) };
  const staging = await mkdtemp(join(tmpdir(), 'nqvm-container-image-'));
  try {
    await writeExt4Image(file, rootfsTree(busybox, files(opts)), opts.sizeMiB ?? 64, join(staging, 'tree'));
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}
