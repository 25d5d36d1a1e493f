/**
 * PPTP calls and their enhanced GRE data (spec §5.2, §5.3, §9.7, §9.10, §9.11, §9.14).
 *
 * A call is (LAN host, remote, lan_call_id, pub_call_id, remote_call_id);
 * pub_call_id is unique per (public address, remote). GRE always carries the
 * *receiver's* Call ID, so outbound GRE (to the remote's ID) only changes its
 * source address, and inbound GRE (to pub_call_id) goes back to the LAN host
 * with its own Call ID. Struct-of-arrays, one FlowIndex with a tag word:
 *   (lan, remote, lanId, TAG_LAN) / (remote, pubId, 0, TAG_PUB) / (remote, remoteId, 0, TAG_REM) -> call
 *   (remote, 0, 0, TAG_RAW) -> non-PPTP GRE entry (address-only NAT, one LAN host per remote).
 * A call lives as long as its control connection (a TCP session) and a
 * grace time after Call-Clear / Call-Disconnect-Notify or the end of that
 * connection; a requested call that is never answered expires after 2 min
 * (2.0 initial GRE timer); a refused call is removed at once.
 */
import { read16, write16 } from '../../wire/checksum';
import { GRE_CALL_ID, isPptpGre } from '../../wire/gre';
import { PROTO_GRE } from '../../wire/ipv4';
import { Drop } from '../../core/verdict';
import { FlowIndex } from '../../core/flow-index';
import { Forwards, NO_FORWARD } from '../../nat/forwards';
import { EV_DESTROY, EV_NEW, EV_UPDATE, Journal } from '../../core/journal';
import { SessionTable } from '../../nat/sessions';
import { ConnRow } from '../../query/rows';
import { int32ToIpv4 } from '../../core/ipv4-addr';
import { SlotPool } from '../../core/slot-pool';

export const TABLE_GRE_CALLS = 4;

export const ROLE_PNS = 1;
export const ROLE_PAC = 2;
export const CALL_REQUESTED = 1;
export const CALL_CONFIRMED = 2;
export const CALL_CLEARING = 3;

const TAG_LAN = 1;
const TAG_PUB = 2;
const TAG_REM = 3;
const TAG_RAW = 4;
const NONE = -1;
/** Pass verdict for the packet path (matches Napt's TRANSLATED). */
export const GRE_PASS = -1;

/** 2.0's initial GRE timer for a call not yet answered. */
const REQUEST_MS = 120_000;
/** 2.0's GRE timeout without Call-ID masquerade, used for address-only GRE. */
const RAW_MS = 300_000;

/** Event counters (spec §10), logged from a timer. */
export const GC_NO_MAPPING_IN = 0;
export const GC_NO_MAPPING_OUT = 1;
export const GC_NOT_PPTP = 2;
export const GC_CALLS_CREATED = 3;
export const GC_CALLS_REFUSED = 4;
export const GC_CALLS_CLEARED = 5;
export const GC_OUT = 6;
export const GC_IN = 7;
export const GC_COUNT = 8;

export interface GreRow {
  id: number;
  proto: 'gre';
  lan: { addr: number; callId: number };
  pub: { callId: number };
  remote: { addr: number; callId: number | null };
  role: 'pns' | 'pac';
  state: 'requested' | 'confirmed' | 'clearing';
  idleSeconds: number;
  expiresInSeconds: number | null;
  packets: { out: number; in: number };
}

export class PptpCalls {
  readonly capacity: number;
  readonly inUse: Uint8Array;
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
  readonly ctlSession: Int32Array;
  readonly ctlSerial: Float64Array;
  readonly serial: Float64Array;
  readonly lastSeen: Float64Array;
  readonly pktsOut: Float64Array;
  readonly pktsIn: Float64Array;
  private readonly index: FlowIndex;
  private readonly free: SlotPool;
  count = 0;
  /** Non-PPTP GRE entries (address-only NAT). */
  private readonly rawLan: Int32Array;
  private readonly rawRem: Int32Array;
  private readonly rawExpires: Float64Array;
  private rawNext = 0;
  readonly counters = new Float64Array(GC_COUNT);
  /** Address the last translated packet goes to (inbound) or its LAN host (ICMP); read after a GRE_PASS verdict. */
  resultAddr = 0;
  graceMs = 30_000;
  allowNonPptp = false;

