/**
 * The PPTP call table (spec §5.2, §5.3, §9.7).
 *
 * A call is (LAN host, remote, lan_call_id, pub_call_id, remote_call_id);
 * pub_call_id is unique per (public address, remote). GRE always carries the
 * *receiver's* Call ID, so outbound GRE is found by the remote's ID and
 * inbound GRE by the public one (gre.ts). Struct-of-arrays, one FlowIndex
 * with a tag word:
 *   (lan, remote, lanId, TAG_LAN) / (remote, pubId, 0, TAG_PUB) / (remote, remoteId, 0, TAG_REM) -> call
 *   (session, serial low, serial high, TAG_CTL) -> first call of a control connection
 *   (remote, id, 0, TAG_LAN_ANY) -> count / (remote, id, 0, TAG_RESERVED): IDs a new public ID must avoid
 * A call belongs to its control connection (a TCP session) and is removed
 * with it, as netfilter removes a master's siblings, and when that
 * connection stops or closes; Call-Disconnect-Notify ends it at once; after
 * a Call-Clear-Request it lives a grace time; a requested call that is never
 * answered expires after 2 min (2.0 initial GRE timer); a refused call is
 * removed at once.
 */
import { FlowIndex } from '../../core/flow-index';
import { EV_DESTROY, EV_NEW, EV_UPDATE, Journal } from '../../core/journal';
import { columns, Serials, SoaRows } from '../../core/table';
import { PptpCounter, PptpCounters } from './counters';

export const TABLE_GRE_CALLS = 4;

export const ROLE_PNS = 1;
export const ROLE_PAC = 2;
export const CALL_REQUESTED = 1;
export const CALL_CONFIRMED = 2;
export const CALL_CLEARING = 3;

const TAG_LAN = 1;
const TAG_PUB = 2;
const TAG_REM = 3;
const TAG_CTL = 4;
/** (remote, Call ID) -> how many calls to that remote use it as their LAN Call ID (never handed out as a public one). */
const TAG_LAN_ANY = 5;
/** (remote, Call ID) -> a public Call ID promised to a message whose Call ID field a segment boundary cut. */
const TAG_RESERVED = 6;
const NONE = -1;
/** Call ID 0 is never a call's public ID: a refused call goes out with it and nothing maps back to it. */
export const REFUSED_CALL_ID = 0;

/** 2.0's initial GRE timer for a call not yet answered. */
const REQUEST_MS = 120_000;

const serialLo = (serial: number): number => serial >>> 0;
const serialHi = (serial: number): number => (serial / 4294967296) | 0;

export class PptpCalls {
  readonly capacity: number;
  private readonly rows: SoaRows;
  readonly inUse: Uint8Array;
  readonly serial: Float64Array;
  readonly lan: Int32Array;
  readonly rem: Int32Array;
  readonly lanId: Uint16Array;
  readonly pubId: Uint16Array;
  /** Remote's Call ID, -1 until the call is answered. */
  readonly remId: Int32Array;
  readonly role: Uint8Array;
  readonly state: Uint8Array;
  /** Infinity while the control connection holds the call. */
  readonly expires: Float64Array;
  /** The control connection: its TCP session and that session's serial. */
  readonly ctlSession: Int32Array;
  readonly ctlSerial: Float64Array;
  readonly lastSeen: Float64Array;
  readonly pktsOut: Float64Array;
  readonly pktsIn: Float64Array;
  /** The calls of one control connection, as a doubly linked list. */
  private readonly next: Int32Array;
  private readonly prev: Int32Array;
  private readonly index: FlowIndex;
  /** Where the search of the whole Call ID space goes on (shared by all remotes). */
  private cursor = 1;
  /** How long a cleared call stays (timeouts.pptpGrace); set through setGrace after construction. */
  graceMs = 30_000;
  private readonly removeCall = (c: number): void => this.remove(c);

