/** Argument vectors as people type and read them: a shell-like line, or a JSON array of strings. */

export type ArgvParse = { argv: string[]; error?: undefined } | { argv?: undefined; error: string };

/**
 * The argv of what a user typed: a JSON array of strings when it starts with "[", else words
 * split like a shell line ('…' is literal, "…" takes \" \\ \$ \` escapes, a backslash outside
 * quotes escapes the next character). Nothing is expanded: no variables, globs or ~.
 *
 * @example
 * parseArgv(`sh -c 'echo "$HOME"'`) // { argv: ['sh', '-c', 'echo "$HOME"'] }
 * parseArgv('["/bin/sh", "-c", "ls /"]') // { argv: ['/bin/sh', '-c', 'ls /'] }
 */
export function parseArgv(text: string): ArgvParse {
  const s = text.trim();
  if (s.startsWith('[')) {
    let v: unknown;
    try {
      v = JSON.parse(s);
    } catch {
      return { error: 'not valid JSON: a JSON array of strings, e.g. ["/bin/sh", "-c", "ls /"]' };
    }
    if (!Array.isArray(v) || !v.every((a) => typeof a === 'string'))
      return { error: 'a JSON array of strings, e.g. ["/bin/sh", "-c", "ls /"]' };
    return { argv: v };
  }
  const argv: string[] = [];
  let word = '';
  /** Whether a word has begun (a quoted empty string is a word). */
  let inWord = false;
  let quote: "'" | '"' | null = null;
  for (let i = 0; i < s.length; i++) {
    const c = s.charAt(i);
    const next = s.charAt(i + 1);
    if (quote === "'") {
      if (c === "'") quote = null;
      else word += c;
    } else if (quote === '"') {
      if (c === '"') quote = null;
      else if (c === '\\' && next && '"\\$`'.includes(next)) {
        word += next;
        i++;
      } else word += c;
    } else if (/\s/.test(c)) {
      if (inWord) argv.push(word);
      word = '';
      inWord = false;
    } else {
      inWord = true;
      if (c === "'" || c === '"') quote = c;
      else if (c === '\\') {
        if (!next) return { error: 'a backslash at the end of the line escapes nothing' };
        word += next;
        i++;
      } else word += c;
    }
  }
  if (quote) return { error: `the ${quote === "'" ? 'single' : 'double'} quote is not closed` };
  if (inWord) argv.push(word);
  return { argv };
}

const PLAIN = /^[A-Za-z0-9_@%+=:,./-]+$/;

/** An argv as one shell line that parseArgv reads back to the same words. */
export function formatArgv(argv: readonly string[]): string {
  return argv.map((a) => (PLAIN.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}
