/**
 * A VM that fails on its host, on both datastores, with a stand-in agent: desired state stays
 * the user's (a restart by the host's restart policy leaves the VM wanting to run, where it used
 * to read `running` with `desired_state: stopped` for good), and a failure keeps its reason
 * until the user changes the VM's state, through an agent that restarted and lost it and through
 * a manager restart (it used to become `stopped` or `unknown` with the reason gone).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { client, DATASTORES, registerDefaultKernel, startManager, type TestManager } from './harness';
import { until } from './helpers';
import { StandInAgent } from './stand-in-agent';

const CRASH = 'QEMU ended with signal SIGKILL';

describe.each(DATASTORES)('VM failures on %s', (kind) => {
  let t: TestManager;
  let api: ReturnType<typeof client>;
  let agent: StandInAgent;

  beforeAll(async () => {
    t = await startManager(kind, { NQVM_HEARTBEAT_INTERVAL_S: '1' });
    api = client(t.url, t.adminToken);
    await registerDefaultKernel(t);
    agent = await StandInAgent.join(
      t.url,
      t.adminToken,
      t.manager.services.managerKey.publicKeyPem,
      `failures-${kind}`,
    );
  });
  afterAll(async () => {
    await agent?.close();
    await t?.close();
  });

  const vm = async (id: string) => (await api.get(`/api/v1/vms/${id}`)).body;
  const runningVm = async (name: string, restartPolicy: 'never' | 'on-failure' | 'always') => {
    const r = await api.post('/api/v1/vms', { name, networks: [], restart_policy: restartPolicy });
    expect(r.status, r.text).toBe(202);
    const id = r.body.vm.id as string;
    await until('running', async () => (await vm(id)).state === 'running');
    return id;
  };
  /** Changes what the host reports and waits until the VM shows `state`. */
  const hostSays = async (id: string, change: Parameters<StandInAgent['changeReport']>[1], state: string) => {
    agent.changeReport(id, change);
    await agent.heartbeat();
    return until(`the VM ${state}`, async () => {
      const v = await vm(id);
      return v.state === state ? v : undefined;
    });
  };

  it('a VMM crash the host restarts leaves the VM wanting to run throughout', async () => {
    const id = await runningVm('restarted-1', 'on-failure');
    const failed = await hostSays(
      id,
      { state: 'failed', error: CRASH, pid: null, restarting: true },
      'failed',
    );
    expect(failed).toMatchObject({ desired_state: 'running', last_error: CRASH });
    const back = await hostSays(
      id,
      { state: 'running', error: null, pid: 4243, restarting: undefined },
      'running',
    );
    expect(back).toMatchObject({ desired_state: 'running', last_error: null });
  });

  it('a restart the report did not announce makes the VM want to run again', async () => {
    const id = await runningVm('restarted-2', 'always');
    // A host that said only `failed` (as agents did): the VM ended for good as far as it told.
    const failed = await hostSays(id, { state: 'failed', error: CRASH, pid: null }, 'failed');
    expect(failed.desired_state).toBe('stopped');
    const back = await hostSays(id, { state: 'running', error: null, pid: 4243 }, 'running');
    expect(back.desired_state).toBe('running');
    // And a stop is the user's again: the VM stops and wants to stay stopped.
    const stop = await api.post(`/api/v1/vms/${id}/stop`, { force: true });
    expect(stop.status, stop.text).toBe(202);
    await until('stopped', async () => (await vm(id)).state === 'stopped');
    expect((await vm(id)).desired_state).toBe('stopped');
  });

  it('a failure keeps its reason when its host agent restarts without it, until the user starts the VM', async () => {
    const id = await runningVm('forgotten-1', 'never');
    const failed = await hostSays(id, { state: 'failed', error: CRASH, pid: null }, 'failed');
    expect(failed).toMatchObject({ desired_state: 'stopped', last_error: CRASH });
    // An agent restarted without its record of the crash reports the VM merely stopped.
    agent.changeReport(id, { state: 'stopped', error: null, pid: null });
    await agent.heartbeat();
    await agent.heartbeat();
    expect(await vm(id)).toMatchObject({ state: 'failed', last_error: CRASH, desired_state: 'stopped' });

    const start = await api.post(`/api/v1/vms/${id}/start`);
    expect(start.status, start.text).toBe(202);
    const running = await until('running again', async () => {
      const v = await vm(id);
      return v.state === 'running' ? v : undefined;
    });
    expect(running).toMatchObject({ last_error: null, desired_state: 'running' });
  });

  it('a failure keeps its reason through a manager restart, while its host is away too', async () => {
    const id = await runningVm('through-restart', 'never');
    await hostSays(id, { state: 'failed', error: CRASH, pid: null }, 'failed');
    const resume = await agent.silence();
    await t.restart();
    // The host's last heartbeat is older than the new manager's deadline: it is unreachable.
    await until(
      'the host unreachable',
      async () => (await api.get(`/api/v1/hosts/${agent.hostId}`)).body.status !== 'ready',
    );
    expect(await vm(id)).toMatchObject({ state: 'failed', last_error: CRASH, desired_state: 'stopped' });
    resume();
    await until(
      'the host ready again',
      async () => (await api.get(`/api/v1/hosts/${agent.hostId}`)).body.status === 'ready',
    );
    await agent.heartbeat();
    expect(await vm(id)).toMatchObject({ state: 'failed', last_error: CRASH, desired_state: 'stopped' });
  });
});
