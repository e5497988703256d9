/** `nqvm vm ...`: VMs from a terminal. Names or ids wherever a VM, image or volume is taken. */
import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { type ApiClient, ApiError } from '../client/api';
import {
  age,
  formatMib,
  type Printer,
  printItem,
  printList,
  stateColour,
  UsageError,
} from '../client/output';
import { Progress } from '../client/progress';
import { askHidden, readStdinLine } from '../client/prompt';
import {
  action,
  KINDS,
  type OperationLike,
  printAccepted,
  resolveId,
  session,
  waitOperation,
} from '../client/session';
import { addConsoleCommand } from './console';
import { addExecCommand } from './exec';
import { addMetricsCommand } from './vm-metrics';

export interface VmJson {
  id: string;
  name: string;
  state: string;
  desired_state: string;
  host_id: string | null;
  vcpu: number;
  mem_mib: number;
  vmm: string | null;
  disk_size_mib: number | null;
  networks: Array<{ network_id: string; ip: string | null; mac: string | null }>;
  labels: Record<string, string>;
  last_error: string | null;
  guest_ready_at?: string | null;
  guest_ready_signal?: string | null;
  created_at: string;
}

export interface VmAction {
  vm: VmJson;
  operation: OperationLike;
}

/** `512`, `512M`, `2G`, `2GiB` -> MiB. */
export function parseMib(text: string, what: string): number {
  const m = /^(\d+)\s*(m|mi|mib|mb|g|gi|gib|gb|t|ti|tib|tb)?$/i.exec(text.trim());
  if (!m) throw new UsageError(`${what} must be a size like 512M or 2G, not "${text}"`);
  const n = Number(m[1]);
  const unit = (m[2] ?? 'm')[0]?.toLowerCase();
  return unit === 'g' ? n * 1024 : unit === 't' ? n * 1024 * 1024 : n;
}

export function parseLabels(list: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of list) {
    const at = item.indexOf('=');
    if (at <= 0) throw new UsageError(`--label must be key=value, not "${item}"`);
    out[item.slice(0, at)] = item.slice(at + 1);
  }
  return out;
}

export const collect = (v: string, prev: string[]) => [...prev, v];

export function waitOptions(cmd: Command): Command {
  return cmd
    .addOption(
      new Option(
        '--wait [until]',
        'wait for the operation (the default); `--wait ready` also waits until the guest is up (its guest agent answered, or its console showed a login prompt or cloud-init finishing)',
      )
        .argParser((v: string) => {
          if (v !== 'ready') throw new InvalidArgumentError('the only value --wait takes is "ready"');
          return v;
        })
        .default(true),
    )
    .option('--no-wait', 'return as soon as the manager accepted the request')
    .option('--timeout <s>', 'give up waiting after this many seconds', '600');
}

/**
 * Prints the VM once its operation ended (and under `--wait ready` its guest is up), or at once
 * (with the operation) under --no-wait.
 */
export async function finish(
  api: ApiClient,
  print: Printer,
  res: VmAction,
  opts: { wait: boolean | string; timeout: string },
  label: string,
): Promise<void> {
  if (!opts.wait) {
    printAccepted(print, res, [res.operation], () => makeVmPrinter(print)(res.vm));
    return;
  }
  const deadline = Date.now() + Number(opts.timeout) * 1000;
  await waitOperation(api, res.operation, { timeoutS: Number(opts.timeout), label });
  let vm = await api.get<VmJson>(`/api/v1/vms/${res.vm.id}`);
  if (opts.wait === 'ready') vm = await waitGuestReady(api, vm, deadline);
  makeVmPrinter(print)(vm);
}

/** Polls the VM until its guest is up; an error when it stops running or time runs out. */
export async function waitGuestReady(api: ApiClient, first: VmJson, deadline: number): Promise<VmJson> {
  let vm = first;
  const progress = new Progress(`waiting for the guest of ${vm.name} to be up`);
  try {
    while (!vm.guest_ready_at) {
      progress.update(null);
      if (vm.state !== 'running' && vm.state !== 'starting')
        throw new ApiError(
          0,
          'VM_INVALID_STATE',
          `the VM is ${vm.state}${vm.last_error ? ` (${vm.last_error})` : ''}: its guest will not be up`,
        );
      if (Date.now() > deadline)
        throw new ApiError(
          0,
          'TIMEOUT',
          `the guest of ${vm.name} was not up in time (the VM runs; see its console)`,
        );
      await new Promise((r) => setTimeout(r, 500));
      vm = await api.get<VmJson>(`/api/v1/vms/${vm.id}`);
    }
  } finally {
    progress.done(Boolean(vm.guest_ready_at));
  }
  return vm;
}

