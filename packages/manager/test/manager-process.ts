/**
 * A manager in a process of its own, for tests that kill it (`kill -9`): configured from its
 * environment like `nqvm server`, it prints `listening <url>` once it serves.
 * Run as `node --import tsx packages/manager/test/manager-process.ts`.
 */
import { loadManagerConfig } from '../src/config';
import { createManager } from '../src/manager';

const manager = await createManager(loadManagerConfig(process.env), { loopIntervalMs: 200 });
process.stdout.write(`listening ${await manager.listen()}\n`);
