/**
 * Open-addressing hash index from a key of three int32 words and an 8-bit
 * tag to a record number below 2^24, with the whole entry in one 16-byte
 * slot (k0, k1, k2, record << 8 | tag), so a lookup in a table of a million
 * entries usually costs one cache line. Linear probing with backward-shift
 * deletion (no tombstones); capacity fixed at construction (a power of two
 * of slots, load at most 1/2). Nothing allocates after construction.
 */
const EMPTY = -1;

/** Largest record number an index holds (0xffffff with tag 0xff is the empty slot). */
export const TUPLE_INDEX_MAX_RECORD = 0xfffffe;

export class TupleIndex {
  private readonly slots: Int32Array;
  private readonly mask: number;
  private count = 0;
  readonly maxEntries: number;

  constructor(maxEntries: number) {
    if (maxEntries > TUPLE_INDEX_MAX_RECORD + 1) throw new RangeError(`a tuple index holds at most ${TUPLE_INDEX_MAX_RECORD + 1} records`);
    let n = 16;
    while (n < maxEntries * 2) n *= 2;
    this.mask = n - 1;
    this.maxEntries = maxEntries;
    this.slots = new Int32Array(n * 4).fill(EMPTY);
  }

  get size(): number { return this.count; }

  /** Bytes of memory the index holds. */
  get bytes(): number { return this.slots.byteLength; }

  private home(k0: number, k1: number, k2: number, tag: number): number {
    let h = Math.imul(k0 ^ Math.imul(tag, 0x9e3779b1), 0x85ebca6b);
    h = Math.imul(h ^ (h >>> 15) ^ k1, 0xc2b2ae35);
    h = Math.imul(h ^ (h >>> 13) ^ k2, 0x85ebca6b);
    return (h ^ (h >>> 16)) & this.mask;
  }

  /** The record stored for the key, or -1. */
  get(k0: number, k1: number, k2: number, tag: number): number {
    const w = this.slots[(this.find(k0, k1, k2, tag) << 2) + 3];
    return w === EMPTY ? EMPTY : w >>> 8;
  }

  /**
   * Reads the key's home slot and nothing else: its record when the key sits
   * there, else -1. A batch calls it for every packet before translating any,
   * so the cache misses of a large index overlap instead of queuing.
   */
  peek(k0: number, k1: number, k2: number, tag: number): number {
    const a = this.slots;
    const o = this.home(k0, k1, k2, tag) << 2;
    const w = a[o + 3];
    return w !== EMPTY && (w & 0xff) === tag && a[o] === k0 && a[o + 1] === k1 && a[o + 2] === k2 ? w >>> 8 : EMPTY;
  }

  /** The key's home slot, as an offset for word(): computes the hash and reads nothing. */
  homeOf(k0: number, k1: number, k2: number, tag: number): number {
    return this.home(k0, k1, k2, tag) << 2;
  }

  /** The record word at home offset `o` (homeOf), read only to bring its cache line in. */
  word(o: number): number {
    return this.slots[o + 3];
  }

  /** The slot holding the key, or the empty slot that ends its probe run. */
  private find(k0: number, k1: number, k2: number, tag: number): number {
    const a = this.slots;
    const mask = this.mask;
    let s = this.home(k0, k1, k2, tag);
    for (;;) {
      const o = s << 2;
      const w = a[o + 3];
      if (w === EMPTY || ((w & 0xff) === tag && a[o] === k0 && a[o + 1] === k1 && a[o + 2] === k2)) return s;
      s = (s + 1) & mask;
    }
  }

  /** Inserts or replaces. Returns false when the index is full and the key is new. */
  set(k0: number, k1: number, k2: number, tag: number, record: number): boolean {
    const a = this.slots;
    const o = this.find(k0, k1, k2, tag) << 2;
    if (a[o + 3] === EMPTY) {
      if (this.count >= this.maxEntries) return false;
      a[o] = k0; a[o + 1] = k1; a[o + 2] = k2;
      this.count++;
    }
    a[o + 3] = (record << 8) | tag;
    return true;
  }

  /** Removes the key if it leads to `record` (another record may have taken the key since); returns whether it did. */
  deleteIf(k0: number, k1: number, k2: number, tag: number, record: number): boolean {
    return this.remove(k0, k1, k2, tag, record);
  }

  /** Removes the key; returns whether it was present. */
  delete(k0: number, k1: number, k2: number, tag: number): boolean {
    return this.remove(k0, k1, k2, tag, -1);
  }

  private remove(k0: number, k1: number, k2: number, tag: number, record: number): boolean {
    const a = this.slots;
    const mask = this.mask;
    const s = this.find(k0, k1, k2, tag);
    const w0 = a[(s << 2) + 3];
    if (w0 === EMPTY || (record >= 0 && w0 >>> 8 !== record)) return false;
    // Backward shift: later members of the probe run move into the hole
    // unless their home lies cyclically in (hole, j].
    let hole = s;
    let j = s;
    for (;;) {
      j = (j + 1) & mask;
      const jo = j << 2;
      const w = a[jo + 3];
      if (w === EMPTY) break;
      const home = this.home(a[jo], a[jo + 1], a[jo + 2], w & 0xff);
      if (hole <= j ? home > hole && home <= j : home > hole || home <= j) continue;
      const ho = hole << 2;
      a[ho] = a[jo]; a[ho + 1] = a[jo + 1]; a[ho + 2] = a[jo + 2]; a[ho + 3] = w;
      hole = j;
    }
    a[(hole << 2) + 3] = EMPTY;
    this.count--;
    return true;
  }

  clear(): void {
    this.slots.fill(EMPTY);
    this.count = 0;
  }
}