/**
 * Adds `--network NAME_OR_ID[=IP]` (repeatable) and `--no-network` to `cmd`; the function it
 * answers turns them into a create body's `networks`: undefined (neither flag) lets the manager
 * put one NIC on the default network, as the API and the web UI do.
 */
export function networkOptions(
  cmd: Command,
): (api: ApiClient, value: string[] | boolean | undefined) => Promise<VmNetworkBody[] | undefined> {
  let some = false;
  let none = false;
  cmd
    .option(
      '--network <network[=ip]>',
      'a NIC on this network (name or id), optionally at this address; repeatable (default: one NIC on the default network)',
      (v: string, prev: unknown) => {
        some = true;
        return [...(Array.isArray(prev) ? prev : []), v];
      },
      [],
    )
    .option('--no-network', 'no NIC at all');
  cmd.on('option:no-network', () => {
    none = true;
  });
  return async (api, value) => {
    if (some && none) throw new UsageError('--network and --no-network contradict each other');
    if (none) return [];
    const list = Array.isArray(value) ? value : [];
    if (!list.length) return undefined;
    return Promise.all(
      list.map(async (item) => {
        const at = item.indexOf('=');
        const ref = at < 0 ? item : item.slice(0, at);
        const ip = at < 0 ? undefined : item.slice(at + 1);
        if (!ref || ip === '') {
          throw new UsageError(`--network must be NAME_OR_ID or NAME_OR_ID=IP, not "${item}"`);
        }
        return { network_id: await resolveId(api, KINDS.network, ref), ...(ip ? { ip } : {}) };
      }),
    );
  };
}

export interface VmNetworkBody {
  network_id: string;
  ip?: string;
}

export function makeVmPrinter(print: Parameters<typeof printItem>[0]) {
  return (vm: VmJson) =>
    printItem(print, vm, [
      ['id', vm.id],
      ['name', vm.name],
      ['state', vm.state],
      ['desired', vm.desired_state],
      ['host', vm.host_id],
      ['vcpu', vm.vcpu],
      ['memory', formatMib(vm.mem_mib)],
      ['vmm', vm.vmm],
      [
        'addresses',
        vm.networks
          .map((n) => n.ip)
          .filter(Boolean)
          .join(', ') || null,
      ],
      ['labels', Object.keys(vm.labels).length ? vm.labels : null],
      ['guest up', vm.guest_ready_at ? `${vm.guest_ready_at} (${vm.guest_ready_signal})` : null],
      ['last error', vm.last_error],
      ['created', vm.created_at],
    ]);
}

