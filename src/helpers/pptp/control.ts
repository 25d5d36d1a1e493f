/**
 * The PPTP control-connection tracker (spec §5.1, §5.2, RFC numbering): the
 * session helper the engine calls for NAPT sessions on TCP 1723. It keeps
 * one record per control connection (its TCP session, which side is the
 * PNS) and decides what each Call ID field means: which call a message is
 * about, when a call is created, confirmed, refused or cleared. Finding the
 * fields in the byte stream and rewriting them is callid.ts's. A control
 * connection's record and its calls end with its TCP session.
 *
 * Rule for every message: outbound, the sender's own Call ID field is the LAN
 * endpoint's ID (lan -> pub); inbound, the receiver's (peer) field is (pub ->
 * lan). That covers the LAN host as PNS and as PAC alike.
 */
import { read16 } from '../../wire/checksum';
import {
  CALL_CLEAR_REQUEST, CALL_DISCONNECT_NOTIFY, IN_CALL_REPLY, IN_CALL_REQUEST, OUT_CALL_REPLY, OUT_CALL_REQUEST,
  PPTP_CTRL_TYPE, PPTP_PORT, PPTP_RESULT, PPTP_RESULT_OK,
} from '../../wire/pptp';
import { TCP_SYN } from '../../wire/tcp';
import { Drop, Verdict } from '../../core/verdict';
import { FlowIndex } from '../../core/flow-index';
import { SoaRows } from '../../core/table';
import { SessionTable } from '../../nat/sessions';
import { Packet, Tracker } from '../../nat/tracker';
import { PptpCalls, ROLE_PAC, ROLE_PNS } from './calls';
import { CallIdFields, CallIdRewriter } from './callid';
import { PptpCounter, PptpCounters } from './counters';

/** Offset of the sender's own Call ID per control type, or -1 (spec §2 table). */
const OWN_FIELD = [-1, -1, -1, -1, -1, -1, -1, 12, 12, 12, 12, -1, 12, 12, -1, -1];
/** Offset of the receiver's (peer's) Call ID per control type, or -1. */
const PEER_FIELD = [-1, -1, -1, -1, -1, -1, -1, -1, 14, -1, 14, 12, -1, -1, 12, 12];

const NONE = -1;

