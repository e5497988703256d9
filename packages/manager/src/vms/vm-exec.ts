/**
 * A command run in a VM's guest (`POST /api/v1/vms/{id}/exec`, and a container's): relayed to the
 * agent of the VM's host, which relays to nqvm's guest agent over the host-to-guest channel.
 * Bytes travel as base64 to the agent; the API's result carries the output as UTF-8 text.
 */
import { type ExecRequest, type ExecResult, NqvmError } from '@nqvm/api';
import type { AgentClient } from '../hosts/agent-client';
import type { Hosts } from '../hosts/hosts';
import { placedHost } from './vm-host';
import type { Vms } from './vms';

/** The agent's answer may take the command's own timeout and this much longer (connecting, output). */
const EXEC_MARGIN_S = 30;

/**
 * Runs `req` in the guest of a running VM and answers once it ended (or was killed after its
 * timeout). 409 VM_INVALID_STATE for a VM that does not run; the agent's refusals keep their codes.
 *
 * @example
 * const r = await execInVm(services, vmId, { command: ['uname', '-a'], timeout_s: 10 });
 */
export async function execInVm(
  s: { vms: Vms; hosts: Hosts; agents: AgentClient },
  vmId: string,
  req: ExecRequest,
): Promise<ExecResult> {
  const { vm, host } = await placedHost(s, vmId);
  if (vm.state !== 'running')
    throw new NqvmError('VM_INVALID_STATE', `commands run in running VMs only (it is ${vm.state})`, {
      state: vm.state,
    });
  const r = await s.agents.exec(
    host.address,
    vm.id,
    {
      argv: req.command,
      env: req.env ?? {},
      cwd: req.working_dir ?? null,
      user: req.user ?? null,
      stdin_b64: req.stdin === undefined ? null : Buffer.from(req.stdin, 'utf8').toString('base64'),
      timeout_s: req.timeout_s,
    },
    (req.timeout_s + EXEC_MARGIN_S) * 1000,
  );
  return {
    exit_code: r.exit_code,
    signal: r.signal,
    stdout: Buffer.from(r.stdout_b64, 'base64').toString('utf8'),
    stderr: Buffer.from(r.stderr_b64, 'base64').toString('utf8'),
    truncated: r.truncated,
    timed_out: r.timed_out,
    duration_ms: r.duration_ms,
  };
}
