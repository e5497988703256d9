/** `nqvm image ...`: kernels, initrds and root file systems in the manager's image store. */
import { createReadStream, statSync } from 'node:fs';
import path from 'node:path';
import { Command, Option } from 'commander';
import { age, formatBytes, printItem, printList, stateColour, UsageError } from '../client/output';
import { Progress } from '../client/progress';
import { readStdinLine } from '../client/prompt';
import {
  action,
  KINDS,
  type OperationLike,
  printAccepted,
  resolveId,
  session,
  waitOperation,
} from '../client/session';

export interface ImageJson {
  id: string;
  name: string;
  kind: string;
  status: string;
  sha256: string | null;
  size_bytes: number | null;
  stored_bytes: number | null;
  format: string | null;
  is_default: boolean;
  source: Record<string, unknown>;
  metadata: Record<string, unknown>;
  created_at: string;
}

/** `image show` and `image import`: the length and what the (sparse) blob takes on disk. */
function imageFields(img: ImageJson): [string, unknown][] {
  return [
    ['id', img.id],
    ['name', img.name],
    ['kind', img.kind],
    ['status', img.status],
    ['default', img.is_default],
    ['format', img.format],
    ['size', formatBytes(img.size_bytes)],
    ['stored', formatBytes(img.stored_bytes)],
    ['sha256', img.sha256],
    ['source', img.source],
    ['metadata', img.metadata],
    ['created', img.created_at],
  ];
}

type ImportAnswer = ImageJson | { image: ImageJson; operation?: OperationLike | null };

function split(res: ImportAnswer): { image: ImageJson; operation: OperationLike | null } {
  if ('image' in res) return { image: res.image, operation: res.operation ?? null };
  return { image: res, operation: null };
}