export class PptpControl implements Tracker, CallIdFields {
  readonly capacity: number;
  private readonly rows: SoaRows;
  private readonly index: FlowIndex;
  private readonly session: Int32Array;
  private readonly role: Uint8Array;
  // Per direction (ctl * 2 + dir): the message being walked.
  private readonly call: Int32Array;
  private readonly remId: Int32Array;
  private readonly rewriter: CallIdRewriter;
  /** The segment being walked: its connection and direction. */
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
    this.call = new Int32Array(capacity * 2);
    this.remId = new Int32Array(capacity * 2);
    this.rewriter = new CallIdRewriter(capacity * 2, this, counters);
  }

  get count(): number { return this.rows.count; }

  outbound(p: Packet): Verdict { return this.segment(p, true); }
  inbound(p: Packet): Verdict { return this.segment(p, false); }

  /**
   * Inspects one translated TCP segment of session p.session (the packet's
   * addresses are already rewritten). Returns TRANSLATED or a drop reason.
   */
  private segment(p: Packet, outbound: boolean): Verdict {
    const t = this.sessions;
    const s = p.session;
    const tcp = p.tcp;
    const flags = tcp.flags;
    const serial = t.sSerial[s];
    let ctl = this.index.get(s, serial >>> 0, (serial / 4294967296) | 0, 0);
    if (ctl < 0) {
      ctl = this.rows.take(serial);
      if (ctl < 0) return Verdict.TRANSLATED;
      this.session[ctl] = s;
      // Who sent the SYN is the PNS (spec §5.4 design decision); mid-stream, the side on port 1723 is the PAC.
      const lanIsPac = (flags & TCP_SYN) !== 0 ? !outbound : t.lanPortOf(s) === PPTP_PORT;
      this.role[ctl] = lanIsPac ? ROLE_PAC : ROLE_PNS;
      this.rewriter.reset(ctl * 2);
      this.rewriter.reset(ctl * 2 + 1);
      this.index.set(s, serial >>> 0, (serial / 4294967296) | 0, 0, ctl);
    }
    const d = ctl * 2 + (outbound ? 0 : 1);
    if ((flags & TCP_SYN) !== 0) {
      this.rewriter.resync(d, (tcp.seq + 1) | 0);
      return Verdict.TRANSLATED;
    }
    this.ctl = ctl;
    this.walkingOut = outbound;
    this.now = p.now;
    return this.rewriter.segment(d, p.buf, tcp.off, tcp.dataOff, tcp.dataLen, tcp.seq, p.partial);
  }

  // ---- what the fields mean (CallIdFields) ------------------------------------

  begin(d: number): void {
    this.counters.counts[PptpCounter.MESSAGES]++;
    this.call[d] = NONE;
    this.remId[d] = NONE;
  }

  malformed(): void {
    this.counters.counts[PptpCounter.MESSAGES]++;
    this.counters.counts[PptpCounter.MALFORMED]++;
  }

  field(d: number, hdr: Uint8Array, h: number, off: number, value: number): number {
    if (off === PPTP_RESULT) return NONE;
    const type = read16(hdr, h + PPTP_CTRL_TYPE);
    const calls = this.calls;
    const t = this.sessions;
    const ctl = this.ctl;
    const s = this.session[ctl];
    const lan = t.lanOf(s);
    const rem = t.remOf(s);
    if (off === OWN_FIELD[type]) {
      if (this.walkingOut) {
        let c = calls.findLan(lan, rem, value);
        const creates = type === OUT_CALL_REQUEST || type === IN_CALL_REPLY || type === OUT_CALL_REPLY || type === IN_CALL_REQUEST;
        if (c < 0 && creates) {
          c = calls.create(lan, rem, value, this.role[ctl], s, t.sSerial[s], this.now);
          if (c < 0) this.counters.counts[PptpCounter.NO_CALL_SLOT]++;
        }
        if (c < 0) {
          if (!creates) this.counters.counts[PptpCounter.LOST_CALL]++;
          return NONE;
        }
        this.call[d] = c;
        return calls.pubId[c];
      }
      // The remote's own ID: remember it for a reply; clear/disconnect name their call by it.
      this.remId[d] = value;
      if (type === CALL_CLEAR_REQUEST || type === CALL_DISCONNECT_NOTIFY) this.call[d] = calls.findRem(rem, value);
      return NONE;
    }
    if (off === PEER_FIELD[type]) {
      if (this.walkingOut) {
        this.remId[d] = value;
        return NONE;
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

  /** Message complete: call-level effects (spec §5.2). */
  complete(d: number, hdr: Uint8Array, h: number, parsed: boolean): void {
    const c = this.call[d];
    const calls = this.calls;
    if (parsed && c >= 0 && calls.inUse[c] === 1) {
      const type = read16(hdr, h + PPTP_CTRL_TYPE);
      if (type === OUT_CALL_REPLY || type === IN_CALL_REPLY) {
        if (hdr[h + PPTP_RESULT] === PPTP_RESULT_OK && this.remId[d] >= 0) calls.confirm(c, this.remId[d]);
        else calls.refuse(c);
      } else if (type === CALL_CLEAR_REQUEST || type === CALL_DISCONNECT_NOTIFY) {
        calls.clear(c, this.now);
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
      this.index.delete(s, lo, hi, 0);
      this.rows.give(ctl);
    }
    this.calls.removeConnection(s, serial);
  }

  deliver(): void { /* a session helper: NAPT delivers */ }
  icmpErrorIn(): Verdict { return Drop.ICMP_ERROR_NO_MAPPING; }
  icmpErrorOut(): Verdict { return Drop.ICMP_ERROR_NO_MAPPING; }
}
