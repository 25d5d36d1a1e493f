/**
 * The PPTP control-connection tracker (spec §5.1, §5.2, RFC numbering; the
 * states of netfilter's nf_conntrack_pptp): the session helper the engine
 * calls for NAPT sessions on TCP 1723 (by remote, LAN or public port, so a
 * forwarded PAC on another LAN port counts too). It keeps one record per
 * control connection and decides what each Call ID field means: which call a
 * message is about, when a call is created, confirmed, refused, cleared or
 * ended. Finding the fields in the byte stream and rewriting them is
 * callid.ts's.
 *
 * A record is taken only for a connection whose data starts with a valid
 * PPTP message (so a SYN flood takes none); when the table is full the
 * connection is reset, never passed uninspected. A call's GRE mapping ends
 * with Call-Disconnect-Notify, with Stop-Control-Connection, with the TCP
 * connection's FIN in both directions or RST, and with the TCP session.
 *
 * Rule for every message: outbound, the sender's own Call ID field is the LAN
 * endpoint's ID (lan -> pub); inbound, the receiver's (peer) field is (pub ->
 * lan). That covers the LAN host as PNS and as PAC alike. A call that gets
 * no public ID (the Call ID space or the call table is exhausted) goes out
 * with Call ID 0, which nothing maps back, and its reply is turned into a
 * failure ("general error"), so both ends see a failed call.
 */
import { read16 } from '../../wire/checksum';
import {
  CALL_CLEAR_REQUEST, CALL_DISCONNECT_NOTIFY, IN_CALL_REPLY, IN_CALL_REQUEST, OUT_CALL_REPLY, OUT_CALL_REQUEST, PPTP_CTRL_TYPE, PPTP_PORT,
  PPTP_RESULT, PPTP_RESULT_GENERAL_ERROR, PPTP_RESULT_OK, PPTP_START_RESULT, START_CTRL_REPLY, START_CTRL_REQUEST, STOP_CTRL_REPLY,
  STOP_CTRL_REQUEST, isPptpFramed,
} from '../../wire/pptp';
import { TCP_ACK_FLAG, TCP_FIN, TCP_RST, TCP_SYN } from '../../wire/tcp';
import { Drop, Verdict } from '../../core/verdict';
import { FlowIndex } from '../../core/flow-index';
import { SoaRows } from '../../core/table';
import { SessionTable } from '../../nat/sessions';
import { TCP_FIN_IN, TCP_FIN_OUT } from '../../nat/tcp-tracker';
import { Packet, SegmentHolder, Tracker } from '../../nat/tracker';
import { PptpCalls, REFUSED_CALL_ID, ROLE_PAC, ROLE_PNS } from './calls';
import { AHEAD, CallIdFields, CallIdRewriter, SPLIT_UNDECIDED } from './callid';
import { PptpCounter, PptpCounters } from './counters';

/** Offset of the sender's own Call ID per control type, or -1 (spec §2 table). */
const OWN_FIELD = [-1, -1, -1, -1, -1, -1, -1, 12, 12, 12, 12, -1, 12, 12, -1, -1];
/** Offset of the receiver's (peer's) Call ID per control type, or -1. */
const PEER_FIELD = [-1, -1, -1, -1, -1, -1, -1, -1, 14, -1, 14, 12, -1, -1, 12, 12];
/** Types whose own Call ID announces a new call of the sender. */
const CREATES = [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0];

/** Control-connection states (netfilter's PPTP_SESSION_*). */
export const CTL_NONE = 0;
export const CTL_REQUESTED = 1;
export const CTL_CONFIRMED = 2;
export const CTL_STOPPING = 3;

/** Rewrite records shared by all control connections (callid.ts). */
const RECORDS_PER_CONNECTION = 16;
/** LAN Call IDs of refused requests per connection, waiting for their reply. */
const REFUSED_SLOTS = 4;

const NONE = -1;

