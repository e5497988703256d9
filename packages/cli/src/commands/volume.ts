/** `nqvm volume ...`: data disks that outlive the VMs they are attached to. */
import { Command, Option } from 'commander';
import { age, formatMib, printItem, printList, stateColour } from '../client/output';
import { action, KINDS, resolveId, session } from '../client/session';
import { parseMib } from './vm';

interface VolumeJson {
  id: string;
  name: string;
  size_mib: number;
  filesystem: string;
  host_id: string | null;
  vm_id: string | null;
  status: string;
  created_at: string;
}

export function volumeCommand(): Command {
  const volume = new Command('volume').description('data volumes: extra disks that outlive their VM');
  volume
    .command('list')
    .alias('ls')
    .description('list volumes')
    .action(
      action(async (_opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const items = await api.all<VolumeJson>('/api/v1/volumes');
        printList(print, items, items, [
          { header: 'NAME', value: (v) => v.name },
          { header: 'SIZE', value: (v) => formatMib(v.size_mib) },
          { header: 'FS', value: (v) => v.filesystem },
          { header: 'STATUS', value: (v) => v.status, colour: stateColour },
          { header: 'VM', value: (v) => v.vm_id },
          { header: 'HOST', value: (v) => v.host_id },
          { header: 'AGE', value: (v) => age(v.created_at) },
          { header: 'ID', value: (v) => v.id },
        ]);
      }),
    );
  volume
    .command('create')
    .argument('<name>')
    .description('create a volume (made on a host when a VM first uses it)')
    .requiredOption('--size <size>', 'size, e.g. 10G')
    .addOption(new Option('--fs <fs>', 'file system to make on it').choices(['ext4', 'none']).default('ext4'))
    .action(
      action(async (name: string, opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        printItem(
          print,
          await api.post<VolumeJson>('/api/v1/volumes', {
            name,
            size_mib: parseMib(opts.size, '--size'),
            filesystem: opts.fs,
          }),
        );
      }),
    );
  volume
    .command('attach')
    .argument('<volume>', 'name or id')
    .argument('<vm>', 'name or id (stopped)')
    .description('attach a volume to a stopped VM')
    .action(
      action(async (vol: string, vm: string, _opts, cmd: Command) => {
        const { api } = await session(cmd);
        const [volumeId, vmId] = await Promise.all([
          resolveId(api, KINDS.volume, vol),
          resolveId(api, KINDS.vm, vm),
        ]);
        await api.post(`/api/v1/vms/${vmId}/volumes`, { volume_id: volumeId });
        process.stderr.write(`attached ${vol} to ${vm}\n`);
      }),
    );
  volume
    .command('detach')
    .argument('<volume>', 'name or id')
    .description('detach a volume from its (stopped) VM')
    .action(
      action(async (vol: string, _opts, cmd: Command) => {
        const { api } = await session(cmd);
        const id = await resolveId(api, KINDS.volume, vol);
        const v = await api.get<VolumeJson>(`/api/v1/volumes/${id}`);
        if (!v.vm_id) {
          process.stderr.write(`${vol} is not attached\n`);
          return;
        }
        await api.delete(`/api/v1/vms/${v.vm_id}/volumes/${id}`);
        process.stderr.write(`detached ${vol}\n`);
      }),
    );
  volume
    .command('delete')
    .alias('rm')
    .argument('<volume>', 'name or id')
    .description('delete a detached volume and its data')
    .action(
      action(async (vol: string, _opts, cmd: Command) => {
        const { api } = await session(cmd);
        await api.delete(`/api/v1/volumes/${await resolveId(api, KINDS.volume, vol)}`);
        process.stderr.write(`deleted volume ${vol}\n`);
      }),
    );
  return volume;
}
