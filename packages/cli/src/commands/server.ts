import { ConfigError, createManager, loadManagerConfig } from '@nqvm/manager';
import { Command } from 'commander';
import { printFirstAdmin, waitForSignal } from './run';

export function serverCommand(): Command {
  return new Command('server')
    .description('run a manager (REST API, scheduler, reconciler); configured by environment variables')
    .addHelpText(
      'after',
      '\nExample:\n  $ DATABASE_URL=postgres://nqvm@db/nqvm MANAGER_BIND=0.0.0.0:8080 nqvm server',
    )
    .action(async () => {
      const config = loadConfigOrExit();
      const manager = await createManager(config);
      const url = await manager.listen();
      printFirstAdmin(manager.firstAdmin);
      process.stdout.write(
        `nqvm manager listening on ${url} (datastore ${manager.services.store.describe})\n`,
      );
      await waitForSignal();
      await manager.close();
    });
}

export function loadConfigOrExit(env: NodeJS.ProcessEnv = process.env) {
  try {
    return loadManagerConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`nqvm: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
}