export class PptpControl implements Tracker, CallIdFields {
  readonly capacity: number;
  private readonly rows: SoaRows;
  private readonly index: FlowIndex;
  private readonly session: Int32Array;
  private readonly role: Uint8Array;
  readonly state: Uint8Array;
  /** LAN Call IDs whose request went out refused (Call ID 0), oldest first. */
  private readonly refused: Uint16Array;
  private readonly refusedCount: Uint8Array;
  // Per direction (ctl * 2 + dir): the message being walked.
  private readonly call: Int32Array;
  private readonly remId: Int32Array;
  /** A public ID promised at a cut Call ID field, until the field completes. */
  private readonly reservedPub: Int32Array;
  /** This message's request was refused (its own result code, or the peer's reply, reads as a failure). */
  private readonly failing: Uint8Array;
  /** Segments of the direction held by the engine (beyond a gap). */
  private readonly held: Uint16Array;
  private readonly rewriter: CallIdRewriter;
  /**
   * Per TCP session (not a record: a SYN takes no table space): the initial
   * sequence numbers of both directions from the handshake, and the session
   * serial they belong to.
   */
  private readonly isn: Int32Array;
  private readonly isnSerial: Float64Array;
  private readonly isnSeen: Uint8Array;
  /** The engine's hold pool for segments beyond a gap (set when attached). */
  holder: SegmentHolder = { hold: () => false, release: () => undefined, discard: () => undefined };
  /** The segment being walked: its connection, direction and time. */
  private ctl = 0;
  private walkingOut = false;
  private now = 0;

  constructor(
    capacity: number,
    private readonly sessions: SessionTable,
    private readonly calls: PptpCalls,
    readonly counters: PptpCounters = calls.counters,
  ) {
    this.capacity = capacity;
    this.rows = new SoaRows(capacity);
    this.index = new FlowIndex(capacity);
    this.session = new Int32Array(capacity);
    this.role = new Uint8Array(capacity);
    this.state = new Uint8Array(capacity);
    this.refused = new Uint16Array(capacity * REFUSED_SLOTS);
    this.refusedCount = new Uint8Array(capacity);
    this.call = new Int32Array(capacity * 2);
    this.remId = new Int32Array(capacity * 2);
    this.reservedPub = new Int32Array(capacity * 2).fill(NONE);
    this.failing = new Uint8Array(capacity * 2);
    this.held = new Uint16Array(capacity * 2);
    this.rewriter = new CallIdRewriter(capacity * 2, capacity * RECORDS_PER_CONNECTION + 4096, this, counters);
    this.isn = new Int32Array(sessions.capacity * 2);
    this.isnSerial = new Float64Array(sessions.capacity * 2);
    this.isnSeen = new Uint8Array(sessions.capacity * 2);
  }

  /** The sequence number the direction's data starts at, from the SYN seen in it, or undefined. */
  private dataStart(s: number, dir: number): number | undefined {
    const i = s * 2 + dir;
    return this.isnSeen[i] === 1 && this.isnSerial[i] === this.sessions.sSerial[s] ? (this.isn[i] + 1) | 0 : undefined;
  }

  get count(): number { return this.rows.count; }

  /** Control connections by state (netfilter's session states), for `stats`. */
  byState(): { none: number; requested: number; confirmed: number; stopping: number } {
    const n = [0, 0, 0, 0];
    for (let c = 0; c < this.capacity; c++) if (this.rows.inUse[c] === 1) n[this.state[c]]++;
    return { none: n[CTL_NONE], requested: n[CTL_REQUESTED], confirmed: n[CTL_CONFIRMED], stopping: n[CTL_STOPPING] };
  }

  outbound(p: Packet): Verdict { return this.segment(p, true); }
  inbound(p: Packet): Verdict { return this.segment(p, false); }

  /** The record of session `s`'s control connection, or -1. */
  private find(s: number): number {
    const serial = this.sessions.sSerial[s];
    return this.index.get(s, serial >>> 0, (serial / 4294967296) | 0, 0);
  }

