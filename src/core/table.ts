/**
 * The columns every struct-of-arrays table of the packet path has, kept in
 * one place: which records are in use, each row's serial (its id for
 * operators, the journal and the state store), the free records and the
 * count. A table holds one of these per kind of row and adds its own typed
 * arrays indexed by the same record number. take() and give() are O(1) and
 * allocate nothing.
 */
import { SlotPool } from './slot-pool';

/**
 * The one id space of every table's rows (sessions, PPTP calls, ISAKMP and
 * ESP entries), so `vpnmasq conns show|delete ID` names exactly one row.
 * `next` is read and incremented in place on the packet path.
 */
export class Serials {
  /** The id the next row gets. */
  next = 1;

  /** A restored row keeps its id; new rows continue above it. */
  seen(serial: number): void {
    if (serial >= this.next) this.next = serial + 1;
  }
}

export class SoaRows {
  readonly capacity: number;
  /** 1 while the record holds a row. */
  readonly inUse: Uint8Array;
  /** The row's serial; kept after removal until the record is reused (a DESTROY event can still name it). */
  readonly serial: Float64Array;
  count = 0;
  private readonly free: SlotPool;

  constructor(capacity: number) {
    this.capacity = capacity;
    this.inUse = new Uint8Array(capacity);
    this.serial = new Float64Array(capacity);
    this.free = new SlotPool(capacity);
  }

  /** How many records are free. */
  get available(): number { return this.free.available; }

  /** A free record, now in use with this serial, or -1 when the table is full. */
  take(serial: number): number {
    const i = this.free.take();
    if (i < 0) return i;
    this.inUse[i] = 1;
    this.serial[i] = serial;
    this.count++;
    return i;
  }

  /** Frees a record in use (the caller has unlinked the row from its indexes). */
  give(i: number): void {
    this.inUse[i] = 0;
    this.free.give(i);
    this.count--;
  }

  /**
   * Removes through `remove` (the table's own removal, bound once) every row
   * whose serial is in `ids`, or every row when `ids` is null; returns how
   * many. Not for the packet path.
   */
  removeRows(ids: ReadonlySet<number> | null, remove: (i: number) => void): number {
    let n = 0;
    for (let i = 0; i < this.capacity; i++) {
      if (this.inUse[i] === 1 && (ids === null || ids.has(this.serial[i]))) {
        remove(i);
        n++;
      }
    }
    return n;
  }

  /** True while record `i` still holds the row with this serial. */
  holds(i: number, serial: number): boolean {
    return this.inUse[i] === 1 && this.serial[i] === serial;
  }
}

/** `n` typed arrays of `capacity` elements: a table's columns of one type, destructured into its fields. */
export function columns<T>(ctor: new (length: number) => T, capacity: number, n: number): T[] {
  const out: T[] = [];
  for (let i = 0; i < n; i++) out.push(new ctor(capacity));
  return out;
}
