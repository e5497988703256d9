import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ByteRing } from './byte-ring';

describe('ByteRing', () => {
  it('keeps only the most recent capacity bytes', () => {
    const ring = new ByteRing(5);
    ring.push(Buffer.from('abc'));
    expect(ring.tail().toString()).toBe('abc');
    ring.push(Buffer.from('defg'));
    expect(ring.tail().toString()).toBe('cdefg');
    expect(ring.length).toBe(5);
    expect(ring.totalWritten).toBe(7);
    ring.push(Buffer.from('0123456789'));
    expect(ring.tail().toString()).toBe('56789');
  });

  it('returns a bounded tail across the wrap point', () => {
    const ring = new ByteRing(4);
    ring.push(Buffer.from('abcdef'));
    ring.push(Buffer.from('gh'));
    expect(ring.tail(3).toString()).toBe('fgh');
    expect(ring.tail(0).length).toBe(0);
    expect(ring.tail(99).toString()).toBe('efgh');
  });

  it('matches the tail of everything pushed, for any sequence of chunks', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 64 }),
        fc.array(fc.uint8Array({ maxLength: 100 }), { maxLength: 30 }),
        fc.nat(128),
        (capacity, chunks, n) => {
          const ring = new ByteRing(capacity);
          for (const c of chunks) ring.push(c);
          const all = Buffer.concat(chunks);
          const kept = all.subarray(Math.max(0, all.length - capacity));
          expect(ring.tail().equals(kept)).toBe(true);
          expect(ring.tail(n).equals(kept.subarray(Math.max(0, kept.length - n)))).toBe(true);
        },
      ),
    );
  });

  it('rejects a capacity that is not a positive integer', () => {
    expect(() => new ByteRing(0)).toThrow(RangeError);
  });
});
