/**
 * The ids restore has taken so far, and which table took each: an
 * open-addressing set of float64 keys in typed arrays, growing by doubling.
 * A Map of a million numbers cost restore most of a second of its five;
 * this one touches one or two cache lines per lookup and allocates only when
 * it grows. Any number is accepted (a hostile row may carry a fraction or
 * -0); NaN is never taken, as a Map's SameValueZero would have it equal itself
 * but no id can be NaN.
 */
const EMPTY = 0;

export class IdSet {
  private keys: Float64Array;
  /** Holder + 1 per slot (0: empty). */
  private holders: Uint8Array;
  private mask: number;
  private count = 0;

  constructor(expected = 1024) {
    let n = 16;
    while (n < expected * 2) n *= 2;
    this.keys = new Float64Array(n);
    this.holders = new Uint8Array(n);
    this.mask = n - 1;
  }

  get size(): number { return this.count; }

  /** The holder (0..254) `id` was added with, or -1. */
  holder(id: number): number {
    if (id !== id) return -1;
    const k = this.keys;
    const h = this.holders;
    for (let s = this.home(id); ; s = (s + 1) & this.mask) {
      if (h[s] === EMPTY) return -1;
      if (k[s] === id) return h[s] - 1;
    }
  }

  /** Adds `id` for `holder` (0..254) unless it is there already; returns whether it was added. */
  add(id: number, holder: number): boolean {
    if (id !== id) return false;
    if ((this.count + 1) * 2 > this.keys.length) this.grow();
    const k = this.keys;
    const h = this.holders;
    for (let s = this.home(id); ; s = (s + 1) & this.mask) {
      if (h[s] === EMPTY) {
        k[s] = id;
        h[s] = holder + 1;
        this.count++;
        return true;
      }
      if (k[s] === id) return false;
    }
  }

  private home(id: number): number {
    // 0 and -0 are one id (SameValueZero), so they must share a home.
    const x = id === 0 ? 0 : id;
    const lo = x >>> 0;
    const hi = Math.floor(x / 4294967296) | 0;
    let h = Math.imul(lo ^ Math.imul(hi, 0x9e3779b1), 0x85ebca6b);
    h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
    return (h ^ (h >>> 16)) & this.mask;
  }

  private grow(): void {
    const keys = this.keys;
    const holders = this.holders;
    this.keys = new Float64Array(keys.length * 2);
    this.holders = new Uint8Array(keys.length * 2);
    this.mask = keys.length * 2 - 1;
    this.count = 0;
    for (let s = 0; s < keys.length; s++) if (holders[s] !== EMPTY) this.add(keys[s], holders[s] - 1);
  }
}
