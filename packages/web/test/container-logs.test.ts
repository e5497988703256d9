import { describe, expect, test } from 'vitest';
import { parseLogLine } from '../src/container-logs';

describe('parseLogLine (container logs)', () => {
  test('reads the time, the stream and the text', () => {
    expect(parseLogLine('2025-01-02T03:04:05.678Z stdout tick 1')).toEqual({
      ts: '2025-01-02T03:04:05.678Z',
      stream: 'stdout',
      text: 'tick 1',
    });
    expect(parseLogLine('2025-01-02T03:04:05.678+01:00 stderr  two  spaces \r')).toEqual({
      ts: '2025-01-02T03:04:05.678+01:00',
      stream: 'stderr',
      text: ' two  spaces ',
    });
    expect(parseLogLine('2025-01-02T03:04:05.678Z stdout')).toMatchObject({ stream: 'stdout', text: '' });
  });

  test('keeps a line without the prefix as stdout text', () => {
    expect(parseLogLine('just text')).toEqual({ ts: null, stream: 'stdout', text: 'just text' });
  });
});
