/**
 * `nqvm snapshot ...`: a VM frozen at one instant (memory, devices, disk), restored in place or
 * made into a new VM. Names or ids wherever a snapshot or VM is taken; snapshot names are unique
 * per VM, so a snapshot is `NAME` when only one VM has one by that name, else `VM/NAME`.
 */
import type { Snapshot, SnapshotInstantiateResponse } from '@nqvm/api/snapshots';
import { Command, Option } from 'commander';
import { type ApiClient, ApiError } from '../client/api';
import {
  age,
  formatBytes,
  formatMib,
  type Printer,
  printItem,
  printList,
  stateColour,
} from '../client/output';
import { ask } from '../client/prompt';
import {
  action,
  KINDS,
  type OperationLike,
  printAccepted,
  resolveId,
  session,
  waitOperation,
} from '../client/session';
import { collect, finish, parseLabels, type VmAction, waitOptions } from './vm';

interface SnapshotAction {
  snapshot: Snapshot;
  operation: OperationLike;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const SNAPSHOT_REF = 'id, NAME, or VM/NAME when several VMs have a snapshot NAME';

/**
 * The snapshot `ref` means: an id, `VM/NAME` (VM by name or id, also a deleted VM's name), or a
 * `NAME` only one snapshot has (of `vm`, when given).
 *
 * @example
 * await resolveSnapshot(api, 'web1/before-upgrade');
 */
export async function resolveSnapshot(api: ApiClient, ref: string, vm?: string): Promise<Snapshot> {
  if (UUID.test(ref)) return api.get<Snapshot>(`/api/v1/snapshots/${ref.toLowerCase()}`);
  const slash = ref.indexOf('/');
  const name = slash < 0 ? ref : ref.slice(slash + 1);
  const of = slash < 0 ? vm : ref.slice(0, slash);
  const hits = (await api.all<Snapshot>('/api/v1/snapshots', { name })).filter(
    (s) => s.name === name && (!of || s.vm_id === of.toLowerCase() || s.vm_name === of),
  );
  const [only] = hits;
  if (hits.length === 1 && only) return only;
  if (!only)
    throw new ApiError(404, 'SNAPSHOT_NOT_FOUND', `no snapshot named "${name}"${of ? ` of VM ${of}` : ''}`);
  throw new ApiError(
    409,
    'NAME_AMBIGUOUS',
    `${hits.length} snapshots are named "${name}" (of ${hits.map((s) => `${s.vm_name} ${s.id}`).join(', ')}): ` +
      `say which as VM/NAME (e.g. ${only.vm_name}/${name}) or by id`,
  );
}

function printSnapshot(print: Printer, s: Snapshot): void {
  printItem(print, s, [
    ['id', s.id],
    ['name', s.name],
    ['description', s.description],
    ['vm', s.vm_id ? `${s.vm_name} (${s.vm_id})` : `${s.vm_name} (deleted)`],
    ['host', s.host_id],
    ['type', s.snapshot_type],
    ['parent', s.parent_id],
    ['status', s.status],
    ['vmm', s.vmm],
    ['vcpu', s.vcpu],
    ['memory', formatMib(s.mem_mib)],
    ['size', formatBytes(s.size_bytes)],
    [
      'files',
      s.sizes
        ? `memory ${formatBytes(s.sizes.memory_bytes)}, disk ${formatBytes(s.sizes.disk_bytes)}, state ${formatBytes(s.sizes.state_bytes)}`
        : null,
    ],
    ['guest agent', s.guest_agent ? 'yes' : 'no'],
    ['error', s.error],
    ['created by', s.created_by],
    ['created', s.created_at],
  ]);
}

export function snapshotCommand(): Command {
  const snapshot = new Command('snapshot')
    .description('VM snapshots: restore a VM in place, or clone it')
    .addHelpText(
      'after',
      `
Examples:
  $ nqvm snapshot create web1 --name before
  $ nqvm snapshot restore web1/before
  $ nqvm snapshot instantiate web1/before --name web1-copy

A snapshot is named by its id, its NAME, or VM/NAME when several VMs have one called NAME
(names are unique per VM).`,
    );

  snapshot
    .command('list')
    .alias('ls')
    .description('list snapshots')
    .option('--vm <vm>', "only this VM's snapshots (name or id)")
    .option('--host <host>', 'only snapshots kept on this host (name or id)')
    .addOption(
      new Option('--status <status>', 'only snapshots in this state').choices([
        'creating',
        'ready',
        'failed',
        'deleting',
      ]),
    )
    .addHelpText('after', '\nExamples:\n  $ nqvm snapshot list --vm web1\n  $ nqvm snapshot list -o json')
    .action(
      action(async (opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const items = await api.all<Snapshot>('/api/v1/snapshots', {
          vm_id: opts.vm ? await resolveId(api, KINDS.vm, opts.vm) : undefined,
          host_id: opts.host ? await resolveId(api, KINDS.host, opts.host) : undefined,
          status: opts.status,
        });
        printList(print, items, items, [
          { header: 'NAME', value: (s) => s.name },
          { header: 'VM', value: (s) => (s.vm_id ? s.vm_name : `${s.vm_name} (deleted)`) },
          { header: 'TYPE', value: (s) => s.snapshot_type },
          { header: 'STATUS', value: (s) => s.status, colour: stateColour },
          { header: 'SIZE', value: (s) => formatBytes(s.size_bytes) },
          { header: 'MEMORY', value: (s) => formatMib(s.mem_mib) },
          { header: 'VMM', value: (s) => s.vmm },
          { header: 'AGE', value: (s) => age(s.created_at) },
          { header: 'ID', value: (s) => s.id },
        ]);
      }),
    );

  snapshot
    .command('show')
    .alias('get')
    .argument('<snapshot>', SNAPSHOT_REF)
    .description('show one snapshot')
    .addHelpText(
      'after',
      '\nExamples:\n  $ nqvm snapshot show web1/before\n  $ nqvm snapshot show before -o json',
    )
    .action(
      action(async (ref: string, _opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        printSnapshot(print, await resolveSnapshot(api, ref));
      }),
    );

  waitOptions(
    snapshot
      .command('create')
      .argument('<vm>', 'the running or paused VM (name or id)')
      .description('snapshot a VM: it pauses while its memory and disk are written, then runs on')
      .requiredOption('--name <snapshot>', "the snapshot name (unique among the VM's snapshots)")
      .option('--diff', 'only the memory written since its previous snapshot (Firecracker only)')
      .option('--description <text>', 'what the snapshot is for')
      .addHelpText(
        'after',
        `
Examples:
  $ nqvm snapshot create web1 --name before-upgrade
  $ nqvm snapshot create web1 --name t2 --diff --description "after the migration"`,
      ),
  ).action(
    action(async (vm: string, opts, cmd: Command) => {
      const { api, print } = await session(cmd);
      const vmId = await resolveId(api, KINDS.vm, vm);
      const res = await api.post<SnapshotAction>(`/api/v1/vms/${vmId}/snapshots`, {
        name: opts.name,
        snapshot_type: opts.diff ? 'Diff' : 'Full',
        description: opts.description,
      });
      if (!opts.wait) {
        printAccepted(print, res, [res.operation], () => printSnapshot(print, res.snapshot));
        return;
      }
      await waitOperation(api, res.operation, {
        timeoutS: Number(opts.timeout),
        label: `snapshotting ${vm}`,
      });
      printSnapshot(print, await api.get<Snapshot>(`/api/v1/snapshots/${res.snapshot.id}`));
    }),
  );

  waitOptions(
    snapshot
      .command('restore')
      .argument('<snapshot>', SNAPSHOT_REF)
      .description('return a VM to the state its snapshot froze (it runs from there)')
      .option(
        '--vm <vm>',
        'the VM to restore, whose snapshot NAME is (name or id; default: the one the snapshot is of)',
      )
      .option('-y, --yes', 'do not ask first')
      .addHelpText(
        'after',
        `
What the VM did since the snapshot is lost: on a terminal you are asked first (--yes skips it).
Another VM's snapshot is not restored: make a new VM of it with \`nqvm snapshot instantiate\`.

Examples:
  $ nqvm snapshot restore web1/before-upgrade --yes
  $ nqvm snapshot restore before-upgrade --vm web1`,
      ),
  ).action(
    action(async (ref: string, opts, cmd: Command) => {
      const { api, print } = await session(cmd);
      const snap = await resolveSnapshot(api, ref, opts.vm);
      const vmId = opts.vm ? await resolveId(api, KINDS.vm, opts.vm) : snap.vm_id;
      if (!vmId) {
        throw new ApiError(
          404,
          'VM_NOT_FOUND',
          `the VM of snapshot ${snap.name} is deleted: make a new one with \`nqvm snapshot instantiate ${snap.name} --name NEW\``,
        );
      }
      const vmName = opts.vm ?? snap.vm_name;
      if (process.stdin.isTTY && !opts.yes) {
        const answer = await ask(
          `Restore ${vmName} to ${snap.name} (taken ${age(snap.created_at)} ago)? What it did since is lost. [y/N] `,
        );
        if (!/^y(es)?$/i.test(answer.trim())) throw new Error('cancelled: nothing was restored');
      }
      const res = await api.post<VmAction>(`/api/v1/vms/${vmId}/restore`, { snapshot_id: snap.id });
      await finish(api, print, res, opts, `restoring ${vmName}`);
    }),
  );

  waitOptions(
    snapshot
      .command('instantiate')
      .argument('<snapshot>', SNAPSHOT_REF)
      .description("create a VM from a snapshot (a clone, on the snapshot's host, with new addresses)")
      .requiredOption('--name <vm>', 'the new VM name')
      .option('-l, --label <key=value>', 'label (repeatable)', collect, [])
      .addHelpText(
        'after',
        `
The clone starts where the snapshot froze. What clones share with their source (e.g. the
guest's random state) is printed as warnings on standard error.

Example:
  $ nqvm snapshot instantiate web1/before-upgrade --name web1-copy -l purpose=debug`,
      ),
  ).action(
    action(async (ref: string, opts, cmd: Command) => {
      const { api, print } = await session(cmd);
      const { id } = await resolveSnapshot(api, ref);
      const res = await api.post<SnapshotInstantiateResponse>(`/api/v1/snapshots/${id}/instantiate`, {
        name: opts.name,
        labels: parseLabels(opts.label),
      });
      process.stderr.write(`placement: ${res.placement.reason}\n`);
      for (const w of res.warnings) process.stderr.write(`warning: ${w}\n`);
      await finish(api, print, res as VmAction, opts, `starting ${opts.name}`);
    }),
  );

  snapshot
    .command('delete')
    .alias('rm')
    .argument('<snapshot>', SNAPSHOT_REF)
    .description('delete a snapshot and its files (refused while a Diff builds on it or a VM uses it)')
    .addHelpText('after', '\nExample:\n  $ nqvm snapshot delete web1/before')
    .action(
      action(async (ref: string, _opts, cmd: Command) => {
        const { api } = await session(cmd);
        const { id } = await resolveSnapshot(api, ref);
        await api.delete(`/api/v1/snapshots/${id}`);
        process.stderr.write(`deleted snapshot ${ref}\n`);
      }),
    );
  return snapshot;
}
