/**
 * `nqvm host`, `nqvm join-token`, `nqvm token`, `nqvm user` and `nqvm op`: hosts, credentials
 * and the operations the manager runs.
 */
import { Command, Option } from 'commander';
import { age, formatMib, type Page, printItem, printList, printPage, stateColour } from '../client/output';
import { askHidden, readStdinLine } from '../client/prompt';
import {
  action,
  KINDS,
  type OperationLike,
  parseLimit,
  printAccepted,
  resolveId,
  session,
  waitOperation,
} from '../client/session';

interface HostJson {
  id: string;
  name: string;
  address: string;
  status: string;
  schedulable: boolean;
  capacity: { vcpu: number; mem_mib: number; disk_mib: number };
  allocated: { vcpu: number; mem_mib: number; disk_mib: number };
  agent_version: string | null;
  last_heartbeat_at: string | null;
}

export function hostCommand(): Command {
  const host = new Command('host').description('hypervisor hosts running the nqvm agent');
  host
    .command('list')
    .alias('ls')
    .description('list hosts with their capacity')
    .action(
      action(async (_opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const items = await api.all<HostJson>('/api/v1/hosts');
        printList(print, items, items, [
          { header: 'NAME', value: (h) => h.name },
          { header: 'STATUS', value: (h) => h.status, colour: stateColour },
          {
            header: 'SCHEDULING',
            value: (h) => (h.schedulable ? 'schedulable' : 'cordoned'),
            colour: stateColour,
          },
          { header: 'VCPU', value: (h) => `${h.allocated.vcpu}/${h.capacity.vcpu}` },
          {
            header: 'MEMORY',
            value: (h) => `${formatMib(h.allocated.mem_mib)}/${formatMib(h.capacity.mem_mib)}`,
          },
          { header: 'HEARTBEAT', value: (h) => age(h.last_heartbeat_at) },
          { header: 'ADDRESS', value: (h) => h.address },
          { header: 'ID', value: (h) => h.id },
        ]);
      }),
    );
  host
    .command('show')
    .argument('<host>', 'name or id')
    .description('show one host')
    .action(
      action(async (name: string, _opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        printItem(print, await api.get<HostJson>(`/api/v1/hosts/${await resolveId(api, KINDS.host, name)}`));
      }),
    );
  for (const [verb, description] of [
    ['cordon', 'stop placing new VMs on a host'],
    ['uncordon', 'place new VMs on a host again'],
  ] as const) {
    host
      .command(verb)
      .argument('<host>', 'name or id')
      .description(description)
      .action(
        action(async (name: string, _opts, cmd: Command) => {
          const { api, print } = await session(cmd);
          const id = await resolveId(api, KINDS.host, name);
          const h = await api.post<HostJson>(`/api/v1/hosts/${id}/${verb}`, {});
          printItem(print, h, [
            ['name', h.name],
            ['schedulable', h.schedulable],
          ]);
        }),
      );
  }
  host
    .command('drain')
    .argument('<host>', 'name or id')
    .description('cordon a host and stop its VMs (--release also frees them for other hosts)')
    .option('--release', 'hand the stopped VMs back to the scheduler (their disks on this host are deleted)')
    .option('--grace <s>', 'seconds each guest gets to shut down', '30')
    .option('--no-wait', 'do not wait for the VMs to stop')
    .action(
      action(async (name: string, opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const id = await resolveId(api, KINDS.host, name);
        const res = await api.post<{ host: HostJson; operations: OperationLike[]; released: string[] }>(
          `/api/v1/hosts/${id}/drain`,
          { mode: opts.release ? 'release' : 'stop', timeout_s: Number(opts.grace) },
        );
        const table = () =>
          printItem(print, res, [
            ['host', res.host.name],
            ['stopping', res.operations.length],
            ['released', res.released.length],
          ]);
        if (!opts.wait) {
          printAccepted(print, res, res.operations, table);
          return;
        }
        for (const op of res.operations) await waitOperation(api, op, { label: `stopping VMs on ${name}` });
        table();
      }),
    );
  host
    .command('remove')
    .alias('rm')
    .argument('<host>', 'name or id')
    .description('remove a host that has no VMs')
    .action(
      action(async (name: string, _opts, cmd: Command) => {
        const { api } = await session(cmd);
        await api.delete(`/api/v1/hosts/${await resolveId(api, KINDS.host, name)}`);
        process.stderr.write(`removed host ${name}\n`);
      }),
    );
  return host;
}

