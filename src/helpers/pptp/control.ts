/**
 * PPTP control channel (TCP 1723) inspection: a byte-stream reassembler per
 * direction and the Call-ID rewrite of spec §5.1/§5.2 (RFC numbering).
 *
 * Called after NAPT translated a segment. Each direction follows the TCP
 * sequence space from the SYN (or from a segment that starts with a valid
 * PPTP header when picked up mid-stream) and walks the messages byte by byte,
 * so messages split at any byte or several in one segment are handled and
 * TCP options are skipped by the data offset. The 12-byte header (length,
 * PPTP type 1, magic, control type, fixed per-type length) is checked before
 * any Call ID field is reached; only the 2-byte Call ID fields are rewritten,
 * with an incremental TCP checksum fix (none for a partial checksum: the
 * kernel sums the payload later). A bad PPTP type or magic loses the framing:
 * the direction passes untouched until a segment starts with a valid header.
 * A known framing but unknown type or wrong length is skipped untouched.
 * Retransmitted bytes get the same rewrites again (a small ring per direction);
 * a segment beyond a gap is dropped so the sender resends in order.
 *
 * Rule for every message: outbound, the sender's own Call ID field is the LAN
 * endpoint's ID (lan -> pub); inbound, the receiver's (peer) field is (pub ->
 * lan). That covers the LAN host as PNS and as PAC alike.
 */
import { read16, read32, update16 } from '../../wire/checksum';
import {
  CALL_CLEAR_REQUEST, CALL_DISCONNECT_NOTIFY, IN_CALL_REPLY, IN_CALL_REQUEST, OUT_CALL_REPLY, OUT_CALL_REQUEST,
  PPTP_CTRL_TYPE, PPTP_ERR_CTRL_TYPE, PPTP_ERR_LENGTH, PPTP_HDR, PPTP_LENGTH, PPTP_MAGIC, PPTP_MAGIC_COOKIE,
  PPTP_MSG_CONTROL, PPTP_MSG_TYPE, PPTP_OK, PPTP_PORT, PPTP_RESULT, PPTP_RESULT_OK, checkPptp,
} from '../../wire/pptp';
import { TCP_CSUM, TCP_FLAGS, TCP_SEQ, TCP_SYN, tcpHeaderLen } from '../../wire/tcp';
import { Drop } from '../../core/verdict';
import { FlowIndex } from '../../core/flow-index';
import { SessionTable } from '../../nat/sessions';
import { GRE_PASS, PptpCalls, ROLE_PAC, ROLE_PNS } from './calls';
import { SlotPool } from '../../core/slot-pool';

/** Offset of the sender's own Call ID per control type, or -1 (spec §2 table). */
const OWN_FIELD = [-1, -1, -1, -1, -1, -1, -1, 12, 12, 12, 12, -1, 12, 12, -1, -1];
/** Offset of the receiver's (peer's) Call ID per control type, or -1. */
const PEER_FIELD = [-1, -1, -1, -1, -1, -1, -1, -1, 14, -1, 14, 12, -1, -1, 12, 12];
/** Bytes of each message kept for parsing: up to the result code. */
const KEEP = 18;
const RING = 4;
/** A segment further ahead than this is a lost sync, not reordering. */
const MAX_AHEAD = 1 << 20;

const MODE_PARSE = 0;
const MODE_SKIP = 1;

/** Event counters (spec §10), logged from a timer. */
export const PC_MESSAGES = 0;
export const PC_REWRITES = 1;
export const PC_MALFORMED = 2;
export const PC_LOST_CALL = 3;
export const PC_OUT_OF_ORDER = 4;
export const PC_NO_CALL_SLOT = 5;
export const PC_COUNT = 6;

export class PptpControl {
  readonly capacity: number;
  private readonly index: FlowIndex;
  private readonly inUse: Uint8Array;
  private readonly session: Int32Array;
  private readonly sessSerial: Float64Array;
  private readonly role: Uint8Array;
  private readonly free: SlotPool;
  // Per direction (ctl * 2 + dir).
  private readonly synced: Uint8Array;
  private readonly nextSeq: Int32Array;
  private readonly pos: Uint16Array;
  private readonly msgLen: Uint16Array;
  private readonly mode: Uint8Array;
  private readonly call: Int32Array;
  private readonly remId: Int32Array;
  private readonly hdr: Uint8Array;
  private readonly ringSeq: Int32Array;
  private readonly ringOld: Int32Array;
  private readonly ringNew: Uint16Array;
  private readonly ringHead: Uint8Array;
  readonly counters = new Float64Array(PC_COUNT);
  count = 0;

