import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { createAgent, loadAgentConfig } from '@nqvm/agent';
import { ensureBuiltinGuest, ensureContainerInit } from '@nqvm/builtin-guest';
import { createManager, type Manager } from '@nqvm/manager';
import { setCompanionInitrd } from '@nqvm/manager/images/boot-images';
import { Command } from 'commander';
import { ensureDefaultNetwork } from './default-network';
import { printFirstAdmin, waitForSignal } from './run';
import { loadConfigOrExit } from './server';

const run = promisify(execFile);

/**
 * Registers the built-in guest (Debian cloud kernel, busybox initramfs and root disk, built
 * from Debian packages) as the default images, so a newcomer's first VM needs no download.
 */
export async function registerBuiltinGuest(manager: Manager, log: (m: string) => void): Promise<void> {
  const guest = await ensureBuiltinGuest({ onProgress: (m) => log(`  guest: ${m}`) });
  const init = await ensureContainerInit();
  const root = path.join(manager.services.config.imageRoot, 'builtin');
  const guestDir = await copyOnce(path.join(root, path.basename(guest.dir)), [
    guest.kernel,
    guest.initrd,
    guest.rootfs,
  ]);
  const initDir = await copyOnce(path.join(root, `container-init-${path.basename(init.dir)}`), [init.initrd]);
  const at = (dir: string, f: string) => path.join(dir, path.basename(f));
  // Inspected like an import: the bzImage kernel also gets the vmlinux Firecracker loads.
  const images = manager.services.images;
  const kernel = await images.registerBuiltin({
    name: 'builtin-kernel',
    kind: 'kernel',
    path: at(guestDir, guest.kernel),
  });
  const initrd = await images.registerBuiltin({
    name: 'builtin-initrd',
    kind: 'initrd',
    path: at(guestDir, guest.initrd),
  });
  // Its drivers are modules in that initrd: a VM naming the kernel alone boots with it.
  await setCompanionInitrd(manager.services.store, kernel, initrd);
  await images.registerBuiltin({ name: 'builtin-rootfs', kind: 'rootfs', path: at(guestDir, guest.rootfs) });
  // What containers boot (POST /api/v1/containers finds it by this name); not a default initrd.
  await images.registerBuiltin({
    name: 'builtin-container-init',
    kind: 'initrd',
    path: at(initDir, init.initrd),
    isDefault: false,
  });
}

/** Copies `files` into `dir` (made once, atomically; the image root then owns them). */
async function copyOnce(dir: string, files: string[]): Promise<string> {
  if (fs.existsSync(dir)) return dir;
  const tmp = `${dir}.tmp-${process.pid}`;
  fs.mkdirSync(tmp, { recursive: true });
  for (const f of files)
    await run('cp', ['--sparse=always', '--reflink=auto', f, path.join(tmp, path.basename(f))]);
  fs.renameSync(tmp, dir);
  return dir;
}

export function upCommand(): Command {
  return new Command('up')
    .description(
      'run everything on this machine: manager, a local agent and the web UI, on the embedded SQLite store',
    )
    .option(
      '--agent-bind <host:port>',
      'address of the local agent API (AGENT_BIND)',
      process.env.AGENT_BIND ?? '127.0.0.1:9090',
    )
    .option('--no-builtin-images', 'do not build and register the built-in guest as default images')
    .option(
      '--no-default-network',
      'do not create the default NAT network (VMs created without `networks` get a NIC on it)',
    )
    .addHelpText(
      'after',
      '\nExample:\n  $ nqvm up            # then open http://127.0.0.1:8080/ and create a VM',
    )
    .action(async (opts: { agentBind: string; builtinImages: boolean; defaultNetwork: boolean }) => {
      const env = { ...process.env };
      delete env.DATABASE_URL; // `up` is the embedded, one-host setup
      const config = loadConfigOrExit(env);
      const manager = await createManager(config);
      const url = await manager.listen();
      printFirstAdmin(manager.firstAdmin);
      const say = (m: string) => process.stdout.write(`${m}\n`);
      if (opts.builtinImages) {
        say('preparing the built-in guest images (first run downloads the Debian cloud kernel package)...');
        await registerBuiltinGuest(manager, say);
      }
      if (opts.defaultNetwork) say(await ensureDefaultNetwork(manager));
      const stateDir = env.FC_RUN_DIR ?? path.join(config.dataDir, 'agent');
      const firstStart = !fs.existsSync(path.join(stateDir, 'identity.json'));
      const join = firstStart
        ? await manager.services.hosts.createJoinToken({ ttl_s: 600, description: 'nqvm up' }, 'nqvm up')
        : null;
      const agent = await createAgent(
        loadAgentConfig({
          ...env,
          MANAGER_BASE: url,
          AGENT_BIND: opts.agentBind,
          FC_RUN_DIR: stateDir,
          ...(join ? { NQVM_JOIN_TOKEN: join.token } : {}),
        }),
      );
      say(
        [
          'nqvm is up:',
          `  manager   ${url}  (datastore ${manager.services.store.describe})`,
          `  API docs  ${url}/docs`,
          `  agent     ${agent.url}  (host ${agent.hostId}, state in ${stateDir})`,
          `  web UI    ${url}/`,
          '',
        ].join('\n'),
      );
      const why = await Promise.race([waitForSignal(), agent.stopped.then((r) => r.reason)]);
      say(`stopping (${why}); running VMs keep running and are adopted on the next start`);
      await agent.close();
      await manager.close();
    });
}
