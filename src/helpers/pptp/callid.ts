/**
 * The Call-ID rewriter of the PPTP control channel (spec §5.1, §5.2): a
 * byte-stream reassembler per direction of each control connection that
 * finds every 2-byte field of every complete message, asks the control
 * tracker what to write there, rewrites it with an incremental TCP checksum
 * fix, and gives a retransmission the same rewrite again.
 *
 * Each direction follows the TCP sequence space from where it was synced (the
 * SYN, or a segment that starts with a valid PPTP header) and walks the
 * messages byte by byte, so messages split at any byte or several in one
 * segment are handled and TCP options are skipped by the data offset. The
 * 12-byte header (length, PPTP type 1, magic, control type, fixed per-type
 * length) is checked before any field is reached. A bad PPTP type or magic
 * loses the framing: the direction passes untouched until a segment starts
 * with a valid header. A known framing but unknown type or wrong length is
 * skipped untouched. A segment beyond a gap is dropped so the sender resends
 * in order. No checksum work for a partial checksum: the kernel sums the
 * payload later.
 */
import { read16, update16 } from '../../wire/checksum';
import { PPTP_ERR_CTRL_TYPE, PPTP_ERR_LENGTH, PPTP_HDR, PPTP_LENGTH, PPTP_OK, checkPptp, isPptpFramed } from '../../wire/pptp';
import { TCP_CSUM } from '../../wire/tcp';
import { Drop, Verdict } from '../../core/verdict';
import { PptpCounter, PptpCounters } from './counters';

/** Bytes of each message kept for the tracker: up to the result code. */
export const KEEP = 18;
const RING = 4;
/** A segment further ahead than this is a lost sync, not reordering. */
const MAX_AHEAD = 1 << 20;

const MODE_PARSE = 0;
const MODE_SKIP = 1;

/** What the fields of the messages mean: the control tracker (control.ts). */
export interface CallIdFields {
  /** A message's 12-byte header at hdr[h..] is in and valid. */
  begin(d: number): void;
  /**
   * The 2-byte field at message offset `off` (past the header) of the message
   * in hdr[h..] holds `value`. Returns the value to write there, or -1 to
   * leave it.
   */
  field(d: number, hdr: Uint8Array, h: number, off: number, value: number): number;
  /** The message is complete (`parsed`: its header was valid). */
  complete(d: number, hdr: Uint8Array, h: number, parsed: boolean): void;
  /** The header was malformed (counted). */
  malformed(): void;
}

export class CallIdRewriter {
  // Per direction (connection * 2 + 0 outbound / 1 inbound).
  private readonly synced: Uint8Array;
  private readonly nextSeq: Int32Array;
  private readonly pos: Uint16Array;
  private readonly msgLen: Uint16Array;
  private readonly mode: Uint8Array;
  /** The first KEEP bytes of the message being walked. */
  readonly hdr: Uint8Array;
  private readonly ringSeq: Int32Array;
  private readonly ringOld: Int32Array;
  private readonly ringNew: Uint16Array;
  private readonly ringHead: Uint8Array;

  // The segment being walked.
  private buf: Uint8Array = new Uint8Array(0);
  private tcpOff = 0;
  private dataOff = 0;
  private dataLen = 0;
  private seq = 0;
  private partial = false;

  constructor(directions: number, private readonly fields: CallIdFields, private readonly counters: PptpCounters) {
    this.synced = new Uint8Array(directions);
    this.nextSeq = new Int32Array(directions);
    this.pos = new Uint16Array(directions);
    this.msgLen = new Uint16Array(directions);
    this.mode = new Uint8Array(directions);
    this.hdr = new Uint8Array(directions * KEEP);
    this.ringSeq = new Int32Array(directions * RING);
    this.ringOld = new Int32Array(directions * RING).fill(-1);
    this.ringNew = new Uint16Array(directions * RING);
    this.ringHead = new Uint8Array(directions);
  }

