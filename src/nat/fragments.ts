/**
 * IP fragments (RFC 4787 REQ-14, RFC 791 §3.2) and the bounded hold pool.
 *
 * Only the first fragment of a datagram carries the ports. A datagram NAPT
 * translates on its own follows its first fragment (FOLLOW): later fragments
 * get the addresses chosen for it, and those that arrive before it wait in
 * the pool. A datagram a helper must see whole (the PPTP control channel,
 * ISAKMP, anything a tracker delivers inbound, so guessed copies get every
 * fragment) is collected (COLLECT): all its fragments wait in the pool until
 * they cover it, then the engine reassembles it in a scratch area,
 * translates it once and writes its fragments back out; late duplicates of
 * it are dropped (DONE). This is the old patches' "always defragment",
 * without holding more than the pool.
 *
 * Datagrams are remembered by (source, destination, protocol, IP ID) as the
 * NAT saw them arrive. The pool also holds a session helper's TCP segments
 * that arrive beyond a gap (kinds >= SEGMENT). Memory is bounded by the pool
 * and index sizes, time by a deadline per datagram and held packet.
 */
import { FlowIndex } from '../core/flow-index';
import { SoaRows } from '../core/table';
import { TupleIndex } from '../core/tuple-index';

const NONE = -1;
const HELD = 1;
/** Released in this batch; its bytes are still queued for writing. */
const RELEASED = 2;

/** What a datagram entry means for the fragments that find it. */
export const FOLLOW = 0;
export const COLLECT = 1;
export const DONE = 2;

/** Kinds of held packet: a fragment, or a session helper's segment (kind = SEGMENT + helper-specific bits). */
export const FRAGMENT = 0;
export const SEGMENT = 2;

/** holdSlot(): the source holds perSourceLimit fragments already. */
export const SOURCE_LIMIT = -2;

/** Bytes of the reassembly area: a whole IPv4 datagram and a vnet header. */
export const WHOLE_SIZE = 65535 + 64;

export class FragmentTracker {
  // Datagrams whose first fragment has been seen.
  private readonly index: FlowIndex;
  private readonly dSrc: Int32Array;
  private readonly dDst: Int32Array;
  private readonly dKey: Int32Array;
  /** The addresses later fragments leave with (a hairpinned datagram changes both). */
  readonly dNewSrc: Int32Array;
  readonly dNewDst: Int32Array;
  readonly dMode: Uint8Array;
  private readonly dExpires: Float64Array;
  private readonly dRows: SoaRows;

  // Held packets, each in one slot of the shared arena.
  readonly holdBase: number;
  readonly holdSlotSize: number;
  private readonly hState: Uint8Array;
  private readonly hKind: Uint8Array;
  private readonly hLen: Uint32Array;
  private readonly hSrc: Int32Array;
  private readonly hDst: Int32Array;
  private readonly hKey: Int32Array;
  /** Fragments: byte offset and length of the payload in the datagram, and whether more fragments follow. */
  private readonly hFragOff: Int32Array;
  private readonly hFragLen: Int32Array;
  private readonly hMore: Uint8Array;
  private readonly hExpires: Float64Array;
  heldCount = 0;
  /** Most fragments held at once: every hold slot, or fewer after a reload lowered limits.maxHeldFragments. */
  holdLimit: number;
  /**
   * Most fragments one source address may hold (limits.fragmentsPerSource),
   * so that fragments sprayed from one place cannot take the whole pool.
   */
  perSourceLimit: number;
  /** Held fragments by source address. */
  private readonly bySource: TupleIndex;
  private releasedPending = false;