export function vmCommand(): Command {
  const vm = new Command('vm').description('create, list and control VMs');

  vm.command('list')
    .alias('ls')
    .description('list VMs')
    .option('--state <state>', 'only VMs in this state')
    .option('--host <host>', 'only VMs on this host (name or id)')
    .option('-l, --label <key=value>', 'only VMs with this label')
    .option('--name <prefix>', 'only VMs whose name starts with this')
    .addHelpText(
      'after',
      '\nExamples:\n  $ nqvm vm list\n  $ nqvm vm list --state running -o json | jq -r ".[].name"',
    )
    .action(
      action(async (opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const hostId = opts.host ? await resolveId(api, KINDS.host, opts.host) : undefined;
        const items = await api.all<VmJson>('/api/v1/vms', {
          state: opts.state,
          host_id: hostId,
          label: opts.label,
          name: opts.name,
        });
        printList(print, items, items, [
          { header: 'NAME', value: (v) => v.name },
          { header: 'STATE', value: (v) => v.state, colour: stateColour },
          { header: 'VCPU', value: (v) => v.vcpu },
          { header: 'MEMORY', value: (v) => formatMib(v.mem_mib) },
          { header: 'VMM', value: (v) => v.vmm },
          {
            header: 'IP',
            value: (v) =>
              v.networks
                .map((n) => n.ip)
                .filter(Boolean)
                .join(','),
          },
          { header: 'AGE', value: (v) => age(v.created_at) },
          { header: 'ID', value: (v) => v.id },
        ]);
      }),
    );

  vm.command('show')
    .alias('get')
    .argument('<vm>', 'name or id')
    .description('show one VM')
    .action(
      action(async (name: string, _opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const id = await resolveId(api, KINDS.vm, name);
        makeVmPrinter(print)(await api.get<VmJson>(`/api/v1/vms/${id}`));
      }),
    );

  const create = vm
    .command('create')
    .argument('<name>', 'VM name (letters, digits, . _ -)')
    .description('create a VM (and start it, unless --no-start)')
    .option('--vcpu <n>', 'virtual CPUs', '1')
    .option('--mem <size>', 'memory, e.g. 256M or 1G', '256M')
    .option('--kernel <image>', 'kernel image (name or id; default: the default kernel)')
    .option('--initrd <image>', 'initrd image (name or id)')
    .option('--rootfs <image>', 'root file system image (name or id; default: the default rootfs)')
    .option('--disk-size <size>', "grow the VM's root disk to this size, e.g. 2G")
    .option('--boot-args <args>', 'kernel command line')
    .addOption(new Option('--vmm <vmm>', 'VMM (default: the host chooses)').choices(['firecracker', 'qemu']))
    .option('--volume <volume>', 'attach this data volume (name or id; repeatable)', collect, [])
    .option('--hostname <name>', 'guest host name (default: the VM name)')
    .option('--user <name>', 'guest user to create')
    .option('--password-stdin', "read the guest user's password from standard input")
    .option('--ask-password', "ask for the guest user's password")
    .option('--ssh-key <key-or-file>', 'an SSH public key, or a file holding one (repeatable)', collect, [])
    .option('--user-data <file>', 'cloud-init user-data to merge in')
    .addOption(
      new Option('--guest-config <mode>', 'how the settings reach the guest')
        .choices(['auto', 'cloud-init', 'inject', 'none'])
        .default('auto'),
    )
    .addOption(
      new Option('--restart <policy>', 'restart policy')
        .choices(['never', 'on-failure', 'always'])
        .default('never'),
    )
    .option('-l, --label <key=value>', 'label (repeatable)', collect, [])
    .option('--no-start', 'create it stopped')
    .addHelpText(
      'after',
      `
Examples:
  $ nqvm vm create web1                                # one NIC on the default network
  $ nqvm vm create web2 --network lan --network dmz=10.20.0.5
  $ nqvm vm create offline --no-network
  $ nqvm vm create db1 --vcpu 2 --mem 1G --disk-size 4G --user alice --ssh-key ~/.ssh/id_ed25519.pub
  $ echo "$PW" | nqvm vm create box --user alice --password-stdin -o json
  $ nqvm vm create web3 --no-wait -o json | jq -r .operation.id`,
    );
  const networks = networkOptions(create);
  waitOptions(create).action(
    action(async (name: string, opts, cmd: Command) => {
      const { api, print } = await session(cmd);
      const image = (v: string | undefined) =>
        v ? resolveId(api, KINDS.image, v) : Promise.resolve(undefined);
      let password: string | undefined;
      if (opts.passwordStdin) password = await readStdinLine();
      else if (opts.askPassword) password = await askHidden('Guest password: ');
      const keys = (opts.sshKey as string[]).map((k) =>
        /^(ssh-|ecdsa-|sk-)/.test(k) ? k : readFileSync(k, 'utf8').trim(),
      );
      const body = {
        name,
        vcpu: Number(opts.vcpu),
        mem_mib: parseMib(opts.mem, '--mem'),
        kernel_image_id: await image(opts.kernel),
        initrd_image_id: await image(opts.initrd),
        rootfs_image_id: await image(opts.rootfs),
        disk_size_mib: opts.diskSize ? parseMib(opts.diskSize, '--disk-size') : undefined,
        boot_args: opts.bootArgs,
        vmm: opts.vmm,
        networks: await networks(api, opts.network),
        ...((opts.volume as string[]).length
          ? {
              volumes: await Promise.all(
                (opts.volume as string[]).map(async (v) => ({
                  volume_id: await resolveId(api, KINDS.volume, v),
                })),
              ),
            }
          : {}),
        guest_config: {
          mode: opts.guestConfig,
          hostname: opts.hostname,
          username: opts.user,
          password,
          ssh_authorized_keys: keys.length ? keys : undefined,
          user_data: opts.userData ? readFileSync(opts.userData, 'utf8') : undefined,
        },
        restart_policy: opts.restart,
        labels: parseLabels(opts.label),
        start: opts.start,
      };
      const res = await api.post<VmAction>('/api/v1/vms', body);
      await finish(api, print, res, opts, `creating ${name}`);
    }),
  );

  const simple: Array<[string, string, string]> = [
    ['start', 'start a stopped VM', 'starting'],
    ['pause', 'pause a running VM (its vCPUs stop; memory stays)', 'pausing'],
    ['resume', 'resume a paused VM', 'resuming'],
    ['reboot', 'reboot a VM', 'rebooting'],
  ];
  for (const [verb, description, label] of simple) {
    waitOptions(vm.command(verb).argument('<vm>', 'name or id').description(description)).action(
      action(async (name: string, opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const id = await resolveId(api, KINDS.vm, name);
        const res = await api.post<VmAction>(`/api/v1/vms/${id}/${verb}`, {});
        await finish(api, print, res, opts, `${label} ${name}`);
      }),
    );
  }

  waitOptions(
    vm
      .command('stop')
      .argument('<vm>', 'name or id')
      .description('stop a VM: ACPI power button first, forced after --grace seconds')
      .option('-f, --force', 'stop at once, like pulling the plug')
      .option('--grace <s>', 'seconds the guest gets to shut down', '30'),
  ).action(
    action(async (name: string, opts, cmd: Command) => {
      const { api, print } = await session(cmd);
      const id = await resolveId(api, KINDS.vm, name);
      const res = await api.post<VmAction>(`/api/v1/vms/${id}/stop`, {
        force: Boolean(opts.force),
        timeout_s: Number(opts.grace),
      });
      await finish(api, print, res, opts, `stopping ${name}`);
    }),
  );

  waitOptions(
    vm
      .command('delete')
      .alias('rm')
      .argument('<vm>', 'name or id')
      .description('delete a VM and its disk (refused while it runs, unless --force)')
      .option('-f, --force', 'delete even if it runs')
      .option('--delete-volumes', 'delete its data volumes too (kept by default)'),
  ).action(
    action(async (name: string, opts, cmd: Command) => {
      const { api, print } = await session(cmd);
      const id = await resolveId(api, KINDS.vm, name);
      const res = await api.delete<{ operation?: OperationLike } | null>(`/api/v1/vms/${id}`, {
        force: opts.force ? 'true' : undefined,
        delete_volumes: opts.deleteVolumes ? 'true' : undefined,
      });
      if (!opts.wait && res?.operation) {
        printAccepted(print, res, [res.operation], () => undefined);
        return;
      }
      if (res?.operation) {
        await waitOperation(api, res.operation, {
          timeoutS: Number(opts.timeout),
          label: `deleting ${name}`,
        });
      }
      process.stderr.write(`deleted ${name}\n`);
    }),
  );

  vm.command('logs')
    .argument('<vm>', 'name or id')
    .description("print the VM's recent serial console output")
    .option('-n, --tail <bytes>', 'how many bytes of the end', '65536')
    .action(
      action(async (name: string, opts, cmd: Command) => {
        const { api } = await session(cmd);
        const id = await resolveId(api, KINDS.vm, name);
        const text = await api.request<string>('GET', `/api/v1/vms/${id}/console`, {
          query: { tail: Number(opts.tail) },
          headers: { accept: 'application/octet-stream' },
        });
        process.stdout.write(text ?? '');
      }),
    );

  addConsoleCommand(vm);
  addExecCommand(vm, KINDS.vm);
  addMetricsCommand(vm);
  return vm;
}
