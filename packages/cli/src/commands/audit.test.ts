/**
 * `nqvm audit list` and `nqvm op list` against a real manager (SQLite, no hosts): newest first,
 * filters reach the API, pages follow the cursor, table and JSON output, completion knows them.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildProgram } from '../program';
import { parseTime } from './audit';
import { commandTree } from './completion';
import { type CliTestManager, startCliTestManager } from './testing-manager';

describe.sequential('nqvm audit list and op list', () => {
  let m: CliTestManager;

  beforeAll(async () => {
    m = await startCliTestManager('audit');
    for (const name of ['a1', 'a2', 'a3']) {
      const r = await m.nqvm('-o', 'json', 'vm', 'create', name, '--no-start', '--no-network');
      expect(r.code, r.err).toBe(0);
    }
    expect((await m.nqvm('vm', 'delete', 'a2')).code).toBe(0);
    // A refused create (the name is taken): a failure in the log.
    expect((await m.nqvm('vm', 'create', 'a1', '--no-start', '--no-network')).code).toBe(1);
  });
  afterAll(async () => {
    await m?.close();
  });

  it('lists newest first with filters, in JSON as the API answers', async () => {
    const r = await m.nqvm(
      '-o',
      'json',
      'audit',
      'list',
      '--actor',
      'admin',
      '--action',
      'vm.create',
      '--result',
      'success',
    );
    expect(r.code, r.err).toBe(0);
    const page = r.json();
    expect(page.next).toBeNull();
    expect(page.items).toHaveLength(3);
    expect(page.items.map((e: { at: string }) => e.at)).toEqual(
      [...page.items.map((e: { at: string }) => e.at)].sort().reverse(),
    );
    const failed = await m.nqvm('-o', 'json', 'audit', 'list', '--result', 'failure');
    expect(
      failed.json().items.map((e: { action: string; status_code: number }) => [e.action, e.status_code]),
    ).toEqual([['vm.create', 409]]);
    const deletes = await m.nqvm(
      '-o',
      'json',
      'audit',
      'list',
      '--target-type',
      'vm',
      '--action',
      'vm.delete',
    );
    expect(deletes.json().items).toHaveLength(1);
    const future = await m.nqvm('-o', 'json', 'audit', 'list', '--since', '2100-01-01T00:00:00Z');
    expect(future.json().items).toEqual([]);
    const recent = await m.nqvm('-o', 'json', 'audit', 'list', '--since', '1h', '--action', 'vm.delete');
    expect(recent.json().items).toHaveLength(1);
  });

  it('pages with --limit and --cursor; a table shows the cursor on stderr', async () => {
    const first = await m.nqvm(
      'audit',
      'list',
      '--action',
      'vm.create',
      '--result',
      'success',
      '--limit',
      '2',
    );
    expect(first.code, first.err).toBe(0);
    expect(first.out.split('\n')[0]).toMatch(/^TIME +ACTOR +ACTION +TARGET +RESULT +IP$/);
    expect(first.out).toContain('token:admin');
    const cursor = /--cursor (\S+)/.exec(first.err)?.[1];
    expect(cursor).toBeDefined();
    const rest = await m.nqvm(
      '-o',
      'json',
      'audit',
      'list',
      '--action',
      'vm.create',
      '--limit',
      '2',
      '--cursor',
      cursor!,
    );
    expect(rest.json().items).toHaveLength(1);
    expect(rest.json().next).toBeNull();
    const all = await m.nqvm(
      '-o',
      'json',
      'audit',
      'list',
      '--all',
      '--action',
      'vm.create',
      '--result',
      'success',
      '--limit',
      '1',
    );
    expect(all.json().items).toHaveLength(3);
  });

  it('bad flags exit 2 before any request', async () => {
    expect((await m.nqvm('audit', 'list', '--since', 'yesterday')).code).toBe(2);
    expect((await m.nqvm('audit', 'list', '--limit', '0')).code).toBe(2);
    expect(parseTime('2h', '--since', Date.parse('2030-01-01T02:00:00Z'))).toBe('2030-01-01T00:00:00.000Z');
  });

  it('op list is newest first and pages', async () => {
    const r = await m.nqvm('-o', 'json', 'op', 'list', '--kind', 'vm.define', '--limit', '2');
    expect(r.code, r.err).toBe(0);
    const page = r.json();
    expect(page.items).toHaveLength(2);
    expect(page.next).not.toBeNull();
    const vms = (await m.api('GET', '/api/v1/vms?limit=500')).body.items as Array<{
      id: string;
      name: string;
    }>;
    const a3 = vms.find((v) => v.name === 'a3')!;
    expect(page.items[0].target.id).toBe(a3.id);
    const next = await m.nqvm('-o', 'json', 'op', 'list', '--kind', 'vm.define', '--cursor', page.next);
    expect(next.json().items).toHaveLength(1);
    const queued = await m.nqvm('op', 'list', '--status', 'queued');
    expect(queued.code, queued.err).toBe(0);
  });

  it('completion knows audit list and its flags', () => {
    const tree = new Map(commandTree(buildProgram()).map((n) => [n.path.join(' '), n]));
    expect(tree.get('')?.subcommands).toContain('audit');
    expect(tree.get('audit list')?.options).toEqual(
      expect.arrayContaining([
        '--actor',
        '--action',
        '--target',
        '--target-type',
        '--since',
        '--until',
        '--cursor',
      ]),
    );
  });
});
