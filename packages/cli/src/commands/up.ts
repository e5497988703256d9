import { createManager } from '@nqvm/manager';
import { Command } from 'commander';
import { printFirstAdmin, waitForSignal } from './run';
import { loadConfigOrExit } from './server';

export function upCommand(): Command {
  return new Command('up')
    .description(
      'run everything on this machine: manager, a local agent and the web UI, on the embedded SQLite store',
    )
    .addHelpText('after', '\nExample:\n  $ nqvm up            # then open http://127.0.0.1:8080/')
    .action(async () => {
      const env = { ...process.env };
      delete env.DATABASE_URL; // `up` is the embedded, one-host setup
      const config = loadConfigOrExit(env);
      const manager = await createManager(config, { logger: { level: config.logLevel } });
      const url = await manager.listen();
      printFirstAdmin(manager.firstAdmin);
      process.stdout.write(
        [
          `nqvm is up:`,
          `  manager   ${url}  (datastore ${manager.services.store.describe})`,
          `  API docs  ${url}/docs`,
          `  agent     not started: the host agent arrives with its issue`,
          `  web UI    not started: the web UI arrives with its issue`,
          '',
        ].join('\n'),
      );
      await waitForSignal();
      await manager.close();
    });
}