  /** Forgets direction `d` (a new connection in its record). */
  reset(d: number): void {
    this.synced[d] = 0;
    for (let k = 0; k < RING; k++) this.ringOld[d * RING + k] = -1;
  }

  /** The byte with sequence number `seq` starts a message in direction `d` (after a SYN: ISN + 1). */
  resync(d: number, seq: number): void {
    this.synced[d] = 1;
    this.nextSeq[d] = seq;
    this.pos[d] = 0;
    this.mode[d] = MODE_PARSE;
  }

  /**
   * Walks the payload [dataOff, +dataLen) of a TCP segment at `tcpOff` with
   * sequence number `seq` in direction `d`. Returns TRANSLATED or a drop reason.
   */
  segment(d: number, buf: Uint8Array, tcpOff: number, dataOff: number, dataLen: number, seq: number, partial: boolean): Verdict {
    if (dataLen <= 0) return Verdict.TRANSLATED;
    if (this.synced[d] === 0) {
      if (!isPptpFramed(buf, dataOff, dataLen)) return Verdict.TRANSLATED;
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
        this.counters.counts[PptpCounter.OUT_OF_ORDER]++;
        return Drop.PPTP_OUT_OF_ORDER;
      }
      this.synced[d] = 0;
      return Verdict.TRANSLATED;
    }
    const skip = -ahead;
    if (skip > 0) {
      this.replay(d, skip < dataLen ? skip : dataLen);
      if (skip >= dataLen) return Verdict.TRANSLATED;
    }
    this.walk(d, skip);
    return Verdict.TRANSLATED;
  }

  /** Walks the new bytes of the segment from `i`, message by message. */
  private walk(d: number, i: number): void {
    const buf = this.buf;
    const n = this.dataLen;
    const base = this.dataOff;
    const hdr = this.hdr;
    const h = d * KEEP;
    this.nextSeq[d] = (this.seq + n) | 0;
    while (i < n && this.synced[d] === 1) {
      let pos = this.pos[d];
      if (this.mode[d] === MODE_PARSE && pos < KEEP) {
        hdr[h + pos] = buf[base + i];
        pos++;
        i++;
        this.pos[d] = pos;
        if (pos === PPTP_HDR) this.header(d);
        else if (pos > PPTP_HDR && (pos & 1) === 0 && this.mode[d] === MODE_PARSE && pos <= this.msgLen[d]) {
          const value = read16(hdr, h + pos - 2);
          const next = this.fields.field(d, hdr, h, pos - 2, value);
          if (next >= 0 && next !== value) this.rewrite(d, i, value, next);
        }
      } else {
        const left = this.msgLen[d] - pos;
        const step = left < n - i ? left : n - i;
        i += step;
        pos += step;
        this.pos[d] = pos;
      }
      if (this.synced[d] === 1 && pos >= PPTP_HDR && pos === this.msgLen[d]) {
        this.fields.complete(d, hdr, h, this.mode[d] === MODE_PARSE);
        this.pos[d] = 0;
        this.mode[d] = MODE_PARSE;
      }
    }
  }

  /** The 12-byte header is in: check it before any Call ID field is reached. */
  private header(d: number): void {
    const h = d * KEEP;
    const len = read16(this.hdr, h + PPTP_LENGTH);
    const err = checkPptp(this.hdr, h, len);
    if (err === PPTP_OK) {
      this.msgLen[d] = len;
      this.fields.begin(d);
      return;
    }
    this.fields.malformed();
    if ((err === PPTP_ERR_CTRL_TYPE || err === PPTP_ERR_LENGTH) && len >= PPTP_HDR) {
      // Framing still known: let the message pass untouched.
      this.msgLen[d] = len;
      this.mode[d] = MODE_SKIP;
      return;
    }
    this.synced[d] = 0;
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
    this.counters.counts[PptpCounter.REWRITES]++;
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
}
