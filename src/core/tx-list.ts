/**
 * The packets to write after a batch: (byte offset into the shared arena,
 * length) pairs and the tag of the TUN device to write each to, in typed
 * arrays that the TUN addon reads directly.
 */
export class TxList {
  readonly list: Uint32Array;
  readonly dev: Uint8Array;
  count = 0;

  constructor(maxEntries: number) {
    this.list = new Uint32Array(maxEntries * 2);
    this.dev = new Uint8Array(maxEntries);
  }

  get capacity(): number { return this.dev.length; }

  /** Queues a packet for device `dev`; returns false (and queues nothing) when the list is full. */
  push(off: number, len: number, dev = 0): boolean {
    const n = this.count;
    if (n >= this.dev.length) return false;
    this.list[n << 1] = off;
    this.list[(n << 1) + 1] = len;
    this.dev[n] = dev;
    this.count = n + 1;
    return true;
  }
}
