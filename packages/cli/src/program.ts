import { VERSION } from '@nqvm/manager/manager';
import { Command } from 'commander';
import { agentCommand } from './commands/agent';
import { serverCommand } from './commands/server';
import { upCommand } from './commands/up';

export function buildProgram(): Command {
  const program = new Command('nqvm')
    .description('Manage Firecracker and QEMU microVMs: control plane, host agent, web UI and API client.')
    .version(VERSION, '-V, --version', 'print the nqvm version')
    .showHelpAfterError('(run with --help for usage)')
    .addHelpText(
      'after',
      `
Examples:
  $ nqvm up                      # manager + local agent + web UI on the embedded SQLite store
  $ nqvm server                  # a manager only (DATABASE_URL=postgres://... for several)
  $ NQVM_ADMIN_PASSWORD=... nqvm up

Configuration is read from the environment; see README.md ("Configuration").`,
    );
  program.addCommand(serverCommand());
  program.addCommand(upCommand());
  program.addCommand(agentCommand());
  return program;
}
