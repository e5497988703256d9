import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { GUEST_PAGE_SIZE, GuestMemory } from './guest-memory';

/** How often the simulated guest writes to its memory while it runs. */
export const GUEST_TICK_MS = 50;
/** Pages 1..RING_PAGES: the ring the guest writes its ticks into. */
export const RING_PAGES = 64;
/** A page written once at boot every this many pages (every MiB): the "kernel image". */
const BOOT_STRIDE = 256;

const TABLE_MAGIC = 'NQVMGST1';
const RING_MAGIC = 'NQVMRING';
const BOOT_MAGIC = 'NQVMBOOT';
/** Page 0: magic, tick (u64), nonce (16 bytes), ring size (u32), pad, then one u64 per ring slot. */
const TABLE_SLOTS_AT = 40;
/** A ring slot's entry: the tick last written there plus one; 0 when the guest zeroed it. */
const ZEROED = 0n;

/** What a snapshot's vmstate keeps of the guest, to check the memory loaded with it. */
export interface GuestState {
  tick: number;
  /** The guest's identity (hex), in every page it writes. */
  nonce: string;
  ring: number;
}

/** The memory file does not hold the memory of the guest the vmstate describes. */
export class GuestMemoryError extends Error {}

const isZero = (b: Buffer): boolean => b.every((x) => x === 0);

function fill(buf: Buffer, from: number, seed: number): void {
  for (let i = from; i < buf.length; i++) buf[i] = ((seed + i) % 255) + 1;
}

function ringPage(slot: number, tick: number, nonce: Buffer): Buffer {
  const b = Buffer.alloc(GUEST_PAGE_SIZE);
  b.write(RING_MAGIC, 0, 'latin1');
  b.writeUInt32LE(slot, 8);
  b.writeBigUInt64LE(BigInt(tick), 16);
  nonce.copy(b, 24);
  fill(b, 40, tick * 131 + slot * 7);
  return b;
}

function bootPage(page: number, nonce: Buffer): Buffer {
  const b = Buffer.alloc(GUEST_PAGE_SIZE);
  b.write(BOOT_MAGIC, 0, 'latin1');
  b.writeBigUInt64LE(BigInt(page), 8);
  nonce.copy(b, 16);
  fill(b, 32, page * 13);
  return b;
}

function bootPages(pageCount: number): number[] {
  const pages: number[] = [];
  for (let p = BOOT_STRIDE; p < pageCount; p += BOOT_STRIDE) pages.push(p);
  return pages;
}

/** Page 0 as the guest keeps it, checksum last. */
function tablePage(tick: number, nonce: Buffer, table: bigint[]): Buffer {
  const b = Buffer.alloc(GUEST_PAGE_SIZE);
  b.write(TABLE_MAGIC, 0, 'latin1');
  b.writeBigUInt64LE(BigInt(tick), 8);
  nonce.copy(b, 16);
  b.writeUInt32LE(table.length, 32);
  for (const [i, v] of table.entries()) b.writeBigUInt64LE(v, TABLE_SLOTS_AT + 8 * i);
  const end = TABLE_SLOTS_AT + 8 * table.length;
  createHash('sha256').update(b.subarray(0, end)).digest().copy(b, end);
  return b;
}

function parseTable(b: Buffer): { tick: number; nonce: Buffer; table: bigint[] } | 'no-table' | 'checksum' {
  if (b.toString('latin1', 0, 8) !== TABLE_MAGIC) return 'no-table';
  const ring = b.readUInt32LE(32);
  const end = TABLE_SLOTS_AT + 8 * ring;
  if (ring === 0 || end + 32 > b.length) return 'checksum';
  const sum = createHash('sha256').update(b.subarray(0, end)).digest();
  if (!sum.equals(b.subarray(end, end + 32))) return 'checksum';
  const table = Array.from({ length: ring }, (_, i) => b.readBigUInt64LE(TABLE_SLOTS_AT + 8 * i));
  return { tick: Number(b.readBigUInt64LE(8)), nonce: Buffer.from(b.subarray(16, 32)), table };
}

/**
 * The simulated guest's workload, made so that a memory file that is not exactly the guest's
 * memory at the snapshot's moment is caught at load. At boot it writes a page every MiB and
 * every ring page; then each tick t writes t into ring slot t % R, zeroes slot (t + 1) % R (a
 * written page that is all zeros: a merge that skips zero pages keeps the old content) and
 * rewrites page 0, its page table: the tick and what each ring slot must hold, checksummed.
 */
export class TickingGuest {
  private constructor(
    readonly memory: GuestMemory,
    private current: number,
    private readonly nonce: Buffer,
    private readonly table: bigint[],
  ) {}

