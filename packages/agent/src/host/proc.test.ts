import { describe, expect, it } from 'vitest';
import { isSameProcessRunning, parseProcStat, readProcStartTime } from './proc';

describe('/proc/PID/stat', () => {
  it('counts fields from the last parenthesis, whatever the command name holds', () => {
    const fields = Array.from({ length: 50 }, (_, i) => String(i + 3));
    fields[0] = 'S';
    fields[19] = '123456';
    expect(parseProcStat(`42 (a (weird) name) ${fields.join(' ')}`)).toEqual({
      pid: 42,
      state: 'S',
      startTime: 123456,
    });
    expect(parseProcStat('garbage')).toBeNull();
  });

  it('reads this process, and tells a reused pid from the original', async () => {
    const start = await readProcStartTime(process.pid);
    expect(start).toBeGreaterThan(0);
    expect(await isSameProcessRunning(process.pid, start!)).toBe(true);
    expect(await isSameProcessRunning(process.pid, start! + 1)).toBe(false);
    expect(await readProcStartTime(2 ** 22 + 1)).toBeNull();
  });
});
