/** What runs in a container (Docker's override rules), its exit code, and its status from its VM. */
import type { OciImageConfig, VmState } from '@nqvm/api';
import { describe, expect, it } from 'vitest';
import type { ContainerRow } from '../db/schema';
import { containerProcess, containerStatus, exitCodeOf } from './containers';

const IMAGE: OciImageConfig = {
  entrypoint: ['/entry'],
  cmd: ['--default'],
  env: ['PATH=/bin', 'A=image', 'WEIRD=x=y'],
  working_dir: '/srv',
  user: 'app',
  exposed_ports: [],
};
const none = { command: null, args: null, env: {}, working_dir: null, user: null };

describe('containerProcess', () => {
  it.each([
    ['neither: entrypoint + cmd', {}, ['/entry', '--default']],
    ['args replace the cmd', { args: ['-v'] }, ['/entry', '-v']],
    ['command replaces the entrypoint and drops the cmd', { command: ['/bin/sh'] }, ['/bin/sh']],
    ['command and args', { command: ['/bin/sh'], args: ['-c', 'true'] }, ['/bin/sh', '-c', 'true']],
    ['empty args clear the cmd', { args: [] }, ['/entry']],
  ])('%s', (_what, req, argv) => {
    expect(containerProcess({ ...none, ...req }, IMAGE).argv).toEqual(argv);
  });

  it('runs the cmd alone when the image has no entrypoint', () => {
    expect(containerProcess(none, { ...IMAGE, entrypoint: null }).argv).toEqual(['--default']);
  });

  it('refuses an image with nothing to run unless a command is given', () => {
    const empty = { ...IMAGE, entrypoint: null, cmd: null };
    expect(() => containerProcess(none, empty)).toThrow(
      expect.objectContaining({ code: 'CONTAINER_COMMAND_MISSING' }),
    );
    expect(() => containerProcess({ ...none, args: [] }, empty)).toThrow('give command');
    expect(containerProcess({ ...none, command: ['/x'] }, empty).argv).toEqual(['/x']);
  });

  it("puts the request's environment over the image's and defaults PATH", () => {
    expect(containerProcess({ ...none, env: { A: 'request', B: '1' } }, IMAGE).env).toEqual({
      PATH: '/bin',
      A: 'request',
      WEIRD: 'x=y',
      B: '1',
    });
    expect(containerProcess(none, { ...IMAGE, env: [] }).env).toEqual({
      PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    });
  });

  it('takes the working dir and user from the request, else the image', () => {
    expect(containerProcess(none, IMAGE)).toMatchObject({ working_dir: '/srv', user: 'app' });
    expect(containerProcess({ ...none, working_dir: '/tmp', user: '0:0' }, IMAGE)).toMatchObject({
      working_dir: '/tmp',
      user: '0:0',
    });
    expect(containerProcess(none, { ...IMAGE, working_dir: null, user: null })).toMatchObject({
      working_dir: null,
      user: null,
    });
  });
});

describe('exitCodeOf', () => {
  it('is the status, 128+N for signal N, the init code for a process that could not start', () => {
    expect(exitCodeOf('exited', 3)).toBe(3);
    expect(exitCodeOf('signal', 15)).toBe(143);
    expect(exitCodeOf('unstartable', 127)).toBe(127);
    expect(exitCodeOf(null, null)).toBeNull();
  });
});

describe('containerStatus', () => {
  const row = (r: Partial<ContainerRow> = {}): ContainerRow =>
    ({
      phase: 'ready',
      start: 1,
      running: 0,
      exit_kind: null,
      exit_value: null,
      started_at: null,
      ...r,
    }) as ContainerRow;
  const vm = (state: VmState) => ({ state });
  const ran = { started_at: '2026-01-01T00:00:00.000Z' };

  it.each<[string, Partial<ContainerRow>, VmState | null, string]>([
    ['a failed create', { phase: 'failed' }, null, 'failed'],
    ['being pulled', { phase: 'creating' }, null, 'starting'],
    ['being pulled, start=false', { phase: 'creating', start: 0 }, null, 'created'],
    ['defined, its forwards being added', { phase: 'creating' }, 'stopped', 'starting'],
    ['defined, never started', { start: 0 }, 'stopped', 'created'],
    ['its VM booting', {}, 'starting', 'starting'],
    ['up, the process not started yet', {}, 'running', 'starting'],
    ['the process runs', { running: 1, ...ran }, 'running', 'running'],
    ['paused', { running: 1, ...ran }, 'paused', 'paused'],
    ['being stopped', { running: 1, ...ran }, 'stopping', 'running'],
    ['exited, its VM off', { exit_kind: 'exited', exit_value: 0, ...ran }, 'stopped', 'exited'],
    ['exited, its VM going down', { exit_kind: 'exited', exit_value: 1, ...ran }, 'running', 'exited'],
    ['could not start', { exit_kind: 'unstartable', exit_value: 127 }, 'stopped', 'failed'],
    ['its VM failed', { running: 1, ...ran }, 'failed', 'failed'],
    ['stopped before it told its exit', ran, 'stopped', 'exited'],
    ['its host unreachable, last seen running', { running: 1, ...ran }, 'unknown', 'running'],
  ])('%s', (_what, r, state, status) => {
    expect(containerStatus(row(r), state === null ? undefined : vm(state))).toBe(status);
  });
});