  /**
   * Inspects one translated TCP segment of session p.session (the packet's
   * addresses are already rewritten). Returns TRANSLATED, HELD, RESET or a
   * drop reason.
   */
  private segment(p: Packet, outbound: boolean): Verdict {
    const t = this.sessions;
    const s = p.session;
    const tcp = p.tcp;
    const flags = tcp.flags;
    const dir = outbound ? 0 : 1;
    if ((flags & TCP_SYN) !== 0) {
      const i = s * 2 + dir;
      this.isn[i] = tcp.seq;
      this.isnSerial[i] = t.sSerial[s];
      this.isnSeen[i] = 1;
    }
    let ctl = this.find(s);
    if (ctl < 0) {
      // A record only for a connection that carries data after a handshake seen here, or (picked up
      // mid-stream) whose data starts with a control message: a SYN flood takes none.
      if (tcp.dataLen <= 0) return Verdict.TRANSLATED;
      const here = this.dataStart(s, dir);
      const there = this.dataStart(s, dir ^ 1);
      const handshake = here !== undefined && there !== undefined;
      if (!handshake && !isPptpFramed(p.buf, tcp.dataOff, tcp.dataLen)) return Verdict.TRANSLATED;
      ctl = this.open(s);
      if (ctl < 0) {
        this.counters.counts[PptpCounter.CONTROL_TABLE_FULL]++;
        return Verdict.RESET;
      }
      const d = ctl * 2 + dir;
      if (handshake) {
        // Both directions start where their SYNs said.
        this.rewriter.resync(d, here as number);
        this.rewriter.resync(d ^ 1, there as number);
      } else {
        // Mid-stream (after a restart): this direction here; the other on its first segment that starts a message.
        this.rewriter.resync(d, tcp.seq);
      }
    }
    const d = ctl * 2 + dir;
    if ((flags & TCP_SYN) !== 0) {
      this.rewriter.resync(d, (tcp.seq + 1) | 0);
      return Verdict.TRANSLATED;
    }
    if ((flags & TCP_ACK_FLAG) !== 0) this.rewriter.ack(d ^ 1, tcp.ack);
    this.ctl = ctl;
    this.walkingOut = outbound;
    this.now = p.now;
    const v = this.rewriter.segment(d, p.buf, tcp.off, tcp.dataOff, tcp.dataLen, tcp.seq, p.partial);
    if (v === AHEAD) {
      if (p.fromHold) return Verdict.HELD;
      if (!this.holder.hold(p, d, outbound)) {
        this.counters.counts[PptpCounter.OUT_OF_ORDER]++;
        return Drop.PPTP_OUT_OF_ORDER;
      }
      this.held[d]++;
      return Verdict.HELD;
    }
    if (p.fromHold) this.held[d]--;
    if (v === Verdict.TRANSLATED && this.held[d] > 0) this.holder.release(d);
    // The control connection closes: its calls end now, not when the TCP session expires.
    if ((flags & TCP_RST) !== 0 || ((flags & TCP_FIN) !== 0 && (t.stateOf(s) & (TCP_FIN_OUT | TCP_FIN_IN)) === (TCP_FIN_OUT | TCP_FIN_IN))) {
      this.endCalls(ctl);
    }
    return v;
  }

  private open(s: number): number {
    const t = this.sessions;
    const serial = t.sSerial[s];
    const ctl = this.rows.take(serial);
    if (ctl < 0) return NONE;
    this.session[ctl] = s;
    // The LAN host is the PAC when the connection came to one of its ports (a forward), not to the remote's 1723.
    this.role[ctl] = t.remPortOf(s) === PPTP_PORT ? ROLE_PNS : ROLE_PAC;
    this.state[ctl] = CTL_NONE;
    this.refusedCount[ctl] = 0;
    for (let d = ctl * 2; d < ctl * 2 + 2; d++) {
      this.rewriter.reset(d);
      this.reservedPub[d] = NONE;
      this.held[d] = 0;
    }
    this.index.set(s, serial >>> 0, (serial / 4294967296) | 0, 0, ctl);
    return ctl;
  }

  /** Ends every call of a control connection (it stopped or closed). */
  private endCalls(ctl: number): void {
    const s = this.session[ctl];
    this.calls.removeConnection(s, this.sessions.sSerial[s]);
    this.state[ctl] = CTL_NONE;
  }

  // ---- what the fields mean (CallIdFields) ------------------------------------

  begin(d: number): void {
    this.counters.counts[PptpCounter.MESSAGES]++;
    this.call[d] = NONE;
    this.remId[d] = NONE;
    this.failing[d] = 0;
  }

  malformed(): void {
    this.counters.counts[PptpCounter.MESSAGES]++;
    this.counters.counts[PptpCounter.MALFORMED]++;
  }

  /** The LAN address and remote of the connection being walked. */
  private lan(): number {
    return this.sessions.lanOf(this.session[this.ctl]);
  }

  private rem(): number {
    return this.sessions.remOf(this.session[this.ctl]);
  }

