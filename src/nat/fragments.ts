/**
 * IP fragments (RFC 4787 REQ-14, RFC 791 §3.2). Only the first fragment of a
 * datagram carries the ports; later fragments follow the translation chosen
 * for it. Datagrams are remembered by (source, destination, protocol, IP ID)
 * as the NAT saw them arrive; fragments that arrive before their first
 * fragment are held in a fixed pool and released when it comes. Memory is
 * bounded by the pool and index sizes, time by a per-datagram deadline.
 */
import { FlowIndex } from '../core/flow-index';
import { SoaRows } from '../core/table';

const NONE = -1;
const HELD = 1;
/** Released in this batch; its bytes are still queued for writing. */
const RELEASED = 2;

export class FragmentTracker {
  // Datagrams whose first fragment has been translated.
  private readonly index: FlowIndex;
  private readonly dSrc: Int32Array;
  private readonly dDst: Int32Array;
  private readonly dKey: Int32Array;
  /** The addresses later fragments leave with (a hairpinned datagram changes both). */
  readonly dNewSrc: Int32Array;
  readonly dNewDst: Int32Array;
  private readonly dExpires: Float64Array;
  private readonly dRows: SoaRows;

  // Held fragments, each in one slot of the shared arena.
  readonly holdBase: number;
  readonly holdSlotSize: number;
  private readonly hState: Uint8Array;
  private readonly hLen: Uint32Array;
  private readonly hSrc: Int32Array;
  private readonly hDst: Int32Array;
  private readonly hKey: Int32Array;
  private readonly hExpires: Float64Array;
  heldCount = 0;
  /** Most fragments held at once: every hold slot, or fewer after a reload lowered limits.maxHeldFragments. */
  holdLimit: number;
  private releasedPending = false;

  constructor(maxDatagrams: number, holdBase: number, holdSlotSize: number, holdSlots: number) {
    this.index = new FlowIndex(maxDatagrams);
    this.dSrc = new Int32Array(maxDatagrams);
    this.dDst = new Int32Array(maxDatagrams);
    this.dKey = new Int32Array(maxDatagrams);
    this.dNewSrc = new Int32Array(maxDatagrams);
    this.dNewDst = new Int32Array(maxDatagrams);
    this.dExpires = new Float64Array(maxDatagrams);
    this.dRows = new SoaRows(maxDatagrams);
    this.holdBase = holdBase;
    this.holdSlotSize = holdSlotSize;
    this.hState = new Uint8Array(holdSlots);
    this.hLen = new Uint32Array(holdSlots);
    this.hSrc = new Int32Array(holdSlots);
    this.hDst = new Int32Array(holdSlots);
    this.hKey = new Int32Array(holdSlots);
    this.hExpires = new Float64Array(holdSlots);
    this.holdLimit = holdSlots;
  }

  /** Datagrams remembered (first fragment translated), and how many can be. */
  get datagramCount(): number { return this.dRows.count; }
  get datagramCapacity(): number { return this.dRows.capacity; }

  static key(proto: number, id: number): number {
    return (proto << 16) | id;
  }

  /** Datagram entry for a later fragment, or -1. */
  find(src: number, dst: number, key: number, now: number): number {
    const d = this.index.get(src, dst, key, 0);
    if (d === NONE) return NONE;
    if (this.dExpires[d] <= now) {
      this.removeDatagram(d);
      return NONE;
    }
    return d;
  }

  /** Records the translation of a datagram's first fragment. */
  remember(src: number, dst: number, key: number, newSrc: number, newDst: number, expires: number): void {
    let d = this.index.get(src, dst, key, 0);
    if (d === NONE) {
      d = this.dRows.take(0);
      if (d === NONE) return;
      if (!this.index.set(src, dst, key, 0, d)) {
        this.dRows.give(d);
        return;
      }
      this.dSrc[d] = src;
      this.dDst[d] = dst;
      this.dKey[d] = key;
    }
    this.dNewSrc[d] = newSrc;
    this.dNewDst[d] = newDst;
    this.dExpires[d] = expires;
  }

  private removeDatagram(d: number): void {
    this.index.delete(this.dSrc[d], this.dDst[d], this.dKey[d], 0);
    this.dRows.give(d);
  }

  /** Copies a fragment into a free hold slot; returns false when the pool is full or it does not fit. */
  /** `off` points into `arena` itself (the packet as read). */
  hold(arena: Uint8Array, off: number, len: number, src: number, dst: number, key: number, expires: number): boolean {
    if (this.heldCount >= this.holdLimit) return false;
    const h = this.claim(arena, off, len, HELD);
    if (h < 0) return false;
    this.hSrc[h] = src;
    this.hDst[h] = dst;
    this.hKey[h] = key;
    this.hExpires[h] = expires;
    this.heldCount++;
    return true;
  }

  /**
   * Copies a packet into a free slot to be written in this batch (a guessed
   * copy of inbound ESP or ISAKMP, spec §4.3 step 4); returns the slot or -1.
   */
  borrow(arena: Uint8Array, off: number, len: number): number {
    const h = this.claim(arena, off, len, RELEASED);
    if (h >= 0) this.releasedPending = true;
    return h;
  }

  private claim(arena: Uint8Array, off: number, len: number, state: number): number {
    if (len > this.holdSlotSize) return NONE;
    const slots = this.hState.length;
    for (let h = 0; h < slots; h++) {
      if (this.hState[h] !== 0) continue;
      arena.copyWithin(this.holdBase + h * this.holdSlotSize, off, off + len);
      this.hState[h] = state;
      this.hLen[h] = len;
      return h;
    }
    return NONE;
  }

  /** Next held slot at or after `from` that belongs to the datagram, or -1. Marks it released. */
  takeHeld(src: number, dst: number, key: number, from: number): number {
    const slots = this.hState.length;
    for (let h = from; h < slots; h++) {
      if (this.hState[h] === HELD && this.hSrc[h] === src && this.hDst[h] === dst && this.hKey[h] === key) {
        this.hState[h] = RELEASED;
        this.heldCount--;
        this.releasedPending = true;
        return h;
      }
    }
    return NONE;
  }

  heldOffset(h: number): number { return this.holdBase + h * this.holdSlotSize; }
  heldLength(h: number): number { return this.hLen[h]; }

  /** Called at the start of every batch: slots released in the previous batch have been written. */
  recycleReleased(): void {
    if (!this.releasedPending) return;
    this.releasedPending = false;
    const st = this.hState;
    for (let h = 0; h < st.length; h++) if (st[h] === RELEASED) st[h] = 0;
  }

  /** Moves every deadline by `deltaMs` (timeouts.fragment changed on reload). Not the packet path. */
  shiftDeadlines(deltaMs: number): void {
    const inUse = this.dRows.inUse;
    for (let d = 0; d < inUse.length; d++) if (inUse[d] === 1) this.dExpires[d] += deltaMs;
    for (let h = 0; h < this.hState.length; h++) if (this.hState[h] === HELD) this.hExpires[h] += deltaMs;
  }

  /** Drops expired datagram entries and held fragments; returns the number of fragments dropped. */
  sweep(now: number): number {
    const inUse = this.dRows.inUse;
    for (let d = 0; d < inUse.length; d++) {
      if (inUse[d] === 1 && this.dExpires[d] <= now) this.removeDatagram(d);
    }
    let dropped = 0;
    for (let h = 0; h < this.hState.length; h++) {
      if (this.hState[h] === HELD && this.hExpires[h] <= now) {
        this.hState[h] = 0;
        this.heldCount--;
        dropped++;
      }
    }
    return dropped;
  }
}