  /**
   * `maxDatagrams` remembered datagrams; `holdSlots` slots of `holdSlotSize`
   * bytes from `holdBase` in the arena; the reassembly area at `wholeOff`
   * (WHOLE_SIZE bytes), or -1 for none (every datagram then follows its
   * first fragment).
   */
  constructor(maxDatagrams: number, holdBase: number, holdSlotSize: number, holdSlots: number, readonly wholeOff = NONE) {
    this.index = new FlowIndex(maxDatagrams);
    this.dSrc = new Int32Array(maxDatagrams);
    this.dDst = new Int32Array(maxDatagrams);
    this.dKey = new Int32Array(maxDatagrams);
    this.dNewSrc = new Int32Array(maxDatagrams);
    this.dNewDst = new Int32Array(maxDatagrams);
    this.dMode = new Uint8Array(maxDatagrams);
    this.dExpires = new Float64Array(maxDatagrams);
    this.dRows = new SoaRows(maxDatagrams);
    this.holdBase = holdBase;
    this.holdSlotSize = holdSlotSize;
    this.hState = new Uint8Array(holdSlots);
    this.hKind = new Uint8Array(holdSlots);
    this.hLen = new Uint32Array(holdSlots);
    this.hSrc = new Int32Array(holdSlots);
    this.hDst = new Int32Array(holdSlots);
    this.hKey = new Int32Array(holdSlots);
    this.hFragOff = new Int32Array(holdSlots);
    this.hFragLen = new Int32Array(holdSlots);
    this.hMore = new Uint8Array(holdSlots);
    this.hExpires = new Float64Array(holdSlots);
    this.holdLimit = holdSlots;
    this.perSourceLimit = holdSlots;
    this.bySource = new TupleIndex(holdSlots);
  }

  /** Datagrams remembered (first fragment translated), and how many can be. */
  get datagramCount(): number { return this.dRows.count; }
  get datagramCapacity(): number { return this.dRows.capacity; }

  static key(proto: number, id: number): number {
    return (proto << 16) | id;
  }

  /** Datagram entry for a fragment, or -1. */
  find(src: number, dst: number, key: number, now: number): number {
    const d = this.index.get(src, dst, key, 0);
    if (d === NONE) return NONE;
    if (this.dExpires[d] <= now) {
      this.removeDatagram(d);
      return NONE;
    }
    return d;
  }

  /** Records the translation of a datagram's first fragment (FOLLOW), or that it is being collected or was (COLLECT, DONE). */
  remember(src: number, dst: number, key: number, newSrc: number, newDst: number, expires: number, mode = FOLLOW): void {
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
    this.dMode[d] = mode;
    this.dExpires[d] = expires;
  }

  private removeDatagram(d: number): void {
    this.index.delete(this.dSrc[d], this.dDst[d], this.dKey[d], 0);
    this.dRows.give(d);
  }

  /**
   * Copies a packet into a free hold slot (`off` points into `arena` itself,
   * the packet as read); returns false when the pool is full or it does not
   * fit.
   */
  hold(arena: Uint8Array, off: number, len: number, src: number, dst: number, key: number, expires: number, kind = FRAGMENT): boolean {
    return this.holdSlot(arena, off, len, src, dst, key, expires, kind, 0, 0, false) >= 0;
  }