  static boot(memory: GuestMemory): TickingGuest {
    const ring = Math.min(RING_PAGES, memory.pageCount - 1);
    if (ring < 2) throw new RangeError('guest memory too small for the simulated guest');
    const nonce = randomBytes(16);
    for (const p of bootPages(memory.pageCount)) memory.write(p, bootPage(p, nonce));
    const table = Array.from({ length: ring }, () => 1n);
    for (let s = 0; s < ring; s++) memory.write(1 + s, ringPage(s, 0, nonce));
    const guest = new TickingGuest(memory, 0, nonce, table);
    memory.write(0, tablePage(0, nonce, table));
    return guest;
  }

  /**
   * The guest a snapshot load resumes: the memory file's pages, checked against the vmstate's
   * record of the guest. Throws GuestMemoryError naming the first inconsistency.
   */
  static fromSnapshot(memPath: string, sizeBytes: number, state: GuestState): TickingGuest {
    const pageCount = sizeBytes / GUEST_PAGE_SIZE;
    const boot = bootPages(pageCount);
    const ringPages = Array.from({ length: state.ring }, (_, s) => 1 + s);
    const memory = GuestMemory.fromFile(memPath, sizeBytes, [0, ...ringPages, ...boot]);
    const fail = (msg: string): never => {
      throw new GuestMemoryError(`guest memory check failed: ${msg}`);
    };
    const parsed = parseTable(memory.read(0));
    if (parsed === 'no-table') {
      fail(
        'page 0 holds no guest page table: the memory file is not the memory of this guest (a Diff whose layers were not merged over their base?)',
      );
    }
    if (parsed === 'checksum')
      fail("page 0's page table fails its checksum: the memory file is torn or mixed");
    const { tick, nonce, table } = parsed as Exclude<typeof parsed, string>;
    if (nonce.toString('hex') !== state.nonce) {
      fail('the memory file holds another guest than the vmstate (page 0 bears another guest identity)');
    }
    if (tick !== state.tick) {
      fail(
        `the memory file holds the guest at tick ${tick}, the vmstate at tick ${state.tick}: memory and vmstate are of different snapshots (a base without its later Diffs, or layers merged out of order?)`,
      );
    }
    if (table.length !== state.ring)
      fail(`page 0 describes ${table.length} ring pages, the vmstate ${state.ring}`);
    table.forEach((entry, s) => {
      const page = 1 + s;
      const got = memory.read(page);
      const want = entry === ZEROED ? Buffer.alloc(GUEST_PAGE_SIZE) : ringPage(s, Number(entry - 1n), nonce);
      if (got.equals(want)) return;
      const held =
        got.toString('latin1', 0, 8) === RING_MAGIC && got.readUInt32LE(8) === s
          ? `tick ${got.readBigUInt64LE(16)}`
          : isZero(got)
            ? 'zeros'
            : 'other data';
      if (entry === ZEROED) {
        fail(
          `page ${page} (ring slot ${s}) was zeroed by the guest and holds ${held}: a written all-zero page was not copied (a merge that skips zero pages?)`,
        );
      }
      fail(
        `page ${page} (ring slot ${s}) should hold the guest's write of tick ${entry - 1n} and holds ${held}: ${held === 'zeros' ? 'pages written before this snapshot are missing (a Diff loaded without its base?)' : 'a stale or foreign page (a layer of the chain missing, or merged out of order?)'}`,
      );
    });
    for (const p of boot) {
      if (!memory.read(p).equals(bootPage(p, nonce))) {
        fail(
          `page ${p}, written at boot, holds ${isZero(memory.read(p)) ? 'zeros' : 'other data'}: the memory lacks the pages of the snapshot's base`,
        );
      }
    }
    return new TickingGuest(memory, tick, nonce, table);
  }

  get tick(): number {
    return this.current;
  }

  state(): GuestState {
    return { tick: this.current, nonce: this.nonce.toString('hex'), ring: this.table.length };
  }

  /** One tick of the guest: three page writes. Returns the new tick. */
  step(): number {
    const t = ++this.current;
    const ring = this.table.length;
    const written = t % ring;
    const zeroed = (t + 1) % ring;
    this.memory.write(1 + written, ringPage(written, t, this.nonce));
    this.table[written] = BigInt(t) + 1n;
    this.memory.write(1 + zeroed, Buffer.alloc(GUEST_PAGE_SIZE));
    this.table[zeroed] = ZEROED;
    this.memory.write(0, tablePage(t, this.nonce, this.table));
    return t;
  }
}

/**
 * The guest tick a simulator memory file holds (page 0), or null when page 0 holds no intact
 * page table (test tooling: e.g. the tick a snapshot was taken at).
 */
export function readGuestTick(memPath: string): number | null {
  const b = Buffer.alloc(GUEST_PAGE_SIZE);
  const fd = openSync(memPath, 'r');
  try {
    readSync(fd, b, 0, GUEST_PAGE_SIZE, 0);
  } finally {
    closeSync(fd);
  }
  const parsed = parseTable(b);
  return typeof parsed === 'string' ? null : parsed.tick;
}