  first(d: number, hdr: Uint8Array, h: number, off: number, high: number): number {
    const type = read16(hdr, h + PPTP_CTRL_TYPE);
    const calls = this.calls;
    const rem = this.rem();
    if (off === PPTP_RESULT) {
      return this.failing[d] === 1 && this.resultField(type) ? PPTP_RESULT_GENERAL_ERROR : NONE;
    }
    if (this.walkingOut && off === OWN_FIELD[type]) {
      if (CREATES[type] === 1) {
        // Promise a public ID now (its own high byte preferred): only its high byte leaves in this segment.
        let pub = calls.full ? NONE : calls.allocate(rem, NONE, high);
        if (pub < 0) pub = REFUSED_CALL_ID;
        else calls.reserve(rem, pub);
        this.reservedPub[d] = pub;
        return pub >>> 8;
      }
      return this.splitHigh(high, true);
    }
    if (!this.walkingOut && off === PEER_FIELD[type]) return this.splitHigh(high, false);
    return NONE;
  }

  /**
   * The first byte of an existing call's Call ID field cut by a segment
   * boundary: the high byte its replacement has, if every call it may be
   * (this connection's calls whose ID has that high byte) agrees.
   */
  private splitHigh(high: number, outbound: boolean): number {
    const calls = this.calls;
    const lan = this.lan();
    const rem = this.rem();
    let to = NONE;
    for (let low = 0; low < 256; low++) {
      const id = (high << 8) | low;
      const c = outbound ? calls.findLan(lan, rem, id) : calls.findPub(rem, id);
      if (c < 0 || calls.lan[c] !== lan) continue;
      const next = (outbound ? calls.pubId[c] : calls.lanId[c]) >>> 8;
      if (to === NONE) to = next;
      else if (to !== next) return SPLIT_UNDECIDED;
    }
    return to;
  }

  /** OCRP and ICRP carry the result of a call request. */
  private resultField(type: number): boolean {
    return type === OUT_CALL_REPLY || type === IN_CALL_REPLY;
  }

  field(d: number, hdr: Uint8Array, h: number, off: number, value: number): number {
    const type = read16(hdr, h + PPTP_CTRL_TYPE);
    if (off === PPTP_RESULT) {
      return this.failing[d] === 1 && this.resultField(type) ? (PPTP_RESULT_GENERAL_ERROR << 8) | (value & 0xff) : NONE;
    }
    const calls = this.calls;
    const ctl = this.ctl;
    const s = this.session[ctl];
    const lan = this.lan();
    const rem = this.rem();
    if (off === OWN_FIELD[type]) {
      if (!this.walkingOut) {
        // The remote's own ID: remember it for a reply; clear/disconnect name their call by it.
        this.remId[d] = value;
        if (type === CALL_CLEAR_REQUEST || type === CALL_DISCONNECT_NOTIFY) this.call[d] = calls.findRem(rem, value);
        return NONE;
      }
      const promised = this.reservedPub[d];
      this.reservedPub[d] = NONE;
      let c = calls.findLan(lan, rem, value);
      if (CREATES[type] === 0) {
        if (c < 0) {
          this.counters.counts[PptpCounter.LOST_CALL]++;
          return NONE;
        }
        this.call[d] = c;
        return calls.pubId[c];
      }
      // A request or reply that opens a call; a LAN Call ID still mapped keeps its public ID, unless a
      // cut field already sent another high byte.
      if (c >= 0 && promised >= 0) {
        if (calls.pubId[c] >>> 8 === promised >>> 8) {
          calls.unreserve(rem, promised);
        } else {
          calls.remove(c);
          c = NONE;
        }
      }
      if (c < 0) {
        let pub = promised;
        if (pub === value && calls.hasFreeWithHigh(rem, value >>> 8, value)) {
          calls.unreserve(rem, pub);
          pub = calls.allocate(rem, value, value >>> 8);
        }
        c = pub === REFUSED_CALL_ID ? NONE : calls.create(lan, rem, value, this.role[ctl], s, this.sessions.sSerial[s], this.now, pub);
        if (c < 0) return this.refuse(d, ctl, type, value);
      }
      this.call[d] = c;
      return calls.pubId[c];
    }
    if (off === PEER_FIELD[type]) {
      if (this.walkingOut) {
        this.remId[d] = value;
        return NONE;
      }
      if (value === REFUSED_CALL_ID && this.refusedCount[ctl] > 0 && this.resultField(type)) {
        // The reply to a request that went out refused: back to the LAN host's ID, and a failure.
        this.failing[d] = 1;
        return this.popRefused(ctl);
      }
      const c = calls.findPub(rem, value);
      if (c < 0 || calls.lan[c] !== lan) {
        this.counters.counts[PptpCounter.LOST_CALL]++;
        return NONE;
      }
      this.call[d] = c;
      return calls.lanId[c];
    }
    return NONE;
  }