  // The segment being walked.
  private buf: Uint8Array = new Uint8Array(0);
  private tcpOff = 0;
  private dataOff = 0;
  private dataLen = 0;
  private seq = 0;
  private partial = false;

  constructor(capacity: number, private readonly sessions: SessionTable, private readonly calls: PptpCalls) {
    this.capacity = capacity;
    this.index = new FlowIndex(capacity);
    this.inUse = new Uint8Array(capacity);
    this.session = new Int32Array(capacity);
    this.sessSerial = new Float64Array(capacity);
    this.role = new Uint8Array(capacity);
    this.free = new SlotPool(capacity);
    const d = capacity * 2;
    this.synced = new Uint8Array(d);
    this.nextSeq = new Int32Array(d);
    this.pos = new Uint16Array(d);
    this.msgLen = new Uint16Array(d);
    this.mode = new Uint8Array(d);
    this.call = new Int32Array(d);
    this.remId = new Int32Array(d);
    this.hdr = new Uint8Array(d * KEEP);
    this.ringSeq = new Int32Array(d * RING);
    this.ringOld = new Int32Array(d * RING).fill(-1);
    this.ringNew = new Uint16Array(d * RING);
    this.ringHead = new Uint8Array(d);
  }

  /**
   * Inspects one translated TCP segment of session `s` (the packet's
   * addresses are already rewritten). Returns GRE_PASS (-1, send it) or a drop code.
   */
  segment(buf: Uint8Array, tcpOff: number, tcpLen: number, s: number, outbound: boolean, partial: boolean, now: number): number {
    const t = this.sessions;
    const flags = buf[tcpOff + TCP_FLAGS];
    const key = t.sSerial[s] % 0x7fffffff;
    let ctl = this.index.get(s, key, 0, 0);
    if (ctl < 0) {
      if (this.free.available === 0) return GRE_PASS;
      ctl = this.free.take();
      this.inUse[ctl] = 1;
      this.session[ctl] = s;
      this.sessSerial[ctl] = t.sSerial[s];
      // Who sent the SYN is the PNS (spec §5.4 design decision); mid-stream, the side on port 1723 is the PAC.
      const lanIsPac = (flags & TCP_SYN) !== 0 ? !outbound : t.mLanPort[t.sMap[s]] === PPTP_PORT;
      this.role[ctl] = lanIsPac ? ROLE_PAC : ROLE_PNS;
      this.synced[ctl * 2] = 0;
      this.synced[ctl * 2 + 1] = 0;
      this.index.set(s, key, 0, 0, ctl);
      this.count++;
    }
    const d = ctl * 2 + (outbound ? 0 : 1);
    const seq = read32(buf, tcpOff + TCP_SEQ);
    if ((flags & TCP_SYN) !== 0) {
      this.resync(d, seq + 1);
      return GRE_PASS;
    }
    const hl = tcpHeaderLen(buf, tcpOff);
    const dataLen = tcpLen - hl;
    if (dataLen <= 0) return GRE_PASS;
    const dataOff = tcpOff + hl;
    if (this.synced[d] === 0) {
      const framed = dataLen >= PPTP_HDR && read16(buf, dataOff + PPTP_MSG_TYPE) === PPTP_MSG_CONTROL &&
        read32(buf, dataOff + PPTP_MAGIC) === PPTP_MAGIC_COOKIE;
      if (!framed) return GRE_PASS;
      this.resync(d, seq);
    }
    this.buf = buf;
    this.tcpOff = tcpOff;
    this.dataOff = dataOff;
    this.dataLen = dataLen;
    this.seq = seq;
    this.partial = partial;
    const ahead = (seq - this.nextSeq[d]) | 0;
    if (ahead > 0) {
      if (ahead < MAX_AHEAD) {
        this.counters[PC_OUT_OF_ORDER]++;
        return Drop.PPTP_OUT_OF_ORDER;
      }
      this.synced[d] = 0;
      return GRE_PASS;
    }
    let skip = -ahead;
    if (skip > 0) {
      this.replay(d, skip < dataLen ? skip : dataLen);
      if (skip >= dataLen) return GRE_PASS;
    }
    this.walk(d, ctl, skip, outbound, now);
    return GRE_PASS;
  }

