/**
 * The host end of a VM's host-to-guest channel, served in the guest by nqvm's guest agent:
 * virtio-serial (a QEMU chardev socket in the VM folder) or vsock (Firecracker's host-side
 * socket). Nothing listens on the guest's network. Each VM has its own token (kept in the VM
 * folder, mode 0600, handed to the guest on its config drive); only a holder of it can run
 * commands in the guest.
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { GuestAgentClient, type GuestAgentEndpoint } from '@nqvm/guest-agent';
import { qemuVmPaths } from '../drivers/qemu/qemu-args';
import type { RunRecord } from '../drivers/types';
import { readJsonFile, writeJsonAtomic } from './state-files';

/** The guest's vsock CID (Firecracker; any value >= 3 serves: each VM has its own device). */
export const GUEST_CID = 3;
/** The vsock port the guest agent listens on. */
export const GUEST_AGENT_VSOCK_PORT = 1024;

const TOKEN_FILE = 'guest-agent.json';

/** The VM's guest agent token, made on first use. */
export async function guestAgentToken(vmDir: string): Promise<string> {
  const file = path.join(vmDir, TOKEN_FILE);
  const saved = (await readJsonFile(file).catch(() => null)) as { token?: unknown } | null;
  if (typeof saved?.token === 'string' && /^[a-f0-9]{64}$/.test(saved.token)) return saved.token;
  const token = randomBytes(32).toString('hex');
  await writeJsonAtomic(file, { token });
  return token;
}

/** Whether the VM has a guest agent token (one was handed to its guest, or to a clone's). */
export async function hasGuestAgentToken(vmDir: string): Promise<boolean> {
  return (await readJsonFile(path.join(vmDir, TOKEN_FILE)).catch(() => null)) !== null;
}

/** Where the agent reaches the guest agent of a running VMM. */
export function guestEndpoint(record: RunRecord, token: string): GuestAgentEndpoint {
  if (record.kind === 'qemu')
    return { kind: 'virtio-serial', socketPath: qemuVmPaths(record.vmDir).agentSocket, token };
  const vsockPath = record.extra?.vsockPath;
  if (typeof vsockPath !== 'string') throw new Error('this Firecracker VM was started without vsock');
  return { kind: 'vsock', socketPath: vsockPath, vsockPort: GUEST_AGENT_VSOCK_PORT, token };
}

/**
 * Connects to the guest agent of a running VMM; rejects when it does not answer within
 * `timeoutMs` (a guest without the agent, or one still booting).
 *
 * @example
 * const guest = await connectGuest(handle.record, await guestAgentToken(vmDir), 2_000);
 * const { stdout } = await guest.exec(['uname', '-r']);
 */
export function connectGuest(record: RunRecord, token: string, timeoutMs: number): Promise<GuestAgentClient> {
  return GuestAgentClient.connect(guestEndpoint(record, token), { timeoutMs });
}
