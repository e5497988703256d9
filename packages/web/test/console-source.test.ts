import { describe, expect, test } from 'vitest';
import { tailDelta } from '../src/console-source';

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

describe('tailDelta (console tail polling)', () => {
  test('first tail, unchanged tail, appended bytes', () => {
    expect(tailDelta(enc(''), enc(''))).toBeNull();
    const first = tailDelta(enc(''), enc('boot\r\n'));
    expect(first?.reset).toBe(false);
    expect(dec(first!.data)).toBe('boot\r\n');
    expect(tailDelta(enc('abc'), enc('abc'))).toBeNull();
    const more = tailDelta(enc('login: '), enc('login: root\r\n'));
    expect(more?.reset).toBe(false);
    expect(dec(more!.data)).toBe('root\r\n');
  });

  test('a full window that slid writes only the new bytes', () => {
    const history = Array.from({ length: 400 }, (_, i) => `line ${i} ${'x'.repeat(i % 17)}\r\n`).join('');
    const window = 4096;
    const prev = enc(history.slice(-window));
    const next = enc((history + 'new output\r\n$ ').slice(-window));
    const d = tailDelta(prev, next);
    expect(d?.reset).toBe(false);
    expect(dec(d!.data)).toBe('new output\r\n$ ');
  });

  test('repetitive output is not mistaken for an overlap at the wrong place', () => {
    const block = 'tick\r\n'.repeat(100);
    const prev = enc(block);
    const next = enc(block.slice(12) + 'tick\r\ntick\r\n');
    const d = tailDelta(prev, next);
    // Any answer must leave the terminal with exactly `next` as its tail.
    const shown = d?.reset ? dec(d.data) : dec(prev) + dec(d?.data ?? new Uint8Array());
    expect(shown.endsWith(dec(next))).toBe(true);
  });

  test('unrelated history (agent restarted) resets the terminal', () => {
    const d = tailDelta(enc('old console output '.repeat(20)), enc('fresh boot\r\n'));
    expect(d?.reset).toBe(true);
    expect(dec(d!.data)).toBe('fresh boot\r\n');
  });

  test('bytes that are not UTF-8 keep their offsets', () => {
    const prev = new Uint8Array([0x1b, 0x5b, 0x41, 0x81, 0x8d, 0xff, 0x00, 0x41]);
    const next = new Uint8Array([...prev, 0x90, 0x9d, 0x42]);
    const d = tailDelta(prev, next);
    expect(d?.reset).toBe(false);
    expect([...d!.data]).toEqual([0x90, 0x9d, 0x42]);
  });
});