  constructor(
    capacity: number,
    private readonly serials: Serials,
    private readonly journal: Journal | null,
    readonly counters: PptpCounters = new PptpCounters(),
  ) {
    this.capacity = capacity;
    this.rows = new SoaRows(capacity);
    this.inUse = this.rows.inUse;
    this.serial = this.rows.serial;
    [this.lan, this.rem, this.remId, this.ctlSession, this.next, this.prev] = columns(Int32Array, capacity, 6);
    [this.lanId, this.pubId] = columns(Uint16Array, capacity, 2);
    [this.role, this.state] = columns(Uint8Array, capacity, 2);
    [this.expires, this.ctlSerial, this.lastSeen, this.pktsOut, this.pktsIn] = columns(Float64Array, capacity, 5);
    this.index = new FlowIndex(capacity * 5 + 1024);
  }

  get count(): number { return this.rows.count; }
  get full(): boolean { return this.rows.available === 0; }

  /** Calls per state (requested, confirmed, clearing); a scan, for the metrics. */
  countByState(): { requested: number; confirmed: number; clearing: number } {
    const out = { requested: 0, confirmed: 0, clearing: 0 };
    for (let c = 0; c < this.capacity; c++) {
      if (this.inUse[c] === 0) continue;
      const st = this.state[c];
      if (st === CALL_REQUESTED) out.requested++;
      else if (st === CALL_CONFIRMED) out.confirmed++;
      else out.clearing++;
    }
    return out;
  }

  findLan(lan: number, rem: number, lanId: number): number { return this.index.get(lan, rem, lanId, TAG_LAN); }
  findPub(rem: number, pubId: number): number { return this.index.get(rem, pubId, 0, TAG_PUB); }
  findRem(rem: number, remId: number): number { return this.index.get(rem, remId, 0, TAG_REM); }
  /** The first call of the control connection on TCP session `s` with serial `serial`, or -1; walk with nextOf. */
  firstOf(s: number, serial: number): number { return this.index.get(s, serialLo(serial), serialHi(serial), TAG_CTL); }
  nextOf(c: number): number { return this.next[c]; }

  /**
   * A public Call ID free for `rem` (spec §5.2: unique per public address and
   * server), never 0, never `lanId`, never a LAN Call ID some call to `rem`
   * uses: first one with the high byte `high` (the LAN ID's), so a Call ID
   * field cut by a segment boundary changes in its second byte only; then
   * anywhere in the 16-bit space. Returns -1 when none is free. The search of
   * the whole space goes on from a cursor, so each step either finds a free
   * ID or passes one taken by a live call or promise: amortized O(1), since
   * those are bounded by the table's capacity (far below 65535).
   */
  allocate(rem: number, lanId: number, high: number): number {
    if (high >= 0) {
      let low = (lanId + 1 + this.serials.next * 151) & 0xff;
      for (let i = 0; i < 256; i++, low = (low + 1) & 0xff) {
        const cand = (high << 8) | low;
        if (this.idFree(rem, cand, lanId)) return cand;
      }
    }
    for (let i = 0; i < 65536; i++) {
      const cand = this.cursor;
      this.cursor = (cand + 1) & 0xffff;
      if (this.idFree(rem, cand, lanId)) return cand;
    }
    return NONE;
  }

  private idFree(rem: number, id: number, lanId: number): boolean {
    const ix = this.index;
    return id !== REFUSED_CALL_ID && id !== lanId && ix.get(rem, id, 0, TAG_PUB) === NONE &&
      ix.get(rem, id, 0, TAG_LAN_ANY) === NONE && ix.get(rem, id, 0, TAG_RESERVED) === NONE;
  }

  /** Promises public ID `pub` (from allocate) to a message still being read, so no other call takes it meanwhile. */
  reserve(rem: number, pub: number): void {
    this.index.set(rem, pub, 0, TAG_RESERVED, 1);
  }

  /** Takes back a promise that was not used. */
  unreserve(rem: number, pub: number): void {
    this.index.delete(rem, pub, 0, TAG_RESERVED);
  }

  /** True when a new call could get a public ID with the high byte `high` (not `lanId` itself). */
  hasFreeWithHigh(rem: number, high: number, lanId: number): boolean {
    for (let low = 0; low < 256; low++) if (this.idFree(rem, (high << 8) | low, lanId)) return true;
    return false;
  }

