import { appendFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readLogTail, rotatedLogPath, rotateLogIfLarge } from './console-log';

describe('console log', () => {
  let dir: string;
  let log: string;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'nqvm-console-log-'));
    log = join(dir, 'console.log');
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads an empty tail when there is no log yet', async () => {
    expect((await readLogTail(log, 100)).length).toBe(0);
  });

  it('leaves a small log alone', async () => {
    await writeFile(log, 'hello');
    expect(await rotateLogIfLarge(log, 10)).toBe(false);
    expect(await readFile(log, 'utf8')).toBe('hello');
  });

  it('moves the tail of a large log to .1 and truncates it; the O_APPEND writer continues at 0', async () => {
    appendFileSync(log, 'a'.repeat(50) + 'b'.repeat(50));
    expect(await rotateLogIfLarge(log, 60, 40)).toBe(true);
    expect(await readFile(rotatedLogPath(log), 'utf8')).toBe('b'.repeat(40));
    expect(await readFile(log, 'utf8')).toBe('');
    appendFileSync(log, 'after');
    expect(await readFile(log, 'utf8')).toBe('after');
    // The tail reaches back into the previous generation.
    expect((await readLogTail(log, 10)).toString()).toBe('bbbbbafter');
    expect((await readLogTail(log, 3)).toString()).toBe('ter');
  });

  it('replaces an older .1 on the next rotation', async () => {
    await writeFile(rotatedLogPath(log), 'old');
    appendFileSync(log, 'x'.repeat(20));
    await rotateLogIfLarge(log, 10);
    expect(await readFile(rotatedLogPath(log), 'utf8')).toBe('x'.repeat(10));
  });

  it('loses nothing written by a concurrent appender before the copy ends', async () => {
    appendFileSync(log, `${'x'.repeat(2 * 1024 * 1024)}\n`);
    let written = 0;
    const writer = setInterval(() => {
      appendFileSync(log, `line ${written++}\n`);
    }, 0);
    await rotateLogIfLarge(log, 1024 * 1024, 4 * 1024 * 1024);
    clearInterval(writer);
    expect(written).toBeGreaterThan(0);
    const text = (await readFile(rotatedLogPath(log), 'utf8')) + (await readFile(log, 'utf8'));
    const lines = text.split('\n').filter((l) => l.startsWith('line '));
    // Every line the writer managed to append shows up once, in order, in .1 + the new log.
    expect(lines).toEqual(Array.from({ length: written }, (_, i) => `line ${i}`));
  });
});
