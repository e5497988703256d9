/** `nqvm network ...` and `nqvm port-forward ...`: VM networks and the ports they open on hosts. */
import { Command, Option } from 'commander';
import { age, printItem, printList, UsageError } from '../client/output';
import { action, KINDS, resolveId, session } from '../client/session';

interface NetworkJson {
  id: string;
  name: string;
  kind: string;
  cidr: string | null;
  gateway: string | null;
  dhcp: boolean;
  bridge: string | null;
  uplink: string | null;
  is_default: boolean;
  nic_count: number;
  available_on: string[];
  created_at: string;
}

interface PortForwardJson {
  id: string;
  vm_id: string;
  nic_index: number;
  proto: string;
  host_port: number;
  guest_port: number;
  host_id: string | null;
}

const collect = (v: string, prev: string[]) => [...prev, v];

export function networkCommand(): Command {
  const network = new Command('network').description('VM networks: nat, bridged and isolated');
  network
    .command('list')
    .alias('ls')
    .description('list networks')
    .action(
      action(async (_opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const items = await api.all<NetworkJson>('/api/v1/networks');
        printList(print, items, items, [
          { header: 'NAME', value: (n) => `${n.name}${n.is_default ? ' (default)' : ''}` },
          { header: 'KIND', value: (n) => n.kind },
          { header: 'SUBNET', value: (n) => n.cidr },
          { header: 'GATEWAY', value: (n) => n.gateway },
          { header: 'DHCP', value: (n) => (n.dhcp ? 'yes' : '') },
          { header: 'BRIDGE', value: (n) => n.bridge ?? n.uplink },
          { header: 'NICS', value: (n) => n.nic_count },
          { header: 'HOSTS', value: (n) => n.available_on.length },
          { header: 'AGE', value: (n) => age(n.created_at) },
          { header: 'ID', value: (n) => n.id },
        ]);
      }),
    );
  network
    .command('show')
    .argument('<network>', 'name or id')
    .description('show one network')
    .action(
      action(async (name: string, _opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        printItem(
          print,
          await api.get<NetworkJson>(`/api/v1/networks/${await resolveId(api, KINDS.network, name)}`),
        );
      }),
    );
  network
    .command('create')
    .argument('<name>')
    .description('create a network (admin)')
    .addOption(
      new Option('--kind <kind>', 'what it is').choices(['nat', 'bridged', 'isolated']).default('nat'),
    )
    .option('--subnet <cidr>', 'nat, isolated: the prefix VM addresses come from, e.g. 10.213.5.0/24')
    .option('--gateway <ip>', 'the host address on the bridge (default: the first address)')
    .option(
      '--dhcp',
      'nat, isolated: cloud-init configures guests by DHCP (served on every nat/isolated network)',
    )
    .option('--bridge <ifname>', 'bridged: an existing bridge to join (a host must report it)')
    .option(
      '--uplink <ifname>',
      'bridged: an interface to enslave to a new bridge; nat: the way out (a host must report it)',
    )
    .option('--dns <ip>', 'nat: an upstream resolver (repeatable)', collect, [])
    .option('--default', 'VMs created without --network get a NIC here')
    .addHelpText(
      'after',
      `
Examples:
  $ nqvm network create lab --subnet 10.213.5.0/24
  $ nqvm network create lan --kind bridged --uplink eth1
  $ nqvm network create sealed --kind isolated --subnet 10.99.0.0/24

A network naming a bridge or uplink is available on the hosts whose agent reports that
interface (available_on; nqvm host show lists a host's interfaces), and its VMs run only there.`,
    )
    .action(
      action(async (name: string, opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        if (opts.kind !== 'bridged' && !opts.subnet)
          throw new UsageError(`a ${opts.kind} network needs --subnet`);
        printItem(
          print,
          await api.post<NetworkJson>('/api/v1/networks', {
            name,
            kind: opts.kind,
            cidr: opts.subnet,
            gateway: opts.gateway,
            dhcp: Boolean(opts.dhcp),
            bridge: opts.bridge,
            uplink: opts.uplink,
            dns_servers: (opts.dns as string[]).length ? opts.dns : undefined,
            is_default: Boolean(opts.default),
          }),
        );
      }),
    );
  network
    .command('delete')
    .alias('rm')
    .argument('<network>', 'name or id')
    .description('delete a network no VM uses (admin)')
    .action(
      action(async (name: string, _opts, cmd: Command) => {
        const { api } = await session(cmd);
        await api.delete(`/api/v1/networks/${await resolveId(api, KINDS.network, name)}`);
        process.stderr.write(`deleted network ${name}\n`);
      }),
    );
  return network;
}

