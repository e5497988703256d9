#!/usr/bin/env node
// Runs the built CLI (npm run build); in a source checkout without a build, runs the sources.
// On a Node.js older than nqvm supports, it re-runs itself on the Node that scripts/quickstart.sh
// fetched (scripts/lib-node.sh), or says what to install.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

/** package.json's "engines": ^22.12.0 || >=24.0.0 (vitest skips 23, Vite needs 22.12). */
function supported(version) {
  const [major, minor] = version.split('.').map(Number);
  return (major === 22 && minor >= 12) || major >= 24;
}

if (!supported(process.versions.node)) {
  const cache =
    process.env.NQVM_NODE_CACHE ??
    (process.getuid?.() === 0
      ? '/var/cache/nqvm/node'
      : join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'nqvm', 'node'));
  const fetched = join(cache, 'node-v22', 'bin', 'node');
  if (existsSync(fetched) && !process.env.NQVM_REEXEC) {
    const child = spawn(fetched, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
      stdio: 'inherit',
      env: { ...process.env, NQVM_REEXEC: '1' },
    });
    // The terminal's Ctrl-C and Ctrl-\ reach the child too (same process group): this process
    // only outlives them; what is sent to it alone (kill, systemd) is passed on.
    for (const s of ['SIGINT', 'SIGQUIT']) process.on(s, () => {});
    for (const s of ['SIGTERM', 'SIGHUP']) process.on(s, () => child.kill(s));
    child.on('exit', (code, signal) => {
      if (signal) {
        process.removeAllListeners(signal);
        process.kill(process.pid, signal);
      }
      process.exit(code ?? 1);
    });
  } else {
    process.stderr.write(
      `nqvm needs Node.js 22.12 or newer (22.x or 24+); this is ${process.version}.\n` +
        'Install Node.js 22 or 24, or run scripts/quickstart.sh, which fetches one from the npm registry.\n',
    );
    process.exit(1);
  }
}

async function main() {
  const built = join(here, '..', 'dist', 'nqvm.mjs');
  if (existsSync(built)) {
    await import(pathToFileURL(built).href);
  } else {
    const { register } = await import('tsx/esm/api');
    register();
    await import(pathToFileURL(join(here, '..', 'src', 'main.ts')).href);
  }
}
if (supported(process.versions.node)) await main();
