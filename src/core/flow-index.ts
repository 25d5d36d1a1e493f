/**
 * Open-addressing hash index from a key of four int32 words to an int32 value
 * (a record number in some struct-of-arrays table). Linear probing with
 * backward-shift deletion, so there are no tombstones and lookups stay short.
 * Capacity is fixed at construction (a power of two, load kept at or below 1/2):
 * nothing on the packet path allocates.
 */
const EMPTY = -1;

export class FlowIndex {
  private readonly keys: Int32Array;
  private readonly values: Int32Array;
  private readonly mask: number;
  private count = 0;
  readonly maxEntries: number;

  constructor(maxEntries: number) {
    let slots = 16;
    while (slots < maxEntries * 2) slots *= 2;
    this.mask = slots - 1;
    this.maxEntries = maxEntries;
    this.keys = new Int32Array(slots * 4);
    this.values = new Int32Array(slots).fill(EMPTY);
  }

  get size(): number { return this.count; }

  private slotOf(k0: number, k1: number, k2: number, k3: number): number {
    let h = Math.imul(k0 ^ 0x9e3779b9, 0x85ebca6b);
    h = Math.imul(h ^ (h >>> 13) ^ k1, 0xc2b2ae35);
    h = Math.imul(h ^ (h >>> 16) ^ k2, 0x85ebca6b);
    h = Math.imul(h ^ (h >>> 13) ^ k3, 0xc2b2ae35);
    return (h ^ (h >>> 16)) & this.mask;
  }

  /** The value stored for the key, or -1. */
  get(k0: number, k1: number, k2: number, k3: number): number {
    const keys = this.keys;
    const values = this.values;
    let s = this.slotOf(k0, k1, k2, k3);
    for (;;) {
      const v = values[s];
      if (v === EMPTY) return EMPTY;
      const o = s << 2;
      if (keys[o] === k0 && keys[o + 1] === k1 && keys[o + 2] === k2 && keys[o + 3] === k3) return v;
      s = (s + 1) & this.mask;
    }
  }

  /** Inserts or replaces. Returns false when the index is full (maxEntries reached) and the key is new. */
  set(k0: number, k1: number, k2: number, k3: number, value: number): boolean {
    const keys = this.keys;
    const values = this.values;
    let s = this.slotOf(k0, k1, k2, k3);
    for (;;) {
      const o = s << 2;
      if (values[s] === EMPTY) {
        if (this.count >= this.maxEntries) return false;
        keys[o] = k0; keys[o + 1] = k1; keys[o + 2] = k2; keys[o + 3] = k3;
        values[s] = value;
        this.count++;
        return true;
      }
      if (keys[o] === k0 && keys[o + 1] === k1 && keys[o + 2] === k2 && keys[o + 3] === k3) {
        values[s] = value;
        return true;
      }
      s = (s + 1) & this.mask;
    }
  }

  /** Removes the key; returns whether it was present. */
  delete(k0: number, k1: number, k2: number, k3: number): boolean {
    const keys = this.keys;
    const values = this.values;
    const mask = this.mask;
    let s = this.slotOf(k0, k1, k2, k3);
    for (;;) {
      if (values[s] === EMPTY) return false;
      const o = s << 2;
      if (keys[o] === k0 && keys[o + 1] === k1 && keys[o + 2] === k2 && keys[o + 3] === k3) break;
      s = (s + 1) & mask;
    }
    // Backward-shift: move later members of the probe run into the hole when
    // their home slot does not lie cyclically in (hole, current].
    let hole = s;
    let j = s;
    for (;;) {
      j = (j + 1) & mask;
      if (values[j] === EMPTY) break;
      const jo = j << 2;
      const home = this.slotOf(keys[jo], keys[jo + 1], keys[jo + 2], keys[jo + 3]);
      const between = hole <= j ? home > hole && home <= j : home > hole || home <= j;
      if (between) continue;
      const ho = hole << 2;
      keys[ho] = keys[jo]; keys[ho + 1] = keys[jo + 1]; keys[ho + 2] = keys[jo + 2]; keys[ho + 3] = keys[jo + 3];
      values[hole] = values[j];
      hole = j;
    }
    values[hole] = EMPTY;
    this.count--;
    return true;
  }

  clear(): void {
    this.values.fill(EMPTY);
    this.count = 0;
  }
}