/** `8080:80`, `8080:80/udp` -> ports and protocol. */
export function parseForward(text: string): { host_port: number; guest_port: number; proto: 'tcp' | 'udp' } {
  const m = /^(\d{1,5}):(\d{1,5})(?:\/(tcp|udp))?$/.exec(text);
  const host = Number(m?.[1]);
  const guest = Number(m?.[2]);
  if (!m || host < 1 || host > 65_535 || guest < 1 || guest > 65_535) {
    throw new UsageError(`a forward is HOST_PORT:GUEST_PORT[/tcp|udp], e.g. 8080:80, not "${text}"`);
  }
  return { host_port: host, guest_port: guest, proto: (m[3] as 'tcp' | 'udp' | undefined) ?? 'tcp' };
}

export function portForwardCommand(): Command {
  const pf = new Command('port-forward').description("ports on a VM's host forwarded to the VM");
  pf.command('list')
    .alias('ls')
    .argument('<vm>', 'name or id')
    .description("list a VM's port forwards")
    .action(
      action(async (vm: string, _opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const id = await resolveId(api, KINDS.vm, vm);
        const page = await api.get<{ items: PortForwardJson[] }>(`/api/v1/vms/${id}/port-forwards`);
        printList(print, page.items, page.items, [
          { header: 'HOST PORT', value: (p) => p.host_port },
          { header: 'GUEST PORT', value: (p) => p.guest_port },
          { header: 'PROTO', value: (p) => p.proto },
          { header: 'NIC', value: (p) => p.nic_index },
          { header: 'ID', value: (p) => p.id },
        ]);
      }),
    );
  pf.command('add')
    .argument('<vm>', 'name or id')
    .argument('<forward>', 'HOST_PORT:GUEST_PORT[/tcp|udp]')
    .option('--nic <n>', 'the NIC whose address receives it', '0')
    .description("forward a port of the VM's host to the VM")
    .addHelpText(
      'after',
      '\nExamples:\n  $ nqvm port-forward add web1 8080:80\n  $ nqvm port-forward add dns1 5353:53/udp',
    )
    .action(
      action(async (vm: string, forward: string, opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const id = await resolveId(api, KINDS.vm, vm);
        printItem(
          print,
          await api.post<PortForwardJson>(`/api/v1/vms/${id}/port-forwards`, {
            ...parseForward(forward),
            nic_index: Number(opts.nic),
          }),
        );
      }),
    );
  pf.command('remove')
    .alias('rm')
    .argument('<vm>', 'name or id')
    .argument('<forward>', 'its id, or HOST_PORT[/tcp|udp]')
    .description('remove a port forward')
    .action(
      action(async (vm: string, forward: string, _opts, cmd: Command) => {
        const { api } = await session(cmd);
        const id = await resolveId(api, KINDS.vm, vm);
        let pfId = forward;
        if (!/^[0-9a-f-]{36}$/i.test(forward)) {
          const m = /^(\d{1,5})(?:\/(tcp|udp))?$/.exec(forward);
          if (!m) throw new UsageError(`give the forward's id or its host port, not "${forward}"`);
          const page = await api.get<{ items: PortForwardJson[] }>(`/api/v1/vms/${id}/port-forwards`);
          const hit = page.items.find((p) => p.host_port === Number(m[1]) && p.proto === (m[2] ?? 'tcp'));
          if (!hit) throw new UsageError(`${vm} has no forward on host port ${forward}`);
          pfId = hit.id;
        }
        await api.delete(`/api/v1/vms/${id}/port-forwards/${pfId}`);
        process.stderr.write(`removed port forward ${forward} of ${vm}\n`);
      }),
    );
  return pf;
}
