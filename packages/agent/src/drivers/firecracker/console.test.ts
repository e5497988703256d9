import { appendFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunRecord } from '../types';
import { openFirecrackerConsole, rotateConsoleLog } from './console';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fc-console-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('console log', () => {
  it('rotates past its bound and keeps delivering after the truncation', async () => {
    const log = join(dir, 'console.log');
    await writeFile(log, 'x'.repeat(100));
    const record = {
      vmId: 'v',
      consoleSocket: join(dir, 'console.in'),
      extra: { consoleLog: log },
    } as unknown as RunRecord;
    const con = openFirecrackerConsole(record);
    const seen: string[] = [];
    con.onData((b) => seen.push(b.toString()));
    await new Promise((r) => setTimeout(r, 50));
    await appendFile(log, 'before\n');
    await new Promise((r) => setTimeout(r, 400));
    expect(await rotateConsoleLog(log, 50)).toBe(true);
    expect(await rotateConsoleLog(log, 50)).toBe(false);
    await appendFile(log, 'after\n');
    await new Promise((r) => setTimeout(r, 400));
    expect(seen.join('')).toBe('before\nafter\n');
    expect(await readFile(`${log}.1`, 'utf8')).toContain('before');
    expect((await con.tail(1024)).toString()).toBe(`${'x'.repeat(100)}before\nafter\n`);
    await expect(con.write('x\n')).rejects.toThrow(/gone/);
    await con.close();
  });
});
