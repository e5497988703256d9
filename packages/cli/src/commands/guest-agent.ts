import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { guestAgentDriveFiles } from '@nqvm/agent/guest-config/guest-agent-install';
import { Command } from 'commander';

/**
 * `nqvm guest-agent files DIR`: the guest agent for an image without cloud-init, to install by
 * hand (cloud-init guests get it from their config drive).
 */
export function guestAgentCommand(): Command {
  const cmd = new Command('guest-agent').description(
    "nqvm's guest agent (exec, clean shutdown, re-addressing of clones) for guests nqvm did not build",
  );
  cmd
    .command('files')
    .argument('<dir>', 'folder to write the binary and its installer into')
    .description(
      'write the static guest agent and its installer, to install into an image without cloud-init',
    )
    .addHelpText(
      'after',
      [
        '',
        'Cloud-init guests need none of this: their config drive carries both and cloud-init runs the installer.',
        'In an image without cloud-init, copy the folder in and run the installer once as root (or with',
        'NQVM_ROOT=/mnt/image against a mounted image): it installs the agent and a systemd unit that',
        'starts it at every boot, reading its token from the config drive nqvm attaches.',
        '',
        'Example:',
        '  $ nqvm guest-agent files ./ga && sudo NQVM_ROOT=/mnt/image sh ./ga/nqvm-guest-agent-install.sh',
      ].join('\n'),
    )
    .action(async (dir: string) => {
      const files = await guestAgentDriveFiles(undefined, (m) => process.stderr.write(`${m}\n`));
      await mkdir(dir, { recursive: true });
      for (const [name, content] of files) {
        await writeFile(path.join(dir, name), content, { mode: 0o755 });
        process.stdout.write(`${path.join(dir, name)}\n`);
      }
    });
  return cmd;
}
