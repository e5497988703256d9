/**
 * A fixed-capacity byte buffer that keeps the most recent `capacity` bytes written to it.
 *
 * @example
 * const ring = new ByteRing(4);
 * ring.push(Buffer.from('abcdef'));
 * ring.tail(); // <Buffer 63 64 65 66> ("cdef")
 */
export class ByteRing {
  private readonly data: Buffer;
  /** Index of the oldest byte. */
  private start = 0;
  private size = 0;
  /** Bytes ever pushed, including the ones since overwritten. */
  private total = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity <= 0)
      throw new RangeError('capacity must be a positive integer');
    // Not zero-filled: pages cost memory only once output reaches them; unread bytes never leak out.
    this.data = Buffer.allocUnsafeSlow(capacity);
  }

  get length(): number {
    return this.size;
  }

  get totalWritten(): number {
    return this.total;
  }

  push(chunk: Uint8Array): void {
    this.total += chunk.length;
    let src = chunk;
    if (src.length >= this.capacity) {
      src = src.subarray(src.length - this.capacity);
      this.data.set(src, 0);
      this.start = 0;
      this.size = this.capacity;
      return;
    }
    const end = (this.start + this.size) % this.capacity;
    const first = Math.min(src.length, this.capacity - end);
    this.data.set(src.subarray(0, first), end);
    this.data.set(src.subarray(first), 0);
    const overflow = this.size + src.length - this.capacity;
    if (overflow > 0) {
      this.start = (this.start + overflow) % this.capacity;
      this.size = this.capacity;
    } else {
      this.size += src.length;
    }
  }

  /** A copy of the last `bytes` bytes (all of them by default). */
  tail(bytes = this.size): Buffer {
    const n = Math.max(0, Math.min(bytes, this.size));
    const from = (this.start + this.size - n) % this.capacity;
    if (from + n <= this.capacity) return Buffer.from(this.data.subarray(from, from + n));
    return Buffer.concat([this.data.subarray(from), this.data.subarray(0, n - (this.capacity - from))]);
  }

  clear(): void {
    this.start = 0;
    this.size = 0;
  }
}
