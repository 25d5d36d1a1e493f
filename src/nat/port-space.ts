/**
 * The public ports (or ICMP identifiers) of one public address for one
 * protocol: how many mappings use each port, and which ports of the
 * configured ranges no mapping uses, as a two-level bitmap (a bit per port,
 * and a bit per non-empty word of it). Finding an unused port from a random
 * start (RFC 6056 §3.3.1, "simple port randomization") reads at most the
 * 64 summary words and two port words; "none left" is a counter. Nothing
 * allocates after construction.
 *
 * Ports are in two classes (RFC 4787 REQ-3a): LAN ports below 1024 map to
 * the low range when there is one, every other port to the range.
 */
export const CLASS_HIGH = 0;
export const CLASS_LOW = 1;

/** A port this many mappings share takes no more (users is a byte). */
export const MAX_SHARERS = 255;

export class PortSpace {
  /** Mappings using each port. */
  private readonly users = new Uint8Array(65536);
  /** Bit p: port p is in a class range and unused. */
  private readonly freeBits = new Int32Array(2048);
  /** Bit w: freeBits[w] !== 0. */
  private readonly summary = new Int32Array(64);
  /** Bit p: port p is never handed out dynamically (a forward's). */
  private readonly reservedBits = new Int32Array(2048);
  private readonly lo = new Int32Array(2);
  private readonly hi = new Int32Array(2);
  /** Unused ports per class. */
  readonly freeCount = new Int32Array(2);

  /** Ports of `range`, and of `lowRange` for LAN ports below 1024 unless it is null. */
  constructor(range: readonly [number, number], low: readonly [number, number] | null) {
    this.lo[CLASS_HIGH] = range[0];
    this.hi[CLASS_HIGH] = range[1];
    this.lo[CLASS_LOW] = low === null ? range[0] : low[0];
    this.hi[CLASS_LOW] = low === null ? range[1] : low[1];
    for (let c = 0; c < (low === null ? 1 : 2); c++) {
      for (let p = this.lo[c]; p <= this.hi[c]; p++) this.setFree(p);
      this.freeCount[c] = this.hi[c] - this.lo[c] + 1;
    }
  }

  /** The class a LAN port's mapping takes its public port from. */
  classOf(lanPort: number): number {
    return lanPort < 1024 && this.lo[CLASS_LOW] !== this.lo[CLASS_HIGH] ? CLASS_LOW : CLASS_HIGH;
  }

  low(cls: number): number { return this.lo[cls]; }
  high(cls: number): number { return this.hi[cls]; }
  size(cls: number): number { return this.hi[cls] - this.lo[cls] + 1; }

  inClass(cls: number, port: number): boolean {
    return port >= this.lo[cls] && port <= this.hi[cls];
  }

  usersOf(port: number): number { return this.users[port]; }

  /** In a class range, not reserved, and no mapping uses it. */
  isUnused(port: number): boolean {
    return this.isFree(port);
  }

  /** Whether a new mapping may use `port` dynamically as one more sharer (port overlapping). */
  canShare(port: number): boolean {
    return this.users[port] < MAX_SHARERS && (this.reservedBits[port >>> 5] & (1 << (port & 31))) === 0;
  }

  /** Whether a mapping with this fixed port (a forward, a restored row) can take it as one more user. */
  canTake(port: number): boolean {
    return this.users[port] < MAX_SHARERS;
  }

  /** `port` is never handed out dynamically from now on. */
  reserve(port: number): void {
    this.reservedBits[port >>> 5] |= 1 << (port & 31);
    if (this.isFree(port)) {
      this.clearFree(port);
      this.freeCount[this.classOfPort(port)]--;
    }
  }

  /** `port` may be handed out again. */
  unreserve(port: number): void {
    const w = port >>> 5;
    if ((this.reservedBits[w] & (1 << (port & 31))) === 0) return;
    this.reservedBits[w] &= ~(1 << (port & 31));
    const cls = this.classOfPort(port);
    if (this.users[port] === 0 && cls >= 0) {
      this.setFree(port);
      this.freeCount[cls]++;
    }
  }

