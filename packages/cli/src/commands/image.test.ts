/**
 * `nqvm image ...` against a real manager (SQLite, no hosts): a sparse file uploaded with
 * `image import` is listed and shown with both its length and what it takes on disk.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatBytes } from '../client/output';
import { type CliTestManager, startCliTestManager } from './testing-manager';

describe.sequential('nqvm image', () => {
  let m: CliTestManager;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-cli-image-'));
  const file = path.join(dir, 'sparse.ext4');

  beforeAll(async () => {
    m = await startCliTestManager('image');
    const tree = path.join(dir, 'tree');
    fs.mkdirSync(tree);
    fs.writeFileSync(path.join(tree, 'data.bin'), Buffer.alloc(2 * 1024 * 1024, 7));
    execFileSync('mkfs.ext4', ['-q', '-F', '-d', tree, file, '64M']);
  });
  afterAll(async () => {
    await m?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('import, list and show report the length and the (sparse) stored bytes', async () => {
    const imported = await m.nqvm('-o', 'json', 'image', 'import', file, '--name', 'sparse');
    expect(imported.code, imported.err).toBe(0);
    const image = imported.json().image ?? imported.json();
    expect(image.size_bytes).toBe(64 * 1024 * 1024);
    expect(image.stored_bytes).toBeGreaterThan(2 * 1024 * 1024);
    expect(image.stored_bytes).toBeLessThan(image.size_bytes / 4);

    const list = await m.nqvm('image', 'list');
    expect(list.code, list.err).toBe(0);
    const [head, row] = list.out.trim().split('\n');
    const columns = head?.split(/\s{2,}/) ?? [];
    expect(columns).toEqual(expect.arrayContaining(['SIZE', 'STORED']));
    const cells = row?.split(/\s{2,}/) ?? [];
    expect(cells[columns.indexOf('SIZE')]).toBe('64.0 MiB');
    expect(cells[columns.indexOf('STORED')]).toBe(formatBytes(image.stored_bytes));

    const show = await m.nqvm('image', 'show', 'sparse');
    expect(show.code, show.err).toBe(0);
    expect(show.out).toMatch(/^size:\s+64\.0 MiB$/m);
    expect(show.out).toContain(`stored:   ${formatBytes(image.stored_bytes)}`);
  });
});