  /**
   * No public ID for the call: it goes out as Call ID 0; a reply it is reads
   * as a failure; a request is remembered for its reply.
   */
  private refuse(d: number, ctl: number, type: number, lanId: number): number {
    this.counters.counts[PptpCounter.NO_CALL_SLOT]++;
    this.failing[d] = 1;
    if (type !== OUT_CALL_REQUEST && type !== IN_CALL_REQUEST) return REFUSED_CALL_ID;
    const n = this.refusedCount[ctl];
    const base = ctl * REFUSED_SLOTS;
    if (n === REFUSED_SLOTS) this.refused.copyWithin(base, base + 1, base + REFUSED_SLOTS);
    this.refused[base + (n === REFUSED_SLOTS ? n - 1 : n)] = lanId;
    if (n < REFUSED_SLOTS) this.refusedCount[ctl] = n + 1;
    return REFUSED_CALL_ID;
  }

  private popRefused(ctl: number): number {
    const base = ctl * REFUSED_SLOTS;
    const id = this.refused[base];
    this.refused.copyWithin(base, base + 1, base + REFUSED_SLOTS);
    this.refusedCount[ctl]--;
    return id;
  }

  /** Message complete: call-level and connection-level effects (spec §5.2; netfilter's state machine). */
  complete(d: number, hdr: Uint8Array, h: number, parsed: boolean): void {
    const c = this.call[d];
    const calls = this.calls;
    const ctl = this.ctl;
    if (this.reservedPub[d] >= 0) {
      calls.unreserve(this.rem(), this.reservedPub[d]);
      this.reservedPub[d] = NONE;
    }
    if (!parsed) return;
    const type = read16(hdr, h + PPTP_CTRL_TYPE);
    if (type === START_CTRL_REQUEST) {
      this.state[ctl] = CTL_REQUESTED;
    } else if (type === START_CTRL_REPLY) {
      this.state[ctl] = hdr[h + PPTP_START_RESULT] === PPTP_RESULT_OK ? CTL_CONFIRMED : CTL_NONE;
    } else if (type === STOP_CTRL_REQUEST) {
      this.state[ctl] = CTL_STOPPING;
    } else if (type === STOP_CTRL_REPLY) {
      this.endCalls(ctl);
    } else if (c >= 0 && calls.inUse[c] === 1) {
      if (type === OUT_CALL_REPLY || type === IN_CALL_REPLY) {
        const ok = hdr[h + PPTP_RESULT] === PPTP_RESULT_OK && this.failing[d] === 0;
        if (ok && this.remId[d] >= 0) calls.confirm(c, this.remId[d]);
        else calls.refuse(c);
      } else if (type === CALL_CLEAR_REQUEST) {
        calls.clear(c, this.now);
      } else if (type === CALL_DISCONNECT_NOTIFY) {
        calls.end(c, this.now);
      }
    }
    this.call[d] = NONE;
    this.remId[d] = NONE;
  }

  // ---- the rest of Tracker ----------------------------------------------------

  /** The master TCP session is going away: its record and every call of it go too (netfilter's siblings). */
  sessionRemoved(s: number): void {
    const serial = this.sessions.sSerial[s];
    const lo = serial >>> 0;
    const hi = (serial / 4294967296) | 0;
    const ctl = this.index.get(s, lo, hi, 0);
    if (ctl >= 0) {
      for (let d = ctl * 2; d < ctl * 2 + 2; d++) {
        if (this.reservedPub[d] >= 0) this.calls.unreserve(this.sessions.remOf(s), this.reservedPub[d]);
        this.reservedPub[d] = NONE;
        this.rewriter.reset(d);
        if (this.held[d] > 0) this.holder.discard(d);
      }
      this.index.delete(s, lo, hi, 0);
      this.rows.give(ctl);
    }
    this.calls.removeConnection(s, serial);
  }

  deliver(): void { /* a session helper: NAPT delivers */ }
  icmpErrorIn(): Verdict { return Drop.ICMP_ERROR_NO_MAPPING; }
  icmpErrorOut(): Verdict { return Drop.ICMP_ERROR_NO_MAPPING; }
}