  /**
   * Creates a call for a Call ID the LAN host announced, with public Call ID
   * `pub` (promised by reserve, and now taken) or, by default, a newly
   * allocated one. Returns the call, or -1 when the table is full or no
   * public ID is free.
   */
  create(lan: number, rem: number, lanId: number, role: number, ctlSession: number, ctlSerial: number, now: number, pub = NONE): number {
    if (pub >= 0) this.unreserve(rem, pub);
    if (this.rows.available === 0) return NONE;
    if (pub < 0) pub = this.allocate(rem, lanId, lanId >>> 8);
    if (pub < 0) return NONE;
    const serials = this.serials;
    const c = this.place(lan, rem, lanId, pub, NONE, role, CALL_REQUESTED, now + REQUEST_MS, ctlSession, ctlSerial, serials.next++, now);
    this.counters.counts[PptpCounter.CALLS_CREATED]++;
    if (this.journal !== null) this.journal.push(EV_NEW, TABLE_GRE_CALLS, c, this.serial[c]);
    return c;
  }

  /**
   * Rebuilds a persisted call (state store) with its serial and public Call
   * ID. Returns the call, or -1 when the table is full or an ID is taken.
   */
  restore(lan: number, rem: number, lanId: number, pubId: number, remId: number, role: number, state: number, expires: number,
    ctlSession: number, ctlSerial: number, serial: number, lastSeen: number): number {
    if (this.rows.available === 0 || pubId === 0 || this.findLan(lan, rem, lanId) !== NONE || this.findPub(rem, pubId) !== NONE) return NONE;
    if (remId !== NONE && this.findRem(rem, remId) !== NONE) return NONE;
    const c = this.place(lan, rem, lanId, pubId, remId, role, state, expires, ctlSession, ctlSerial, serial, lastSeen);
    if (remId !== NONE) this.index.set(rem, remId, 0, TAG_REM, c);
    this.serials.seen(serial);
    return c;
  }

  private place(lan: number, rem: number, lanId: number, pub: number, remId: number, role: number, state: number, expires: number,
    ctlSession: number, ctlSerial: number, serial: number, now: number): number {
    const c = this.rows.take(serial);
    this.lan[c] = lan;
    this.rem[c] = rem;
    this.lanId[c] = lanId;
    this.pubId[c] = pub;
    this.remId[c] = remId;
    this.role[c] = role;
    this.state[c] = state;
    this.expires[c] = expires;
    this.ctlSession[c] = ctlSession;
    this.ctlSerial[c] = ctlSerial;
    this.lastSeen[c] = now;
    this.pktsOut[c] = 0;
    this.pktsIn[c] = 0;
    this.index.set(lan, rem, lanId, TAG_LAN, c);
    this.index.set(rem, pub, 0, TAG_PUB, c);
    this.lanIdUse(rem, lanId, 1);
    // Link in at the head of its control connection's list.
    const lo = serialLo(ctlSerial);
    const hi = serialHi(ctlSerial);
    const head = this.index.get(ctlSession, lo, hi, TAG_CTL);
    this.prev[c] = NONE;
    this.next[c] = head;
    if (head !== NONE) this.prev[head] = c;
    this.index.set(ctlSession, lo, hi, TAG_CTL, c);
    return c;
  }

  /** The call was answered (result 1): learn the remote's Call ID; it now lives with its control connection. */
  confirm(c: number, remId: number): void {
    if (this.remId[c] !== remId) {
      if (this.remId[c] !== NONE) this.unindex(this.rem[c], this.remId[c], 0, TAG_REM, c);
      this.remId[c] = remId;
      this.index.set(this.rem[c], remId, 0, TAG_REM, c);
    }
    this.state[c] = CALL_CONFIRMED;
    this.expires[c] = Infinity;
    if (this.journal !== null) this.journal.push(EV_UPDATE, TABLE_GRE_CALLS, c, this.serial[c]);
  }

  /** Call-Clear-Request / Call-Disconnect-Notify: keep the call only for the grace time. */
  clear(c: number, now: number): void {
    if (this.state[c] === CALL_CLEARING) return;
    this.state[c] = CALL_CLEARING;
    this.expires[c] = now + this.graceMs;
    this.counters.counts[PptpCounter.CALLS_CLEARED]++;
    if (this.journal !== null) this.journal.push(EV_UPDATE, TABLE_GRE_CALLS, c, this.serial[c]);
  }