  /** Bytes held. */
  get bytes(): number {
    return this.users.byteLength + this.freeBits.byteLength + this.summary.byteLength + this.reservedBits.byteLength;
  }

  /** One more mapping uses `port`; false (nothing changes) when MAX_SHARERS already do. */
  take(port: number): boolean {
    const u = this.users[port];
    if (u === MAX_SHARERS) return false;
    if (u === 0 && this.isFree(port)) {
      this.clearFree(port);
      this.freeCount[this.classOfPort(port)]--;
    }
    this.users[port] = u + 1;
    return true;
  }

  /** A mapping on `port` is gone. */
  release(port: number): void {
    const u = this.users[port] - 1;
    this.users[port] = u;
    if (u !== 0 || (this.reservedBits[port >>> 5] & (1 << (port & 31))) !== 0) return;
    const cls = this.classOfPort(port);
    if (cls < 0) return;
    this.setFree(port);
    this.freeCount[cls]++;
  }

  /**
   * An unused port of class `cls`: the first one at or after a point chosen
   * by `r` (uniform in [0, 1)), wrapping around; -1 when none is left.
   */
  randomFree(cls: number, r: number): number {
    if (this.freeCount[cls] === 0) return -1;
    const lo = this.lo[cls];
    const hi = this.hi[cls];
    const start = lo + Math.floor(r * (hi - lo + 1));
    const p = this.nextFree(start, hi);
    return p >= 0 ? p : this.nextFree(lo, start - 1);
  }

  /** The first unused port in [from, to], or -1. */
  private nextFree(from: number, to: number): number {
    if (from > to) return -1;
    const bits = this.freeBits;
    let w = from >>> 5;
    const last = to >>> 5;
    let word = bits[w] & (-1 << (from & 31));
    for (;;) {
      if (word !== 0) {
        const p = (w << 5) + ctz(word);
        return p <= to ? p : -1;
      }
      w = this.nextWord(w + 1, last);
      if (w < 0) return -1;
      word = bits[w];
    }
  }

  /** The first non-empty bitmap word in [from, last], or -1 (through the summary). */
  private nextWord(from: number, last: number): number {
    if (from > last) return -1;
    const sum = this.summary;
    let sw = from >>> 5;
    let word = sum[sw] & (-1 << (from & 31));
    const lastSw = last >>> 5;
    for (;;) {
      if (word !== 0) {
        const w = (sw << 5) + ctz(word);
        return w <= last ? w : -1;
      }
      if (++sw > lastSw) return -1;
      word = sum[sw];
    }
  }

  private classOfPort(port: number): number {
    if (port >= this.lo[CLASS_HIGH] && port <= this.hi[CLASS_HIGH]) return CLASS_HIGH;
    if (this.lo[CLASS_LOW] !== this.lo[CLASS_HIGH] && port >= this.lo[CLASS_LOW] && port <= this.hi[CLASS_LOW]) return CLASS_LOW;
    return -1;
  }

  private isFree(port: number): boolean {
    return (this.freeBits[port >>> 5] & (1 << (port & 31))) !== 0;
  }

  private setFree(port: number): void {
    const w = port >>> 5;
    this.freeBits[w] |= 1 << (port & 31);
    this.summary[w >>> 5] |= 1 << (w & 31);
  }

  private clearFree(port: number): void {
    const w = port >>> 5;
    const v = this.freeBits[w] & ~(1 << (port & 31));
    this.freeBits[w] = v;
    if (v === 0) this.summary[w >>> 5] &= ~(1 << (w & 31));
  }
}

/** Index of the lowest set bit of a non-zero word. */
function ctz(x: number): number {
  return 31 - Math.clz32(x & -x);
}