export function joinTokenCommand(): Command {
  const jt = new Command('join-token').description('one-time tokens that let a new agent join');
  jt.command('create')
    .description('create a join token (printed once) for `nqvm agent --join-token`')
    .option('--ttl <s>', 'seconds it stays valid', '3600')
    .option('--description <text>', 'what it is for')
    .action(
      action(async (opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const t = await api.post<{ token: string; expires_at: string }>('/api/v1/join-tokens', {
          ttl_s: Number(opts.ttl),
          description: opts.description,
        });
        if (print.format !== 'table') printItem(print, t);
        else process.stdout.write(`${t.token}\n`);
        process.stderr.write(
          `valid until ${t.expires_at}; on the new host run:\n  nqvm agent --manager ${api.conn.server} --join-token <token>\n`,
        );
      }),
    );
  return jt;
}

interface TokenJson {
  id: string;
  name: string;
  prefix: string;
  role: string;
  expires_at: string | null;
  last_used_at: string | null;
  revoked_at: string | null;
  created_at: string;
}

export function tokenCommand(): Command {
  const token = new Command('token').description('API tokens for scripts and the CLI');
  token
    .command('list')
    .alias('ls')
    .description('list your API tokens')
    .action(
      action(async (_opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const items = await api.all<TokenJson>('/api/v1/tokens');
        printList(print, items, items, [
          { header: 'NAME', value: (t) => t.name },
          { header: 'PREFIX', value: (t) => t.prefix },
          { header: 'ROLE', value: (t) => t.role },
          { header: 'EXPIRES', value: (t) => t.expires_at },
          { header: 'LAST USED', value: (t) => (t.last_used_at ? `${age(t.last_used_at)} ago` : null) },
          { header: 'REVOKED', value: (t) => t.revoked_at },
          { header: 'ID', value: (t) => t.id },
        ]);
      }),
    );
  token
    .command('create')
    .argument('<name>')
    .description('create an API token (printed once)')
    .addOption(new Option('--role <role>', 'at most your own role').choices(['viewer', 'operator', 'admin']))
    .option('--expires-in-days <n>', 'lifetime in days', '90')
    .action(
      action(async (name: string, opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const t = await api.post<TokenJson & { token: string }>('/api/v1/tokens', {
          name,
          role: opts.role,
          expires_in_days: Number(opts.expiresInDays),
        });
        if (print.format !== 'table') printItem(print, t);
        else process.stdout.write(`${t.token}\n`);
      }),
    );
  token
    .command('revoke')
    .argument('<token>', 'name or id')
    .description('revoke an API token')
    .action(
      action(async (name: string, _opts, cmd: Command) => {
        const { api } = await session(cmd);
        await api.delete(`/api/v1/tokens/${await resolveId(api, KINDS.token, name)}`);
        process.stderr.write(`revoked ${name}\n`);
      }),
    );
  return token;
}

interface UserJson {
  id: string;
  username: string;
  role: string;
  disabled: boolean;
  created_at: string;
}

async function newPassword(opts: { passwordStdin?: boolean }): Promise<string> {
  return opts.passwordStdin ? readStdinLine() : askHidden('New password: ');
}