  /** A new grace time (reload): calls already clearing keep their clearing time, their deadline moves. */
  setGrace(ms: number): void {
    const delta = ms - this.graceMs;
    this.graceMs = ms;
    if (delta === 0) return;
    for (let c = 0; c < this.capacity; c++) if (this.inUse[c] === 1 && this.state[c] === CALL_CLEARING) this.expires[c] += delta;
  }

  /** A refused call (result != 1) leaves no mapping [LA SetExpire(0)]. */
  refuse(c: number): void {
    this.counters.counts[PptpCounter.CALLS_REFUSED]++;
    this.remove(c);
  }

  remove(c: number): void {
    if (this.inUse[c] === 0) return;
    if (this.journal !== null) this.journal.push(EV_DESTROY, TABLE_GRE_CALLS, c, this.serial[c]);
    this.unindex(this.lan[c], this.rem[c], this.lanId[c], TAG_LAN, c);
    this.unindex(this.rem[c], this.pubId[c], 0, TAG_PUB, c);
    if (this.remId[c] !== NONE) this.unindex(this.rem[c], this.remId[c], 0, TAG_REM, c);
    this.lanIdUse(this.rem[c], this.lanId[c], -1);
    const p = this.prev[c];
    const n = this.next[c];
    if (n !== NONE) this.prev[n] = p;
    if (p !== NONE) {
      this.next[p] = n;
    } else {
      const s = this.ctlSession[c];
      const lo = serialLo(this.ctlSerial[c]);
      const hi = serialHi(this.ctlSerial[c]);
      if (n !== NONE) this.index.set(s, lo, hi, TAG_CTL, n);
      else this.index.delete(s, lo, hi, TAG_CTL);
    }
    this.rows.give(c);
  }

  /** Removes every call of the control connection on session `s` (its master is gone or closing); returns how many. */
  removeConnection(s: number, serial: number): number {
    let n = 0;
    for (let c = this.firstOf(s, serial); c !== NONE; c = this.firstOf(s, serial)) {
      this.remove(c);
      n++;
    }
    this.counters.counts[PptpCounter.CALLS_ENDED_WITH_CONTROL] += n;
    return n;
  }

  /** Counts the calls to `rem` that use `lanId` as their LAN Call ID. */
  private lanIdUse(rem: number, lanId: number, delta: number): void {
    const n = this.index.get(rem, lanId, 0, TAG_LAN_ANY);
    const m = (n === NONE ? 0 : n) + delta;
    if (m > 0) this.index.set(rem, lanId, 0, TAG_LAN_ANY, m);
    else this.index.delete(rem, lanId, 0, TAG_LAN_ANY);
  }

  /** Ends a call at once (Call-Disconnect-Notify: the call is gone). */
  end(c: number, now: number): void {
    this.expires[c] = now;
    this.state[c] = CALL_CLEARING;
    this.remove(c);
  }

  /**
   * Deletes a key only while it still leads to call `c`: a remote may give a
   * new call the Call ID of one still in its grace time (confirm() re-points
   * the key), and that old call's expiry must not cut the new call's GRE.
   */
  private unindex(a: number, b: number, k: number, tag: number, c: number): void {
    if (this.index.get(a, b, k, tag) === c) this.index.delete(a, b, k, tag);
  }

  /** Expires calls past their own deadline (request timer, grace). Returns calls removed. */
  sweep(now: number): number {
    let removed = 0;
    for (let c = 0; c < this.capacity; c++) {
      if (this.inUse[c] === 1 && this.expires[c] <= now) { this.remove(c); removed++; }
    }
    return removed;
  }

  /**
   * Removes the calls with these ids (`vpnmasq conns delete`) as their expiry
   * does: their GRE is dropped as unmapped from then on, and the control
   * connection's later messages about them count as lost calls. Returns how many.
   */
  deleteSerials(ids: ReadonlySet<number>): number {
    return this.rows.removeRows(ids, this.removeCall);
  }

  /** Removes every call (a WAN address change under wan.onAddressChange "drop"); returns how many. */
  removeAll(): number {
    return this.rows.removeRows(null, this.removeCall);
  }
}