  constructor(
    capacity: number,
    private readonly sessions: SessionTable,
    private readonly forwards: Forwards | null,
    private readonly journal: Journal | null,
  ) {
    this.capacity = capacity;
    this.inUse = new Uint8Array(capacity);
    this.lan = new Int32Array(capacity);
    this.rem = new Int32Array(capacity);
    this.lanId = new Uint16Array(capacity);
    this.pubId = new Uint16Array(capacity);
    this.remId = new Int32Array(capacity);
    this.role = new Uint8Array(capacity);
    this.state = new Uint8Array(capacity);
    this.expires = new Float64Array(capacity);
    this.ctlSession = new Int32Array(capacity);
    this.ctlSerial = new Float64Array(capacity);
    this.serial = new Float64Array(capacity);
    this.lastSeen = new Float64Array(capacity);
    this.pktsOut = new Float64Array(capacity);
    this.pktsIn = new Float64Array(capacity);
    this.index = new FlowIndex(capacity * 3 + 1024);
    this.free = new SlotPool(capacity);
    this.rawLan = new Int32Array(1024);
    this.rawRem = new Int32Array(1024);
    this.rawExpires = new Float64Array(1024);
  }

  findLan(lan: number, rem: number, lanId: number): number { return this.index.get(lan, rem, lanId, TAG_LAN); }
  findPub(rem: number, pubId: number): number { return this.index.get(rem, pubId, 0, TAG_PUB); }
  findRem(rem: number, remId: number): number { return this.index.get(rem, remId, 0, TAG_REM); }

  /**
   * Creates a call for a Call ID the LAN host announced, with a public Call
   * ID free for this remote. The public ID keeps the high byte of the LAN
   * one, so a Call ID field split across two TCP segments only changes in
   * its second byte (the first may already be on its way). Returns -1 when
   * the table is full or no ID with that high byte is free.
   */
  create(lan: number, rem: number, lanId: number, role: number, ctlSession: number, ctlSerial: number, now: number): number {
    if (this.free.available === 0) return NONE;
    const serials = this.sessions.serials;
    const hi = lanId & 0xff00;
    // Start away from the LAN's own ID so a rewrite is visible; scan the 256 IDs of this high byte.
    let low = (lanId + 1 + serials.next * 151) & 0xff;
    let pub = NONE;
    for (let i = 0; i < 256; i++, low = (low + 1) & 0xff) {
      const cand = hi | low;
      if (cand !== 0 && this.findPub(rem, cand) === NONE) { pub = cand; break; }
    }
    if (pub === NONE) return NONE;
    const c = this.place(lan, rem, lanId, pub, NONE, role, CALL_REQUESTED, now + REQUEST_MS, ctlSession, ctlSerial, serials.next++, now);
    this.counters[GC_CALLS_CREATED]++;
    if (this.journal !== null) this.journal.push(EV_NEW, TABLE_GRE_CALLS, c, this.serial[c]);
    return c;
  }

  /**
   * Rebuilds a persisted call (state store) with its serial and public Call
   * ID. Returns the call, or -1 when the table is full or an ID is taken.
   */
  restore(lan: number, rem: number, lanId: number, pubId: number, remId: number, role: number, state: number, expires: number,
    ctlSession: number, ctlSerial: number, serial: number, lastSeen: number): number {
    if (this.free.available === 0 || pubId === 0 || this.findLan(lan, rem, lanId) !== NONE || this.findPub(rem, pubId) !== NONE) return NONE;
    if (remId !== NONE && this.findRem(rem, remId) !== NONE) return NONE;
    const c = this.place(lan, rem, lanId, pubId, remId, role, state, expires, ctlSession, ctlSerial, serial, lastSeen);
    if (remId !== NONE) this.index.set(rem, remId, 0, TAG_REM, c);
    this.sessions.serials.seen(serial);
    return c;
  }

  private place(lan: number, rem: number, lanId: number, pub: number, remId: number, role: number, state: number, expires: number,
    ctlSession: number, ctlSerial: number, serial: number, now: number): number {
    const c = this.free.take();
    this.inUse[c] = 1;
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
    this.serial[c] = serial;
    this.lastSeen[c] = now;
    this.pktsOut[c] = 0;
    this.pktsIn[c] = 0;
    this.index.set(lan, rem, lanId, TAG_LAN, c);
    this.index.set(rem, pub, 0, TAG_PUB, c);
    this.count++;
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
    this.counters[GC_CALLS_CLEARED]++;
    if (this.journal !== null) this.journal.push(EV_UPDATE, TABLE_GRE_CALLS, c, this.serial[c]);
  }