export function userCommand(): Command {
  const user = new Command('user').description('users and their roles (admin)');
  user
    .command('list')
    .alias('ls')
    .description('list users')
    .action(
      action(async (_opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const items = await api.all<UserJson>('/api/v1/users');
        printList(print, items, items, [
          { header: 'USER', value: (u) => u.username },
          { header: 'ROLE', value: (u) => u.role },
          { header: 'DISABLED', value: (u) => (u.disabled ? 'yes' : '') },
          { header: 'AGE', value: (u) => age(u.created_at) },
          { header: 'ID', value: (u) => u.id },
        ]);
      }),
    );
  user
    .command('create')
    .argument('<username>')
    .description('create a user (the password is asked, or read with --password-stdin)')
    .addOption(new Option('--role <role>', 'role').choices(['viewer', 'operator', 'admin']).default('viewer'))
    .option('--password-stdin', 'read the password from standard input')
    .action(
      action(async (username: string, opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const password = await newPassword(opts);
        printItem(print, await api.post<UserJson>('/api/v1/users', { username, password, role: opts.role }));
      }),
    );
  user
    .command('set')
    .argument('<user>', 'user name or id')
    .description("change a user's role, password or disabled flag")
    .addOption(new Option('--role <role>', 'new role').choices(['viewer', 'operator', 'admin']))
    .option('--password', 'set a new password (asked, or --password-stdin)')
    .option('--password-stdin', 'read the new password from standard input')
    .option('--disable', 'disable the user')
    .option('--enable', 'enable the user')
    .action(
      action(async (name: string, opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const id = await resolveId(api, KINDS.user, name);
        const body: Record<string, unknown> = {};
        if (opts.role) body.role = opts.role;
        if (opts.password || opts.passwordStdin) body.password = await newPassword(opts);
        if (opts.disable) body.disabled = true;
        if (opts.enable) body.disabled = false;
        printItem(print, await api.patch<UserJson>(`/api/v1/users/${id}`, body));
      }),
    );
  user
    .command('delete')
    .alias('rm')
    .argument('<user>', 'user name or id')
    .description('delete a user')
    .action(
      action(async (name: string, _opts, cmd: Command) => {
        const { api } = await session(cmd);
        await api.delete(`/api/v1/users/${await resolveId(api, KINDS.user, name)}`);
        process.stderr.write(`deleted user ${name}\n`);
      }),
    );
  return user;
}

interface OperationJson extends OperationLike {
  target: { type: string; id: string };
  created_at: string;
}

export function opCommand(): Command {
  const op = new Command('op').description(
    'operations: long work the manager runs (create, stop, import...)',
  );
  op.command('list')
    .alias('ls')
    .description('list operations, newest first, one page at a time')
    .addOption(
      new Option('--status <status>', 'only this status').choices([
        'queued',
        'running',
        'succeeded',
        'failed',
        'cancelled',
      ]),
    )
    .option('--kind <kind>', 'only this kind, e.g. vm.create')
    .option('--target <id>', 'only operations on this resource id')
    .option('--limit <n>', 'operations per page (1-500)', '50')
    .option('--cursor <cursor>', 'the page after a previous one (its "next")')
    .option('--all', 'every page')
    .addHelpText(
      'after',
      `
Examples:
  $ nqvm op list                                  # the 50 newest
  $ nqvm op list --status failed --kind vm.create
  $ nqvm op list --limit 20 --cursor <next>       # the page after (table: printed on stderr)
  $ nqvm op list --all -o json | jq -r '.items[].id'`,
    )
    .action(
      action(async (opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const query = { status: opts.status, kind: opts.kind, target_id: opts.target };
        const limit = parseLimit(opts.limit);
        const page: Page<OperationJson> = opts.all
          ? { items: await api.all<OperationJson>('/api/v1/operations', query), next: null }
          : await api.get<Page<OperationJson>>('/api/v1/operations', {
              ...query,
              limit,
              cursor: opts.cursor,
            });
        printPage(print, page, [
          { header: 'KIND', value: (o) => o.kind },
          { header: 'STATUS', value: (o) => o.status, colour: stateColour },
          { header: 'PROGRESS', value: (o) => `${Math.round(o.progress.percent)}%` },
          { header: 'TARGET', value: (o) => `${o.target.type}/${o.target.id}` },
          { header: 'AGE', value: (o) => age(o.created_at) },
          { header: 'ERROR', value: (o) => (o.error ? `${o.error.code}: ${o.error.message}` : null) },
          { header: 'ID', value: (o) => o.id },
        ]);
      }),
    );
  op.command('wait')
    .argument('<id>', 'operation id')
    .description('wait for an operation to end (exit 1 when it failed)')
    .option('--timeout <s>', 'give up after this many seconds', '600')
    .action(
      action(async (id: string, opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const current = await api.get<OperationJson>(`/api/v1/operations/${id}`);
        const done = await waitOperation(api, current, { timeoutS: Number(opts.timeout) });
        printItem(print, done, [
          ['id', done.id],
          ['kind', done.kind],
          ['status', done.status],
        ]);
      }),
    );
  op.command('cancel')
    .argument('<id>', 'operation id')
    .description('cancel an operation where the work can stop')
    .action(
      action(async (id: string, _opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        printItem(print, await api.post<OperationJson>(`/api/v1/operations/${id}/cancel`, {}));
      }),
    );
  return op;
}