  /**
   * As hold(), with a fragment's payload offset and length in the datagram
   * and its MF flag; returns the slot, -1 (the pool is full) or SOURCE_LIMIT.
   */
  holdSlot(arena: Uint8Array, off: number, len: number, src: number, dst: number, key: number, expires: number,
    kind: number, fragOff: number, fragLen: number, more: boolean): number {
    if (this.heldCount >= this.holdLimit) return NONE;
    const bySource = kind === FRAGMENT ? Math.max(0, this.bySource.get(src, 0, 0, 0)) : 0;
    if (kind === FRAGMENT && bySource >= this.perSourceLimit) return SOURCE_LIMIT;
    const h = this.claim(arena, off, len, HELD);
    if (h < 0) return NONE;
    if (kind === FRAGMENT) this.bySource.set(src, 0, 0, 0, bySource + 1);
    this.hKind[h] = kind;
    this.hSrc[h] = src;
    this.hDst[h] = dst;
    this.hKey[h] = key;
    this.hFragOff[h] = fragOff;
    this.hFragLen[h] = fragLen;
    this.hMore[h] = more ? 1 : 0;
    this.hExpires[h] = expires;
    this.heldCount++;
    return h;
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

  /** Next held fragment at or after `from` that belongs to the datagram, or -1. Marks it released. */
  takeHeld(src: number, dst: number, key: number, from: number): number {
    const h = this.nextHeld(FRAGMENT, src, dst, key, from);
    if (h >= 0) this.release(h);
    return h;
  }

  /** Next held packet of this kind and keys at or after `from` (dst or key -1: any), or -1. */
  nextHeld(kind: number, src: number, dst: number, key: number, from: number): number {
    const slots = this.hState.length;
    for (let h = from; h < slots; h++) {
      if (this.hState[h] === HELD && this.hKind[h] === kind && this.hSrc[h] === src &&
        (dst === NONE || this.hDst[h] === dst) && (key === NONE || this.hKey[h] === key)) return h;
    }
    return NONE;
  }

  /**
   * The held fragments of a datagram in `into`, by offset; returns how many,
   * or -1 when they do not yet cover it from 0 to a last fragment without
   * gaps or overlaps (or there are more than `into` holds).
   */
  whole(src: number, dst: number, key: number, into: Int32Array): number {
    let n = 0;
    for (let h = this.nextHeld(FRAGMENT, src, dst, key, 0); h >= 0; h = this.nextHeld(FRAGMENT, src, dst, key, h + 1)) {
      if (n === into.length) return NONE;
      // Insertion by offset: a datagram has a handful of fragments.
      let i = n++;
      while (i > 0 && this.hFragOff[into[i - 1]] > this.hFragOff[h]) { into[i] = into[i - 1]; i--; }
      into[i] = h;
    }
    let end = 0;
    for (let i = 0; i < n; i++) {
      const h = into[i];
      if (this.hFragOff[h] !== end) return NONE;
      end += this.fragLen(h);
      if (this.hMore[h] === 0) return i === n - 1 ? n : NONE;
    }
    return NONE;
  }

  /** A held fragment's payload: its offset and length in the datagram. */
  fragOffset(h: number): number { return this.hFragOff[h]; }
  fragLen(h: number): number { return this.hFragLen[h]; }

  heldOffset(h: number): number { return this.holdBase + h * this.holdSlotSize; }
  heldLength(h: number): number { return this.hLen[h]; }
  heldKind(h: number): number { return this.hKind[h]; }
  heldDst(h: number): number { return this.hDst[h]; }
  heldKey(h: number): number { return this.hKey[h]; }

  /** True while slot `h` holds a packet. */
  isHeld(h: number): boolean { return this.hState[h] === HELD; }

  /** How many slots are free (a copy of a whole datagram needs one per fragment). */
  get freeSlots(): number {
    let n = 0;
    for (let h = 0; h < this.hState.length; h++) if (this.hState[h] === 0) n++;
    return n;
  }

  /** Marks a held slot as written in this batch. */
  release(h: number): void {
    this.hState[h] = RELEASED;
    this.unhold(h);
    this.releasedPending = true;
  }

  /** Frees a held slot without writing it. */
  discard(h: number): void {
    this.hState[h] = 0;
    this.unhold(h);
  }

  private unhold(h: number): void {
    this.heldCount--;
    if (this.hKind[h] !== FRAGMENT) return;
    const src = this.hSrc[h];
    const n = this.bySource.get(src, 0, 0, 0);
    if (n > 1) this.bySource.set(src, 0, 0, 0, n - 1);
    else this.bySource.delete(src, 0, 0, 0);
  }

  /** Called at the start of every batch: slots released in the previous batch have been written. */
  recycleReleased(): void {
    if (!this.releasedPending) return;
    this.releasedPending = false;
    const st = this.hState;
    for (let h = 0; h < st.length; h++) if (st[h] === RELEASED) st[h] = 0;
  }

  /**
   * Moves the deadline of every datagram and held fragment by `deltaMs`
   * (timeouts.fragment changed on reload; a helper's held segments keep
   * theirs). Not the packet path.
   */
  shiftDeadlines(deltaMs: number): void {
    const inUse = this.dRows.inUse;
    for (let d = 0; d < inUse.length; d++) if (inUse[d] === 1) this.dExpires[d] += deltaMs;
    for (let h = 0; h < this.hState.length; h++) if (this.hState[h] === HELD && this.hKind[h] === FRAGMENT) this.hExpires[h] += deltaMs;
  }

  /** Drops expired datagram entries and held packets; returns the number of held packets dropped. */
  sweep(now: number): number {
    const inUse = this.dRows.inUse;
    for (let d = 0; d < inUse.length; d++) {
      if (inUse[d] === 1 && this.dExpires[d] <= now) this.removeDatagram(d);
    }
    let dropped = 0;
    for (let h = 0; h < this.hState.length; h++) {
      if (this.hState[h] === HELD && this.hExpires[h] <= now) {
        this.discard(h);
        dropped++;
      }
    }
    return dropped;
  }
}
