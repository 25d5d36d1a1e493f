/**
 * A bounded ring of table events (new, update, destroy) for the consumers that
 * follow the table: the state store and `vpnmasq conns watch`. The packet path
 * only writes three numbers per event. When more events are pushed between
 * two drains than the ring holds, the oldest are overwritten and counted in
 * `lost`: the consumers must then resynchronise from the tables.
 */
export const EV_NEW = 1;
export const EV_UPDATE = 2;
export const EV_DESTROY = 3;

export class Journal {
  private readonly kinds: Uint8Array;
  private readonly tables: Uint8Array;
  private readonly indexes: Int32Array;
  private readonly serials: Float64Array;
  private readonly mask: number;
  private head = 0;
  private tail = 0;
  /** Events overwritten before they were drained; the drainer resets it. */
  lost = 0;

  constructor(capacityPow2 = 1 << 16) {
    this.kinds = new Uint8Array(capacityPow2);
    this.tables = new Uint8Array(capacityPow2);
    this.indexes = new Int32Array(capacityPow2);
    this.serials = new Float64Array(capacityPow2);
    this.mask = capacityPow2 - 1;
  }

  push(kind: number, table: number, index: number, serial: number): void {
    const h = this.head;
    if (h - this.tail > this.mask) {
      this.lost += h - this.mask - this.tail;
      this.tail = h - this.mask;
    }
    const i = h & this.mask;
    this.kinds[i] = kind;
    this.tables[i] = table;
    this.indexes[i] = index;
    this.serials[i] = serial;
    this.head = h + 1;
  }

  get length(): number { return this.head - this.tail; }

  /** Calls `fn` for every pending event in order and empties the ring. */
  drain(fn: (kind: number, table: number, index: number, serial: number) => void): number {
    let n = 0;
    while (this.tail < this.head) {
      const i = this.tail & this.mask;
      this.tail++;
      fn(this.kinds[i], this.tables[i], this.indexes[i], this.serials[i]);
      n++;
    }
    return n;
  }
}

/**
 * A consumer that must see table events before the batch that caused them is
 * written (the state store). `event` is called for every NEW/UPDATE/DESTROY in
 * order; `flush` once after each drain. The journal is drained at the end of
 * every batch that changed a table, before the batch's packets are written,
 * so a listener that commits in `flush` makes new entries durable before
 * their first packet leaves (write-ahead). Observers that only report (`conns
 * watch`) are fed after the batch is written instead.
 */
export interface JournalListener {
  event(kind: number, table: number, index: number, serial: number): void;
  flush(): void;
}