/** What an import source is: a local file, an http(s) URL, or an OCI image reference. */
export function classifySource(source: string): 'file' | 'url' | 'oci' {
  if (/^https?:\/\//i.test(source)) return 'url';
  if (/^(oci|docker):\/\//i.test(source)) return 'oci';
  try {
    if (statSync(source).isFile()) return 'file';
  } catch {
    // not a local file
  }
  if (/^[a-z0-9.-]+(:\d+)?\/|^[a-z0-9._-]+(:[\w.-]+)?(@sha256:[a-f0-9]{64})?$/i.test(source)) return 'oci';
  throw new UsageError(`"${source}" is neither a file, an http(s) URL nor an OCI image reference`);
}

export function imageCommand(): Command {
  const image = new Command('image').description('kernel, initrd and rootfs images');

  image
    .command('list')
    .alias('ls')
    .description("list images (SIZE: length; STORED: on the manager's disk, less when sparse)")
    .addOption(new Option('--kind <kind>', 'only this kind').choices(['kernel', 'initrd', 'rootfs']))
    .action(
      action(async (opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const items = await api.all<ImageJson>('/api/v1/images', { kind: opts.kind });
        printList(print, items, items, [
          { header: 'NAME', value: (i) => `${i.name}${i.is_default ? ' (default)' : ''}` },
          { header: 'KIND', value: (i) => i.kind },
          { header: 'STATUS', value: (i) => i.status, colour: stateColour },
          { header: 'FORMAT', value: (i) => i.format },
          { header: 'SIZE', value: (i) => formatBytes(i.size_bytes) },
          { header: 'STORED', value: (i) => formatBytes(i.stored_bytes) },
          { header: 'SHA256', value: (i) => i.sha256?.slice(0, 12) },
          { header: 'AGE', value: (i) => age(i.created_at) },
          { header: 'ID', value: (i) => i.id },
        ]);
      }),
    );

  image
    .command('show')
    .argument('<image>', 'name or id')
    .description("show one image (size: its length; stored: what it takes on the manager's disk)")
    .action(
      action(async (name: string, _opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const id = await resolveId(api, KINDS.image, name);
        const img = await api.get<ImageJson>(`/api/v1/images/${id}`);
        printItem(print, img, imageFields(img));
      }),
    );

  image
    .command('import')
    .argument(
      '<source>',
      'a local file (uploaded), an http(s) URL, or an OCI reference (docker.io/library/alpine:3.20)',
    )
    .description('import an image; shows progress and waits until it is ready')
    .option('--name <name>', 'image name (default: from the source)')
    .addOption(
      new Option(
        '--kind <kind>',
        'what the image is; checked on import (kernel: ELF vmlinux or bzImage; initrd: cpio archive; rootfs: file system, partitioned disk or qcow2)',
      )
        .choices(['kernel', 'initrd', 'rootfs'])
        .default('rootfs'),
    )
    .option('--sha256 <hex>', 'expected sha256 of the file (checked; a mismatch keeps nothing)')
    .option('--path', 'register a file on the manager host in place (needs MANAGER_ALLOW_IMAGE_PATHS)')
    .option('--registry-user <user>', 'OCI registry user name')
    .option('--registry-password-stdin', 'read the OCI registry password from standard input')
    .option('--plain-http', 'talk to the OCI registry over http')
    .option('--default', 'make it the default of its kind')
    .option('--no-wait', 'return once the import started')
    .addHelpText(
      'after',
      `
Examples:
  $ nqvm image import ./rootfs.ext4 --name debian-12
  $ nqvm image import https://example.org/vmlinux --kind kernel --sha256 3f4c...
  $ nqvm image import docker.io/library/alpine:3.20 --name alpine
  $ nqvm image import /srv/nqvm-images/k.bin --path --kind kernel`,
    )
    .action(
      action(async (source: string, opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const type = opts.path ? 'path' : classifySource(source);
        const name =
          opts.name ??
          (type === 'oci'
            ? (
                source
                  .replace(/^(oci|docker):\/\//, '')
                  .split('/')
                  .pop() ?? 'image'
              ).replace(/[:@]/g, '-')
            : path.basename(new URL(source, 'file:///').pathname)
          ).replace(/[^a-zA-Z0-9_.-]/g, '-');
        let res: ImportAnswer;
        if (type === 'file') {
          const size = statSync(source).size;
          const bar = new Progress(`uploading ${name}`);
          try {
            res = await api.request<ImportAnswer>('POST', '/api/v1/images/upload', {
              query: { name, kind: opts.kind, sha256: opts.sha256 },
              stream: createReadStream(source),
              contentLength: size,
              onUploadProgress: (sent) => bar.update((sent / size) * 100, formatBytes(sent)),
            });
          } finally {
            bar.done(true);
          }
        } else {
          const src =
            type === 'url'
              ? { type, url: source, sha256: opts.sha256 }
              : type === 'path'
                ? { type, path: source }
                : {
                    type,
                    reference: source.replace(/^(oci|docker):\/\//, ''),
                    username: opts.registryUser,
                    password: opts.registryPasswordStdin ? await readStdinLine() : undefined,
                    plain_http: opts.plainHttp ? true : undefined,
                  };
          res = await api.post<ImportAnswer>('/api/v1/images', { name, kind: opts.kind, source: src });
        }
        let { image: img, operation } = split(res);
        if (operation && opts.wait) {
          await waitOperation(api, operation, { label: `importing ${name}` });
          img = await api.get<ImageJson>(`/api/v1/images/${img.id}`);
        }
        if (opts.default) img = await api.patch<ImageJson>(`/api/v1/images/${img.id}`, { is_default: true });
        const table = () => printItem(print, img, imageFields(img));
        if (operation && !opts.wait) printAccepted(print, { image: img, operation }, [operation], table);
        else table();
      }),
    );

  image
    .command('delete')
    .alias('rm')
    .argument('<image>', 'name or id')
    .description('delete an image (refused while a VM, template or snapshot uses it)')
    .action(
      action(async (name: string, _opts, cmd: Command) => {
        const { api } = await session(cmd);
        const id = await resolveId(api, KINDS.image, name);
        await api.delete(`/api/v1/images/${id}`);
        process.stderr.write(`deleted image ${name}\n`);
      }),
    );

  image
    .command('set-default')
    .argument('<image>', 'name or id')
    .description('make an image the default of its kind')
    .action(
      action(async (name: string, _opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const id = await resolveId(api, KINDS.image, name);
        printItem(print, await api.patch<ImageJson>(`/api/v1/images/${id}`, { is_default: true }));
      }),
    );
  return image;
}
