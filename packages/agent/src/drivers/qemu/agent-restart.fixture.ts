/**
 * Plays an agent for qemu-driver.test.ts: boots a VM from the spec in argv[2], waits for the boot
 * marker (argv[3]), leaves a line in the console scrollback, prints the RunRecord as one JSON
 * line and idles until the test kills it with SIGKILL.
 */
import type { VmSpec } from '../types';
import { QemuDriver } from './qemu-driver';

const spec = JSON.parse(process.argv[2] ?? '{}') as VmSpec;
const marker = process.argv[3] ?? 'NQVM-GUEST-READY';
const vm = await new QemuDriver({ accel: 'tcg' }).boot(spec);
await vm.console.waitForOutput(marker, 60_000);
const from = vm.console.totalBytes;
vm.console.write('echo BEFORE-RESTART-$((40+2))\n');
await vm.console.waitForOutput('BEFORE-RESTART-42', 10_000, from);
process.stdout.write(`${JSON.stringify(vm.record)}\n`);
setInterval(() => {}, 60_000);
