import { describe, expect, test } from 'vitest';
import { formatArgv, parseArgv } from '../src/argv';

describe('parseArgv (command fields)', () => {
  test('splits words like a shell line, without expanding anything', () => {
    expect(parseArgv('  /bin/sh   -c  ls  ')).toEqual({ argv: ['/bin/sh', '-c', 'ls'] });
    expect(parseArgv(`sh -c 'echo "$HOME" *'`)).toEqual({ argv: ['sh', '-c', 'echo "$HOME" *'] });
    expect(parseArgv('echo "a \\"b\\" \\$x \\n"')).toEqual({ argv: ['echo', 'a "b" $x \\n'] });
    expect(parseArgv('a\\ b c"d"e \'\' ""')).toEqual({ argv: ['a b', 'cde', '', ''] });
    expect(parseArgv('')).toEqual({ argv: [] });
  });

  test('reads a JSON array of strings', () => {
    expect(parseArgv('["/bin/sh", "-c", "ls /"]')).toEqual({ argv: ['/bin/sh', '-c', 'ls /'] });
    expect(parseArgv('[1, 2]').error).toMatch(/array of strings/);
    expect(parseArgv('[oops').error).toMatch(/not valid JSON/);
  });

  test('says what is wrong with an unfinished line', () => {
    expect(parseArgv("echo 'open").error).toMatch(/single quote/);
    expect(parseArgv('echo "open').error).toMatch(/double quote/);
    expect(parseArgv('echo \\').error).toMatch(/backslash/);
  });

  test('formatArgv writes a line that parses back to the same words', () => {
    for (const argv of [
      ['/bin/sh', '-c', 'while true; do echo "tick $i"; sleep 0.5; done'],
      ["it's", '', 'a b', 'plain-word_1.2:3'],
    ])
      expect(parseArgv(formatArgv(argv))).toEqual({ argv });
    expect(formatArgv(['ls', '-l', '/'])).toBe('ls -l /');
  });
});