  /** A refused call (result != 1) leaves no mapping [LA SetExpire(0)]. */
  refuse(c: number): void {
    this.counters[GC_CALLS_REFUSED]++;
    this.remove(c);
  }

  remove(c: number): void {
    if (this.inUse[c] === 0) return;
    if (this.journal !== null) this.journal.push(EV_DESTROY, TABLE_GRE_CALLS, c, this.serial[c]);
    this.unindex(this.lan[c], this.rem[c], this.lanId[c], TAG_LAN, c);
    this.unindex(this.rem[c], this.pubId[c], 0, TAG_PUB, c);
    if (this.remId[c] !== NONE) this.unindex(this.rem[c], this.remId[c], 0, TAG_REM, c);
    this.inUse[c] = 0;
    this.free.give(c);
    this.count--;
  }

  /**
   * Deletes a key only while it still leads to call `c`: a remote may give a
   * new call the Call ID of one still in its grace time (confirm() re-points
   * the key), and that old call's expiry must not cut the new call's GRE.
   */
  private unindex(a: number, b: number, k: number, tag: number, c: number): void {
    if (this.index.get(a, b, k, tag) === c) this.index.delete(a, b, k, tag);
  }

  // ---- packet path ---------------------------------------------------------

  /** Outbound GRE (LAN -> remote): returns GRE_PASS (the caller rewrites only the source address) or a drop code. */
  outbound(buf: Uint8Array, l4: number, l4Len: number, src: number, dst: number, now: number): number {
    if (!isPptpGre(buf, l4, l4Len)) return this.rawOut(src, dst, now);
    const c = this.findRem(dst, read16(buf, l4 + GRE_CALL_ID));
    if (c === NONE || this.lan[c] !== src) {
      // A forwarded PPTP server answers calls it was not seen to set up (spec §6).
      if (this.forwards !== null && this.forwards.protoForward(PROTO_GRE) === src) return GRE_PASS;
      this.counters[GC_NO_MAPPING_OUT]++;
      return Drop.GRE_NO_MAPPING;
    }
    this.lastSeen[c] = now;
    this.pktsOut[c]++;
    this.counters[GC_OUT]++;
    return GRE_PASS;
  }

  /**
   * Inbound GRE (remote -> public): returns GRE_PASS with `resultAddr` set to
   * the LAN host (the Call ID has been rewritten to the host's own; GRE with
   * C = 0 has no checksum), or a drop code.
   */
  inbound(buf: Uint8Array, l4: number, l4Len: number, src: number, now: number): number {
    if (!isPptpGre(buf, l4, l4Len)) return this.rawIn(src, now);
    const c = this.findPub(src, read16(buf, l4 + GRE_CALL_ID));
    if (c === NONE) return this.forwardIn();
    write16(buf, l4 + GRE_CALL_ID, this.lanId[c]);
    this.lastSeen[c] = now;
    this.pktsIn[c]++;
    this.counters[GC_IN]++;
    this.resultAddr = this.lan[c];
    return GRE_PASS;
  }

  /** ICMP error quoting GRE we sent to `rem`: the quoted Call ID is the remote's (spec §9.14). Sets resultAddr. */
  icmpTarget(buf: Uint8Array, il4: number, rem: number): boolean {
    const c = this.findRem(rem, read16(buf, il4 + GRE_CALL_ID));
    if (c !== NONE) {
      this.resultAddr = this.lan[c];
      return true;
    }
    const f = this.forwards === null ? NO_FORWARD : this.forwards.protoForward(PROTO_GRE);
    this.resultAddr = f;
    return f !== NO_FORWARD;
  }

  private forwardIn(): number {
    const f = this.forwards === null ? NO_FORWARD : this.forwards.protoForward(PROTO_GRE);
    if (f === NO_FORWARD) {
      this.counters[GC_NO_MAPPING_IN]++;
      return Drop.GRE_NO_MAPPING;
    }
    this.resultAddr = f;
    return GRE_PASS;
  }

