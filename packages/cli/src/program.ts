import { VERSION } from '@nqvm/manager/manager';
import { Command, Option } from 'commander';
import { hostCommand, joinTokenCommand, opCommand, tokenCommand, userCommand } from './commands/admin';
import { agentCommand } from './commands/agent';
import { auditCommand } from './commands/audit';
import { completionCommand } from './commands/completion';
import { containerCommand } from './commands/container';
import { guestAgentCommand } from './commands/guest-agent';
import { imageCommand } from './commands/image';
import { contextCommand, loginCommand, logoutCommand } from './commands/login';
import { networkCommand, portForwardCommand } from './commands/network';
import { serverCommand } from './commands/server';
import { snapshotCommand } from './commands/snapshot';
import { templateCommand } from './commands/template';
import { upCommand } from './commands/up';
import { vmCommand } from './commands/vm';
import { volumeCommand } from './commands/volume';

export function buildProgram(): Command {
  const program = new Command('nqvm')
    .description('Manage Firecracker and QEMU microVMs: control plane, host agent, web UI and API client.')
    .version(VERSION, '-V, --version', 'print the nqvm version')
    .showHelpAfterError('(run with --help for usage)')
    .option('--server <url>', 'manager URL (env NQVM_URL; default: the current context)')
    .option('--token <token>', 'API token (env NQVM_TOKEN; default: the current context)')
    .option('--context <name>', 'use this saved context (env NQVM_CONTEXT)')
    .addOption(
      new Option('-o, --output <format>', 'output format')
        .choices(['table', 'json', 'yaml'])
        .default('table'),
    )
    .option('--ca-file <pem>', "trust the manager's certificate through these CA certificates")
    .option('--tls-fingerprint <sha256>', 'trust exactly this manager certificate (sha256 of its DER)')
    .addHelpText(
      'after',
      `
Examples:
  $ nqvm up                                  # manager + local agent + web UI on the embedded SQLite store
  $ nqvm login http://127.0.0.1:8080         # keep an API token for the CLI
  $ nqvm vm create web1 --mem 512M           # create and start a VM, waiting until it runs
  $ nqvm vm list -o json                     # for scripts
  $ nqvm vm exec web1 -- uname -a            # a command in the guest; exits with its code
  $ nqvm snapshot create web1 --name before  # restore or clone it later
  $ nqvm container run -d -p 8080:80 nginx   # an OCI image as its own microVM
  $ nqvm server                              # a manager only (DATABASE_URL=postgres://... for several)

Exit codes: 0 success, 1 the API refused or failed (its error code is printed), 2 a usage error.
Servers are configured from the environment; see README.md ("Configuration").`,
    );
  program.addCommand(serverCommand());
  program.addCommand(upCommand());
  program.addCommand(agentCommand());
  program.addCommand(loginCommand());
  program.addCommand(logoutCommand());
  program.addCommand(contextCommand());
  program.addCommand(vmCommand());
  program.addCommand(snapshotCommand());
  program.addCommand(containerCommand());
  program.addCommand(imageCommand());
  program.addCommand(volumeCommand());
  program.addCommand(templateCommand());
  program.addCommand(networkCommand());
  program.addCommand(portForwardCommand());
  program.addCommand(hostCommand());
  program.addCommand(joinTokenCommand());
  program.addCommand(tokenCommand());
  program.addCommand(userCommand());
  program.addCommand(opCommand());
  program.addCommand(auditCommand());
  program.addCommand(guestAgentCommand());
  program.addCommand(completionCommand(() => program));
  // Usage mistakes exit 2 (commander's own default is 1); --help and --version exit 0.
  const walk = (c: Command) => {
    c.exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2));
    c.commands.forEach(walk);
  };
  walk(program);
  return program;
}
