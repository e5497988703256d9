/** `nqvm template ...`: reusable VM shapes, and VMs made from them. */
import { readFileSync } from 'node:fs';
import { Command, Option } from 'commander';
import type { ApiClient } from '../client/api';
import { age, formatMib, printItem, printList } from '../client/output';
import { askHidden, readStdinLine } from '../client/prompt';
import { action, KINDS, resolveId, session } from '../client/session';
import { collect, finish, parseLabels, parseMib, type VmAction, waitOptions } from './vm';

interface TemplateJson {
  id: string;
  name: string;
  description: string | null;
  spec: {
    vcpu: number;
    mem_mib: number;
    kernel_image_id: string | null;
    rootfs_image_id: string | null;
    initrd_image_id: string | null;
    disk_size_mib: number | null;
    vmm: string | null;
    networks: Array<{ network_id: string }> | null;
    guest_config: { mode: string; username: string | null; has_password: boolean };
    restart_policy: string;
    labels: Record<string, string>;
  };
  created_at: string;
}

/** Flags shared by `template create` (the template) and `template instantiate` (overrides). */
function shapeOptions(cmd: Command): Command {
  return cmd
    .option('--vcpu <n>', 'virtual CPUs')
    .option('--mem <size>', 'memory, e.g. 256M or 1G')
    .option('--kernel <image>', 'kernel image (name or id)')
    .option('--initrd <image>', 'initrd image (name or id)')
    .option('--rootfs <image>', 'root file system image (name or id)')
    .option('--disk-size <size>', 'root disk size, e.g. 2G')
    .option('--boot-args <args>', 'kernel command line')
    .addOption(new Option('--vmm <vmm>', 'VMM').choices(['firecracker', 'qemu']))
    .option('--network <network>', 'a NIC on this network (name or id; repeatable)', collect, [])
    .option('--hostname <name>', 'guest host name')
    .option('--user <name>', 'guest user to create')
    .option('--password-stdin', "read the guest user's password from standard input")
    .option('--ask-password', "ask for the guest user's password")
    .option('--ssh-key <key-or-file>', 'an SSH public key, or a file holding one (repeatable)', collect, [])
    .option('--user-data <file>', 'cloud-init user-data to merge in')
    .addOption(
      new Option('--guest-config <mode>', 'how the settings reach the guest').choices([
        'auto',
        'cloud-init',
        'inject',
        'none',
      ]),
    )
    .addOption(new Option('--restart <policy>', 'restart policy').choices(['never', 'on-failure', 'always']))
    .option('-l, --label <key=value>', 'label (repeatable)', collect, []);
}

/** Drops the keys whose value is undefined; undefined when nothing is left. */
function defined<T extends Record<string, unknown>>(o: T): Partial<T> | undefined {
  const out = Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
  return Object.keys(out).length ? out : undefined;
}

/**
 * The spec fields the flags set, names resolved to ids; only what was given, so the server's
 * defaults (create) or the template's values (instantiate) hold for the rest.
 */
export async function shapeBody(
  api: ApiClient,
  // biome-ignore lint/suspicious/noExplicitAny: commander options
  opts: Record<string, any>,
): Promise<Record<string, unknown>> {
  const image = (v: string | undefined) => (v ? resolveId(api, KINDS.image, v) : undefined);
  let password: string | undefined;
  if (opts.passwordStdin) password = await readStdinLine();
  else if (opts.askPassword) password = await askHidden('Guest password: ');
  const keys = (opts.sshKey as string[]).map((k) =>
    /^(ssh-|ecdsa-|sk-)/.test(k) ? k : readFileSync(k, 'utf8').trim(),
  );
  const networks = opts.network as string[];
  const labels = parseLabels(opts.label);
  return (
    defined({
      vcpu: opts.vcpu !== undefined ? Number(opts.vcpu) : undefined,
      mem_mib: opts.mem !== undefined ? parseMib(opts.mem, '--mem') : undefined,
      kernel_image_id: await image(opts.kernel),
      initrd_image_id: await image(opts.initrd),
      rootfs_image_id: await image(opts.rootfs),
      disk_size_mib: opts.diskSize ? parseMib(opts.diskSize, '--disk-size') : undefined,
      boot_args: opts.bootArgs,
      vmm: opts.vmm,
      networks: networks.length
        ? await Promise.all(
            networks.map(async (n) => ({ network_id: await resolveId(api, KINDS.network, n) })),
          )
        : undefined,
      guest_config: defined({
        mode: opts.guestConfig,
        hostname: opts.hostname,
        username: opts.user,
        password,
        ssh_authorized_keys: keys.length ? keys : undefined,
        user_data: opts.userData ? readFileSync(opts.userData, 'utf8') : undefined,
      }),
      restart_policy: opts.restart,
      labels: Object.keys(labels).length ? labels : undefined,
    }) ?? {}
  );
}

