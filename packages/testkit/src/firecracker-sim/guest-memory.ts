import { closeSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';

/** x86_64 guest pages, the unit of Firecracker's dirty bitmap and of its Diff memory files. */
export const GUEST_PAGE_SIZE = 4096;

/** Which pages a Diff snapshot writes. */
export type DirtyView =
  /** KVM's dirty log (track_dirty_pages): written since boot, load or the last snapshot. */
  | 'dirty-log'
  /** mincore(2) (1.13+ without tracking): every page written since the process began. */
  | 'resident';

/**
 * Guest RAM as the simulator models it: the pages the guest wrote (all others read as zeros)
 * and the two views of written pages Firecracker takes Diff snapshots from. Memory files are
 * laid out as Firecracker writes them: one file of guest-memory size, page N at N * 4096.
 */
export class GuestMemory {
  readonly pageCount: number;
  private readonly pages = new Map<number, Buffer>();
  private readonly dirty = new Set<number>();
  private readonly resident = new Set<number>();

  constructor(readonly sizeBytes: number) {
    if (!Number.isInteger(sizeBytes / GUEST_PAGE_SIZE) || sizeBytes <= 0) {
      throw new RangeError(`guest memory of ${sizeBytes} bytes is not a whole number of pages`);
    }
    this.pageCount = sizeBytes / GUEST_PAGE_SIZE;
  }

  /** What a snapshot load maps: the given pages of a memory file (holes read as zeros), none dirty. */
  static fromFile(path: string, sizeBytes: number, pages: Iterable<number>): GuestMemory {
    const mem = new GuestMemory(sizeBytes);
    const fd = openSync(path, 'r');
    try {
      for (const page of pages) {
        const buf = Buffer.alloc(GUEST_PAGE_SIZE);
        readSync(fd, buf, 0, GUEST_PAGE_SIZE, page * GUEST_PAGE_SIZE);
        mem.pages.set(page, buf);
      }
    } finally {
      closeSync(fd);
    }
    return mem;
  }

  write(page: number, data: Buffer): void {
    if (!Number.isInteger(page) || page < 0 || page >= this.pageCount || data.length !== GUEST_PAGE_SIZE) {
      throw new RangeError(`bad guest page write: page ${page}, ${data.length} bytes`);
    }
    this.pages.set(page, Buffer.from(data));
    this.dirty.add(page);
    this.resident.add(page);
  }

  read(page: number): Buffer {
    return Buffer.from(this.pages.get(page) ?? Buffer.alloc(GUEST_PAGE_SIZE));
  }

  /** After a snapshot with dirty tracking on: every page clean again. */
  resetDirtyLog(): void {
    this.dirty.clear();
  }

  /**
   * A Full memory file. Real Firecracker writes every byte; the simulator seeks over pages the
   * guest never wrote, leaving holes that read as the same zeros, so a Full costs what the guest
   * touched (tests keep many of them).
   */
  dumpFull(path: string): number {
    return this.dump(path, [...this.pages.keys()]);
  }

  /** A Diff memory file: the pages of `view` written at their offsets (all-zero ones too), holes elsewhere. */
  dumpDiff(path: string, view: DirtyView): number {
    return this.dump(path, [...(view === 'dirty-log' ? this.dirty : this.resident)]);
  }

  /** Truncates, sizes the file to guest memory, then pwrites runs of consecutive pages. */
  private dump(path: string, pages: number[]): number {
    pages.sort((a, b) => a - b);
    const fd = openSync(path, 'w');
    try {
      ftruncateSync(fd, this.sizeBytes);
      for (let i = 0; i < pages.length; ) {
        let j = i + 1;
        while (j < pages.length && pages[j] === pages[j - 1]! + 1) j++;
        const run = Buffer.concat(pages.slice(i, j).map((p) => this.read(p)));
        writeSync(fd, run, 0, run.length, pages[i]! * GUEST_PAGE_SIZE);
        i = j;
      }
    } finally {
      closeSync(fd);
    }
    return pages.length;
  }
}