  private resync(d: number, seq: number): void {
    this.synced[d] = 1;
    this.nextSeq[d] = seq;
    this.pos[d] = 0;
    this.mode[d] = MODE_PARSE;
    this.call[d] = -1;
    this.remId[d] = -1;
  }

  /** Walks the new bytes of the segment from `i`, message by message. */
  private walk(d: number, ctl: number, i: number, outbound: boolean, now: number): void {
    const buf = this.buf;
    const n = this.dataLen;
    const base = this.dataOff;
    const h = d * KEEP;
    this.nextSeq[d] = (this.seq + n) | 0;
    while (i < n && this.synced[d] === 1) {
      let pos = this.pos[d];
      if (this.mode[d] === MODE_PARSE && pos < KEEP) {
        this.hdr[h + pos] = buf[base + i];
        pos++;
        i++;
        this.pos[d] = pos;
        if (pos === PPTP_HDR) this.header(d);
        else if (pos > PPTP_HDR && (pos & 1) === 0 && this.mode[d] === MODE_PARSE && pos <= this.msgLen[d]) {
          this.field(d, ctl, pos - 2, i, outbound, now);
        }
      } else {
        const left = this.msgLen[d] - pos;
        const step = left < n - i ? left : n - i;
        i += step;
        pos += step;
        this.pos[d] = pos;
      }
      if (this.synced[d] === 1 && pos >= PPTP_HDR && pos === this.msgLen[d]) this.complete(d, now);
    }
  }

  /** The 12-byte header is in: check it before any Call ID field is reached. */
  private header(d: number): void {
    const h = d * KEEP;
    const len = read16(this.hdr, h + PPTP_LENGTH);
    const err = checkPptp(this.hdr, h, len);
    this.counters[PC_MESSAGES]++;
    if (err === PPTP_OK) {
      this.msgLen[d] = len;
      return;
    }
    this.counters[PC_MALFORMED]++;
    if ((err === PPTP_ERR_CTRL_TYPE || err === PPTP_ERR_LENGTH) && len >= PPTP_HDR) {
      // Framing still known: let the message pass untouched.
      this.msgLen[d] = len;
      this.mode[d] = MODE_SKIP;
      return;
    }
    this.synced[d] = 0;
  }

  /** A 2-byte field at message offset `off` is complete; `i` is the segment index just past it. */
  private field(d: number, ctl: number, off: number, i: number, outbound: boolean, now: number): void {
    const h = d * KEEP;
    const type = read16(this.hdr, h + PPTP_CTRL_TYPE);
    const value = read16(this.hdr, h + off);
    const calls = this.calls;
    const t = this.sessions;
    const s = this.session[ctl];
    const m = t.sMap[s];
    const lan = t.mLan[m];
    const rem = t.sRem[s];
    if (off === PPTP_RESULT) return;
    if (off === OWN_FIELD[type]) {
      if (outbound) {
        let c = calls.findLan(lan, rem, value);
        const creates = type === OUT_CALL_REQUEST || type === IN_CALL_REPLY || type === OUT_CALL_REPLY || type === IN_CALL_REQUEST;
        if (c < 0 && creates) {
          c = calls.create(lan, rem, value, this.role[ctl], s, this.sessSerial[ctl], now);
          if (c < 0) this.counters[PC_NO_CALL_SLOT]++;
        }
        if (c < 0) {
          if (!creates) this.counters[PC_LOST_CALL]++;
          return;
        }
        this.call[d] = c;
        this.rewrite(d, i, value, calls.pubId[c]);
      } else {
        // The remote's own ID: remember it for a reply; clear/disconnect name their call by it.
        this.remId[d] = value;
        if (type === CALL_CLEAR_REQUEST || type === CALL_DISCONNECT_NOTIFY) this.call[d] = calls.findRem(rem, value);
      }
    } else if (off === PEER_FIELD[type]) {
      if (outbound) {
        this.remId[d] = value;
      } else {
        const c = calls.findPub(rem, value);
        if (c < 0 || calls.lan[c] !== lan) {
          this.counters[PC_LOST_CALL]++;
          return;
        }
        this.call[d] = c;
        this.rewrite(d, i, value, calls.lanId[c]);
      }
    }
  }