function printTemplate(print: Parameters<typeof printItem>[0], t: TemplateJson): void {
  printItem(print, t, [
    ['id', t.id],
    ['name', t.name],
    ['description', t.description],
    ['vcpu', t.spec.vcpu],
    ['memory', formatMib(t.spec.mem_mib)],
    ['disk', t.spec.disk_size_mib ? formatMib(t.spec.disk_size_mib) : null],
    ['vmm', t.spec.vmm],
    ['kernel', t.spec.kernel_image_id],
    ['rootfs', t.spec.rootfs_image_id],
    ['initrd', t.spec.initrd_image_id],
    ['networks', t.spec.networks ? t.spec.networks.map((n) => n.network_id).join(', ') : '(default)'],
    ['guest user', t.spec.guest_config.username],
    ['password', t.spec.guest_config.has_password ? 'set' : null],
    ['restart', t.spec.restart_policy],
    ['labels', Object.keys(t.spec.labels).length ? t.spec.labels : null],
    ['created', t.created_at],
  ]);
}

export function templateCommand(): Command {
  const template = new Command('template').description('reusable VM shapes: create VMs from them');

  template
    .command('list')
    .alias('ls')
    .description('list templates')
    .action(
      action(async (_opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const items = await api.all<TemplateJson>('/api/v1/templates');
        printList(print, items, items, [
          { header: 'NAME', value: (t) => t.name },
          { header: 'VCPU', value: (t) => t.spec.vcpu },
          { header: 'MEMORY', value: (t) => formatMib(t.spec.mem_mib) },
          { header: 'VMM', value: (t) => t.spec.vmm },
          { header: 'DESCRIPTION', value: (t) => t.description },
          { header: 'AGE', value: (t) => age(t.created_at) },
          { header: 'ID', value: (t) => t.id },
        ]);
      }),
    );

  template
    .command('show')
    .alias('get')
    .argument('<template>', 'name or id')
    .description('show one template')
    .action(
      action(async (name: string, _opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const id = await resolveId(api, KINDS.template, name);
        printTemplate(print, await api.get<TemplateJson>(`/api/v1/templates/${id}`));
      }),
    );

  shapeOptions(
    template
      .command('create')
      .argument('<name>', 'template name (letters, digits, . _ -)')
      .description('create a template (the flags of `vm create`; unset ones take the VM defaults)')
      .option('--description <text>', 'what the template is for'),
  )
    .addHelpText(
      'after',
      `
Examples:
  $ nqvm template create small-web --vcpu 1 --mem 512M --user alice --ssh-key ~/.ssh/id_ed25519.pub -l tier=web
  $ nqvm template instantiate small-web --name web1`,
    )
    .action(
      action(async (name: string, opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const body = { name, description: opts.description, spec: await shapeBody(api, opts) };
        printTemplate(print, await api.post<TemplateJson>('/api/v1/templates', body));
      }),
    );

  waitOptions(
    shapeOptions(
      template
        .command('instantiate')
        .argument('<template>', 'name or id')
        .description('create a VM from a template; flags override the template (labels are merged)')
        .requiredOption('--name <vm>', 'the new VM name'),
    )
      .option('--volume <volume>', 'attach this data volume (name or id; repeatable)', collect, [])
      .option('--no-start', 'create it stopped')
      .addHelpText(
        'after',
        '\nExample:\n  $ nqvm template instantiate small-web --name web2 --vcpu 2 -l shard=2',
      ),
  ).action(
    action(async (tpl: string, opts, cmd: Command) => {
      const { api, print } = await session(cmd);
      const id = await resolveId(api, KINDS.template, tpl);
      const volumes = opts.volume as string[];
      const overrides = {
        ...(await shapeBody(api, opts)),
        ...(volumes.length
          ? {
              volumes: await Promise.all(
                volumes.map(async (v) => ({ volume_id: await resolveId(api, KINDS.volume, v) })),
              ),
            }
          : {}),
        ...(opts.start ? {} : { start: false }),
      };
      const res = await api.post<VmAction>(`/api/v1/templates/${id}/instantiate`, {
        name: opts.name,
        overrides,
      });
      await finish(api, print, res, opts, `creating ${opts.name}`);
    }),
  );

  template
    .command('from-vm')
    .argument('<vm>', 'name or id')
    .description("make a template of a VM's shape (its addresses are not kept)")
    .requiredOption('--name <template>', 'the new template name')
    .option('--description <text>', 'what the template is for')
    .action(
      action(async (vm: string, opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const vmId = await resolveId(api, KINDS.vm, vm);
        printTemplate(
          print,
          await api.post<TemplateJson>(`/api/v1/vms/${vmId}/template`, {
            name: opts.name,
            description: opts.description,
          }),
        );
      }),
    );

  template
    .command('delete')
    .alias('rm')
    .argument('<template>', 'name or id')
    .description('delete a template (VMs made from it stay)')
    .action(
      action(async (name: string, _opts, cmd: Command) => {
        const { api } = await session(cmd);
        await api.delete(`/api/v1/templates/${await resolveId(api, KINDS.template, name)}`);
        process.stderr.write(`deleted template ${name}\n`);
      }),
    );
  return template;
}
