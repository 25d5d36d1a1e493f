/**
 * The free record numbers of a fixed-capacity struct-of-arrays table, kept
 * as a stack in one Int32Array: take() and give() are O(1) and allocate
 * nothing. Records are handed out lowest number first.
 */
export class SlotPool {
  private readonly free: Int32Array;
  private top: number;

  constructor(capacity: number) {
    this.free = new Int32Array(capacity);
    for (let i = 0; i < capacity; i++) this.free[i] = capacity - 1 - i;
    this.top = capacity;
  }

  /** How many records are free. */
  get available(): number { return this.top; }

  /** A free record number, or -1 when the table is full. */
  take(): number {
    return this.top === 0 ? -1 : this.free[--this.top];
  }

  /** Returns a record number taken earlier. */
  give(slot: number): void {
    this.free[this.top++] = slot;
  }
}