  /** Message complete: call-level effects (spec §5.2). */
  private complete(d: number, now: number): void {
    const h = d * KEEP;
    const c = this.call[d];
    if (this.mode[d] === MODE_PARSE && c >= 0 && this.calls.inUse[c] === 1) {
      const type = read16(this.hdr, h + PPTP_CTRL_TYPE);
      if (type === OUT_CALL_REPLY || type === IN_CALL_REPLY) {
        if (this.hdr[h + PPTP_RESULT] === PPTP_RESULT_OK && this.remId[d] >= 0) this.calls.confirm(c, this.remId[d]);
        else this.calls.refuse(c);
      } else if (type === CALL_CLEAR_REQUEST || type === CALL_DISCONNECT_NOTIFY) {
        this.calls.clear(c, now);
      }
    }
    this.pos[d] = 0;
    this.mode[d] = MODE_PARSE;
    this.call[d] = -1;
    this.remId[d] = -1;
  }

  /**
   * Replaces the field whose last byte is just before segment index `i`.
   * Its first byte may lie in the previous segment; call IDs keep their high
   * byte (PptpCalls.create), so only bytes inside this segment change.
   */
  private rewrite(d: number, i: number, oldValue: number, newValue: number): void {
    const fieldSeq = (this.seq + i - 2) | 0;
    this.patch(fieldSeq, oldValue, newValue);
    const r = d * RING + this.ringHead[d];
    this.ringSeq[r] = fieldSeq;
    this.ringOld[r] = oldValue;
    this.ringNew[r] = newValue;
    this.ringHead[d] = (this.ringHead[d] + 1) % RING;
    this.counters[PC_REWRITES]++;
  }

  /** Applies the rewrites remembered for bytes already seen to a retransmission's first `len` bytes. */
  private replay(d: number, len: number): void {
    for (let k = 0; k < RING; k++) {
      const r = d * RING + k;
      if (this.ringOld[r] < 0) continue;
      const rel = (this.ringSeq[r] - this.seq) | 0;
      if (rel > -2 && rel < len) this.patch(this.ringSeq[r], this.ringOld[r], this.ringNew[r]);
    }
  }

  /** Writes the bytes of a 2-byte field at stream position `fieldSeq` that lie in this segment and still hold the old value. */
  private patch(fieldSeq: number, oldValue: number, newValue: number): void {
    for (let b = 0; b < 2; b++) {
      const rel = (fieldSeq + b - this.seq) | 0;
      if (rel < 0 || rel >= this.dataLen) continue;
      const oldByte = b === 0 ? oldValue >>> 8 : oldValue & 0xff;
      const newByte = b === 0 ? newValue >>> 8 : newValue & 0xff;
      const at = this.dataOff + rel;
      if (this.buf[at] !== oldByte || oldByte === newByte) continue;
      this.setByte(at, newByte);
    }
  }

  /** Sets one payload byte and fixes the TCP checksum over its aligned 16-bit word (RFC 1624). */
  private setByte(at: number, value: number): void {
    const buf = this.buf;
    const wordAt = ((at - this.tcpOff) & 1) === 0 ? at : at - 1;
    const oldWord = read16(buf, wordAt);
    buf[at] = value;
    if (this.partial) return;
    const csum = this.tcpOff + TCP_CSUM;
    const c = update16(read16(buf, csum), oldWord, read16(buf, wordAt));
    buf[csum] = c >>> 8;
    buf[csum + 1] = c;
  }

  /** Frees the state of control connections whose TCP session is gone. */
  sweep(): void {
    const t = this.sessions;
    for (let ctl = 0; ctl < this.capacity; ctl++) {
      if (this.inUse[ctl] === 0) continue;
      const s = this.session[ctl];
      if (t.sInUse[s] === 1 && t.sSerial[s] === this.sessSerial[ctl]) continue;
      this.index.delete(s, this.sessSerial[ctl] % 0x7fffffff, 0, 0);
      this.inUse[ctl] = 0;
      this.free.give(ctl);
      this.count--;
    }
  }
}
