/**
 * The packets to write after a batch: (byte offset into the shared arena,
 * length) pairs, in a Uint32Array that the TUN addon reads directly.
 */
export class TxList {
  readonly list: Uint32Array;
  count = 0;

  constructor(maxEntries: number) {
    this.list = new Uint32Array(maxEntries * 2);
  }

  get capacity(): number { return this.list.length >>> 1; }

  /** Queues a packet; returns false (and queues nothing) when the list is full. */
  push(off: number, len: number): boolean {
    const i = this.count << 1;
    if (i >= this.list.length) return false;
    this.list[i] = off;
    this.list[i + 1] = len;
    this.count++;
    return true;
  }
}
