/**
 * Writes a stream into a new file with its all-zero blocks left as holes, so a sparse image (a
 * 2 GiB ext4 holding 700 MB) takes on disk what it holds, not its length.
 */
import type { FileHandle } from 'node:fs/promises';

/** The granularity of holes: the block size of the usual file systems (ext4, XFS, tmpfs pages). */
const BLOCK = 4096;
const ZERO = Buffer.alloc(BLOCK);

export class SparseWriter {
  /** Bytes taken so far, written or skipped. */
  length = 0;

  constructor(private readonly fh: FileHandle) {}

  /**
   * Appends `buf`: each piece between block boundaries of the file that holds only zeros is
   * skipped (the file reads zeros there), the others are written in runs.
   *
   * @example
   * const out = new SparseWriter(await fs.open(file, 'wx'));
   * for await (const chunk of body) await out.write(chunk);
   * await out.end();
   */
  async write(buf: Buffer): Promise<void> {
    let run = -1;
    for (let at = 0; at < buf.length; ) {
      const end = Math.min(buf.length, at + BLOCK - ((this.length + at) % BLOCK));
      const zero = buf.subarray(at, end).equals(ZERO.subarray(0, end - at));
      if (!zero && run < 0) run = at;
      if (zero && run >= 0) {
        await this.put(buf, run, at);
        run = -1;
      }
      at = end;
    }
    if (run >= 0) await this.put(buf, run, buf.length);
    this.length += buf.length;
  }

  /** Sets the file's length to what was taken: zeros skipped at the end still count. */
  async end(): Promise<number> {
    await this.fh.truncate(this.length);
    return this.length;
  }

  private async put(buf: Buffer, from: number, to: number): Promise<void> {
    for (let done = from; done < to; )
      done += (await this.fh.write(buf, done, to - done, this.length + done)).bytesWritten;
  }
}
