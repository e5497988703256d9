/**
 * `nqvm vm exec` without a terminal: -e, -w, -u and --timeout become the ExecRequest, and the CLI
 * exits with the command's code (128+signal when killed, 124 on timeout), against a stand-in API.
 */
import os from 'node:os';
import path from 'node:path';
import { ExecRequest } from '@nqvm/api/exec';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UsageError } from '../client/output';
import { exitCodeOf, parseEnv } from './exec';
import { type FakeApi, runCli, startFakeApi } from './testing';

describe('exec flags', () => {
  it('parses -e NAME=value, and NAME alone from the environment', () => {
    expect(parseEnv(['A=1', 'B=', 'C=x=y', 'HOME', 'NOPE'], { HOME: '/root' })).toEqual({
      A: '1',
      B: '',
      C: 'x=y',
      HOME: '/root',
    });
    for (const bad of ['=1', '1A=2', 'A-B=3', 'A B'])
      expect(() => parseEnv([bad], {}), bad).toThrow(UsageError);
  });

  it('exits as the command did, 128+signal when killed, 124 when timed out', () => {
    expect(exitCodeOf({ exit_code: 0, signal: null, timed_out: false })).toBe(0);
    expect(exitCodeOf({ exit_code: 3, signal: null, timed_out: false })).toBe(3);
    expect(exitCodeOf({ exit_code: null, signal: 15, timed_out: false })).toBe(143);
    expect(exitCodeOf({ exit_code: null, signal: 9, timed_out: true })).toBe(124);
  });
});

describe.sequential('nqvm vm exec against a stand-in API', () => {
  let api: FakeApi;
  const vmId = '0b1f2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d';
  let answer: Record<string, unknown> = {};
  let stdinWasTty: boolean | undefined;

  beforeAll(async () => {
    process.env.NQVM_CONFIG = path.join(os.tmpdir(), `nqvm-cli-exec-test-${process.pid}.json`);
    // A terminal on stdin: nothing is read from it without -i.
    stdinWasTty = process.stdin.isTTY;
    process.stdin.isTTY = true;
    api = await startFakeApi((r) => {
      if (r.method === 'GET' && r.path === '/api/v1/vms') {
        return { body: { items: [{ id: vmId, name: 'box' }], next: null } };
      }
      if (r.method === 'POST' && r.path === `/api/v1/vms/${vmId}/exec`) return { body: answer };
      return undefined;
    });
  });
  afterAll(async () => {
    await api?.close();
    process.stdin.isTTY = stdinWasTty as boolean;
    delete process.env.NQVM_CONFIG;
  });

  const result = (over: Record<string, unknown>) => ({
    exit_code: 0,
    signal: null,
    stdout: '',
    stderr: '',
    truncated: false,
    timed_out: false,
    duration_ms: 5,
    ...over,
  });

  it('sends the command and its flags, prints its output and exits with its code', async () => {
    answer = result({ exit_code: 3, stdout: 'out\n', stderr: 'err\n' });
    const r = await runCli(api.url, [
      'vm',
      'exec',
      'box',
      '-e',
      'MODE=x',
      '-w',
      '/srv',
      '-u',
      'nobody',
      '--timeout',
      '5',
      '--',
      'sh',
      '-c',
      'exit 3',
    ]);
    expect(r).toMatchObject({ code: 3, out: 'out\n', err: 'err\n' });
    const sent = api.requests.at(-1)?.body;
    expect(sent).toEqual({
      command: ['sh', '-c', 'exit 3'],
      env: { MODE: 'x' },
      working_dir: '/srv',
      user: 'nobody',
      timeout_s: 5,
    });
    expect(ExecRequest.safeParse(sent).success).toBe(true);
  });

  it('exits 128+signal, 124 after a timeout, and prints the result with -o json', async () => {
    answer = result({ exit_code: null, signal: 15 });
    expect((await runCli(api.url, ['vm', 'exec', 'box', '--', 'sleep', '9'])).code).toBe(143);
    answer = result({ exit_code: null, signal: 9, timed_out: true });
    const late = await runCli(api.url, ['vm', 'exec', 'box', '--', 'sleep', '99']);
    expect(late.code).toBe(124);
    expect(late.err).toMatch(/killed after 60 s/);
    expect(api.requests.at(-1)?.body).toMatchObject({ timeout_s: 60 });
    answer = result({ exit_code: 1, stdout: 'x' });
    const json = await runCli(api.url, ['-o', 'json', 'vm', 'exec', 'box', '--', 'false']);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.out)).toMatchObject({ exit_code: 1, stdout: 'x' });
  });

  it('refuses flags the terminal mode cannot carry, and a bad --timeout, with exit 2', async () => {
    const before = api.requests.length;
    const env = await runCli(api.url, ['vm', 'exec', '-t', '-e', 'A=1', 'box', '--', 'sh']);
    expect(env.code).toBe(2);
    expect(env.err).toMatch(/-e does not go with -t/);
    const timeout = await runCli(api.url, ['vm', 'exec', '--timeout', '0', 'box', '--', 'sh']);
    expect(timeout.code).toBe(2);
    expect(api.requests.slice(before).some((q) => q.method === 'POST')).toBe(false);
  });
});