  /** Non-PPTP GRE, address-only NAT when allowed (spec §9.11): the first LAN host to use a remote owns it while active. */
  private rawOut(src: number, dst: number, now: number): number {
    if (!this.allowNonPptp) { this.counters[GC_NOT_PPTP]++; return Drop.GRE_NOT_PPTP; }
    let r = this.index.get(dst, 0, 0, TAG_RAW);
    if (r !== NONE && this.rawExpires[r] <= now) { this.index.delete(dst, 0, 0, TAG_RAW); r = NONE; }
    if (r === NONE) {
      r = this.rawNext;
      if (this.rawExpires[r] > now) { this.counters[GC_NOT_PPTP]++; return Drop.TABLE_FULL; }
      if (this.rawExpires[r] !== 0) this.unindex(this.rawRem[r], 0, 0, TAG_RAW, r);
      this.rawNext = (r + 1) & 1023;
      this.rawLan[r] = src;
      this.rawRem[r] = dst;
      this.index.set(dst, 0, 0, TAG_RAW, r);
    } else if (this.rawLan[r] !== src) {
      this.counters[GC_NOT_PPTP]++;
      return Drop.GRE_NOT_PPTP;
    }
    this.rawExpires[r] = now + RAW_MS;
    return GRE_PASS;
  }

  private rawIn(src: number, now: number): number {
    if (!this.allowNonPptp) { this.counters[GC_NOT_PPTP]++; return Drop.GRE_NOT_PPTP; }
    const r = this.index.get(src, 0, 0, TAG_RAW);
    if (r === NONE || this.rawExpires[r] <= now) return this.forwardIn();
    this.rawExpires[r] = now + RAW_MS;
    this.resultAddr = this.rawLan[r];
    return GRE_PASS;
  }

  // ---- timers --------------------------------------------------------------

  /** Expires calls; a call whose control connection is gone gets the grace time. Returns calls removed. */
  sweep(now: number): number {
    let removed = 0;
    const t = this.sessions;
    for (let c = 0; c < this.capacity; c++) {
      if (this.inUse[c] === 0) continue;
      const s = this.ctlSession[c];
      if (this.state[c] !== CALL_CLEARING && (t.sInUse[s] === 0 || t.sSerial[s] !== this.ctlSerial[c] || t.sExpires[s] <= now)) {
        this.clear(c, now);
      }
      if (this.expires[c] <= now) { this.remove(c); removed++; }
    }
    return removed;
  }

  /**
   * Removes the calls with these ids (`vpnmasq conns delete`) as their expiry
   * does: their GRE is dropped as unmapped from then on, and the control
   * connection's later messages about them count as lost calls. Returns how many.
   */
  deleteSerials(ids: ReadonlySet<number>): number {
    let n = 0;
    for (let c = 0; c < this.capacity; c++) {
      if (this.inUse[c] === 1 && ids.has(this.serial[c])) { this.remove(c); n++; }
    }
    return n;
  }

  /** Connection-listing rows (not for the packet path). */
  rows(now: number): GreRow[] {
    const out: GreRow[] = [];
    for (let c = 0; c < this.capacity; c++) if (this.inUse[c] === 1) out.push(this.row(c, now));
    return out;
  }

  /** The listing row of call `c` (also after removal, until the record is reused). */
  row(c: number, now: number): GreRow {
    const st = this.state[c];
    return {
      id: this.serial[c],
      proto: 'gre',
      lan: { addr: this.lan[c], callId: this.lanId[c] },
      pub: { callId: this.pubId[c] },
      remote: { addr: this.rem[c], callId: this.remId[c] === NONE ? null : this.remId[c] },
      role: this.role[c] === ROLE_PAC ? 'pac' : 'pns',
      state: st === CALL_REQUESTED ? 'requested' : st === CALL_CONFIRMED ? 'confirmed' : 'clearing',
      idleSeconds: Math.max(0, Math.round((now - this.lastSeen[c]) / 1000)),
      expiresInSeconds: this.expires[c] === Infinity ? null : Math.max(0, Math.round((this.expires[c] - now) / 1000)),
      packets: { out: this.pktsOut[c], in: this.pktsIn[c] },
    };
  }
}

/**
 * A call as a connection-listing row (control `conns`, CLI): ports 0, the
 * Call IDs in `vpn`; expiresInSeconds -1 while its control connection holds it.
 */
export function greConnRow(r: GreRow, publicAddr: number): ConnRow {
  return {
    id: r.id,
    proto: 'gre',
    lan: { addr: int32ToIpv4(r.lan.addr), port: 0 },
    public: { addr: int32ToIpv4(publicAddr), port: 0 },
    remote: { addr: int32ToIpv4(r.remote.addr), port: 0 },
    state: r.state.toUpperCase(),
    idleSeconds: r.idleSeconds,
    expiresInSeconds: r.expiresInSeconds ?? -1,
    packets: r.packets,
    bytes: { out: 0, in: 0 },
    vpn: { role: r.role, callIdLan: r.lan.callId, callIdPub: r.pub.callId, callIdRemote: r.remote.callId },
  };
}
