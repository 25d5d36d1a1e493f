/**
 * The Call-ID rewriter of the PPTP control channel (spec §5.1, §5.2): a
 * byte-stream reassembler per direction of each control connection that
 * finds every 2-byte field of every complete message, asks the control
 * tracker what to write there, rewrites it with an incremental TCP checksum
 * fix, and gives any retransmission the same bytes again.
 *
 * Each direction follows the TCP sequence space from where it was synced (the
 * first byte after the SYN, or a segment that starts with a valid PPTP
 * header) and walks the messages byte by byte, so messages split at any byte
 * or several in one segment are handled and TCP options are skipped by the
 * data offset. The 12-byte header (length, PPTP type 1, magic, control type,
 * fixed per-type length) is checked before any field is reached. A bad PPTP
 * type or magic loses the framing: the direction passes untouched until a
 * segment starts with a valid header. A known framing but unknown type or
 * wrong length is skipped untouched. No checksum work for a partial
 * checksum: the kernel sums the payload later.
 *
 * Retransmissions: every rewritten byte is recorded by its sequence number
 * (one shared pool, a FIFO list per direction), so a retransmitted or
 * re-segmented byte range is rewritten exactly as the first time, however it
 * is cut. Records are kept while their bytes are unacknowledged (what can be
 * in flight) and a few dozen after; bytes older than the oldest record left
 * were acknowledged long ago, and a segment reaching back there is dropped
 * (it is a stale duplicate the receiver discards anyway) rather than sent
 * unrewritten. A segment beyond a gap is handed back (AHEAD) for the engine
 * to hold until the gap is filled.
 */
import { read16, update16 } from '../../wire/checksum';
import { PPTP_ERR_CTRL_TYPE, PPTP_ERR_LENGTH, PPTP_HDR, PPTP_LENGTH, PPTP_OK, checkPptp, isPptpFramed } from '../../wire/pptp';
import { TCP_CSUM } from '../../wire/tcp';
import { Drop, Verdict } from '../../core/verdict';
import { SlotPool } from '../../core/slot-pool';
import { PptpCounter, PptpCounters } from './counters';

/** Bytes of each message kept for the tracker: up to the result code and error byte. */
export const KEEP = 18;
/** segment(): the segment lies beyond a gap; hold it until the bytes before it have passed. */
export const AHEAD = Verdict.HELD;
/** first(): the field cannot be decided from its first byte; drop the segment so it comes again with the rest. */
export const SPLIT_UNDECIDED = -2;
/** A segment further ahead than this is a lost sync, not reordering. */
const MAX_AHEAD = 1 << 20;
/** Acknowledged records kept per direction before the oldest are let go. */
const RETAIN = 64;
/** Unacknowledged records one direction may hold: a 64 KiB window of the shortest messages. */
const MAX_PER_DIRECTION = 8192;
/** Rewritten bytes per 16-byte message at most: a Call ID and a result code. */
const MAX_REWRITES_PER_16 = 4;

const MODE_PARSE = 0;
const MODE_SKIP = 1;
const NONE = -1;

/** What the fields of the messages mean: the control tracker (control.ts). */
export interface CallIdFields {
  /** A message's 12-byte header at hdr[h..] is in and valid. */
  begin(d: number): void;
  /**
   * The segment ends after the first byte (`high`) of the field at message
   * offset `off`: returns the byte to write in its place (the high byte of
   * what field() will return), -1 to leave it, or SPLIT_UNDECIDED.
   */
  first(d: number, hdr: Uint8Array, h: number, off: number, high: number): number;
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

/** a - b in TCP sequence space (RFC 9293 §3.4). */
const seqDiff = (a: number, b: number): number => (a - b) | 0;

export class CallIdRewriter {
  // Per direction (connection * 2 + 0 outbound / 1 inbound).
  private readonly synced: Uint8Array;
  private readonly nextSeq: Int32Array;
  private readonly pos: Uint16Array;
  private readonly msgLen: Uint16Array;
  private readonly mode: Uint8Array;
  /** The first KEEP bytes of the message being walked. */
  readonly hdr: Uint8Array;
  /** The highest acknowledgement seen for the direction's bytes. */
  private readonly acked: Int32Array;
  private readonly hasAck: Uint8Array;
  /** Records for bytes before `floor` have been let go. */
  private readonly floor: Int32Array;
  private readonly hasFloor: Uint8Array;
  private readonly head: Int32Array;
  private readonly tail: Int32Array;
  private readonly count: Int32Array;
  // The record pool: one rewritten byte each.
  private readonly recSeq: Int32Array;
  private readonly recOld: Uint8Array;
  private readonly recNew: Uint8Array;
  private readonly recNext: Int32Array;
  private readonly recFree: SlotPool;
  /** Below this many free records, acknowledged ones are let go whatever RETAIN says. */
  private readonly lowWater: number;

  // The segment being walked.
  private buf: Uint8Array = new Uint8Array(0);
  private tcpOff = 0;
  private dataOff = 0;
  private dataLen = 0;
  private seq = 0;
  private partial = false;

  constructor(directions: number, records: number, private readonly fields: CallIdFields, private readonly counters: PptpCounters) {
    this.synced = new Uint8Array(directions);
    this.nextSeq = new Int32Array(directions);
    this.pos = new Uint16Array(directions);
    this.msgLen = new Uint16Array(directions);
    this.mode = new Uint8Array(directions);
    this.hdr = new Uint8Array(directions * KEEP);
    this.acked = new Int32Array(directions);
    this.hasAck = new Uint8Array(directions);
    this.floor = new Int32Array(directions);
    this.hasFloor = new Uint8Array(directions);
    this.head = new Int32Array(directions).fill(NONE);
    this.tail = new Int32Array(directions).fill(NONE);
    this.count = new Int32Array(directions);
    this.recSeq = new Int32Array(records);
    this.recOld = new Uint8Array(records);
    this.recNew = new Uint8Array(records);
    this.recNext = new Int32Array(records);
    this.recFree = new SlotPool(records);
    this.lowWater = records >>> 4;
  }

  /** Forgets direction `d` and frees its records (a new connection in its record). */
  reset(d: number): void {
    this.synced[d] = 0;
    this.hasAck[d] = 0;
    this.hasFloor[d] = 0;
    for (let r = this.head[d]; r !== NONE; r = this.recNext[r]) this.recFree.give(r);
    this.head[d] = NONE;
    this.tail[d] = NONE;
    this.count[d] = 0;
  }


  /** The byte with sequence number `seq` starts a message in direction `d` (after a SYN: ISN + 1). */
  resync(d: number, seq: number): void {
    this.reset(d);
    this.synced[d] = 1;
    this.nextSeq[d] = seq;
    this.pos[d] = 0;
    this.mode[d] = MODE_PARSE;
  }

  /** The other side acknowledged direction `d` up to `ack` (exclusive). */
  ack(d: number, ack: number): void {
    if (this.synced[d] === 0) return;
    if (this.hasAck[d] === 0 || seqDiff(ack, this.acked[d]) > 0) {
      this.acked[d] = ack;
      this.hasAck[d] = 1;
    }
  }

  /**
   * Walks the payload [dataOff, +dataLen) of a TCP segment at `tcpOff` with
   * sequence number `seq` in direction `d`. Returns TRANSLATED, AHEAD or a
   * drop reason.
   */
  segment(d: number, buf: Uint8Array, tcpOff: number, dataOff: number, dataLen: number, seq: number, partial: boolean): Verdict {
    if (dataLen <= 0) return Verdict.TRANSLATED;
    if (this.synced[d] === 0) {
      if (!isPptpFramed(buf, dataOff, dataLen)) return Verdict.TRANSLATED;
      this.resync(d, seq);
    }
    const ahead = seqDiff(seq, this.nextSeq[d]);
    if (ahead > 0) {
      if (ahead < MAX_AHEAD) return AHEAD;
      this.synced[d] = 0;
      return Verdict.TRANSLATED;
    }
    this.trim(d);
    // Bytes whose records were let go: a stale duplicate the receiver has acknowledged long ago.
    if (this.hasFloor[d] === 1 && seqDiff(seq, this.floor[d]) < 0) {
      this.counters.counts[PptpCounter.STALE_DUPLICATE]++;
      return Drop.PPTP_STALE_DUPLICATE;
    }
    const skip = -ahead;
    if (skip < dataLen) {
      const need = (((dataLen - skip) >>> 4) + 2) * MAX_REWRITES_PER_16;
      if (this.recFree.available < need || this.count[d] + need > MAX_PER_DIRECTION) {
        this.counters.counts[PptpCounter.REWRITE_BACKLOG]++;
        return Drop.PPTP_REWRITE_BACKLOG;
      }
    }
    this.buf = buf;
    this.tcpOff = tcpOff;
    this.dataOff = dataOff;
    this.dataLen = dataLen;
    this.seq = seq;
    this.partial = partial;
    if (skip > 0) {
      this.replay(d, skip < dataLen ? skip : dataLen);
      if (skip >= dataLen) return Verdict.TRANSLATED;
    }
    return this.walk(d, skip);
  }

  /** Lets go of acknowledged records beyond the few kept for late duplicates. */
  private trim(d: number): void {
    if (this.hasAck[d] === 0) return;
    const low = this.recFree.available < this.lowWater;
    while (this.head[d] !== NONE && (this.count[d] > RETAIN || low)) {
      const r = this.head[d];
      if (seqDiff(this.acked[d], this.recSeq[r]) <= 0) break;
      this.floor[d] = (this.recSeq[r] + 1) | 0;
      this.hasFloor[d] = 1;
      this.head[d] = this.recNext[r];
      if (this.head[d] === NONE) this.tail[d] = NONE;
      this.count[d]--;
      this.recFree.give(r);
    }
  }

  /** Walks the new bytes of the segment from `i`, message by message. */
  private walk(d: number, i: number): Verdict {
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
        if (pos === PPTP_HDR) {
          this.header(d);
        } else if (pos > PPTP_HDR && this.mode[d] === MODE_PARSE && pos <= this.msgLen[d]) {
          if ((pos & 1) === 0) {
            const value = read16(hdr, h + pos - 2);
            const next = this.fields.field(d, hdr, h, pos - 2, value);
            if (next >= 0 && next !== value) this.rewrite(d, i, value, next);
          } else if (i === n && pos + 1 <= this.msgLen[d]) {
            // The segment ends inside a field: its first byte leaves now.
            const high = hdr[h + pos - 1];
            const to = this.fields.first(d, hdr, h, pos - 1, high);
            if (to === SPLIT_UNDECIDED) {
              // Taken back: the byte is walked again when the segment comes again.
              this.pos[d] = pos - 1;
              this.nextSeq[d] = (this.seq + n - 1) | 0;
              this.counters.counts[PptpCounter.SPLIT_FIELD]++;
              return Drop.PPTP_SPLIT_FIELD;
            }
            if (to >= 0 && to !== high) this.rewriteByte(d, i - 1, high, to);
          }
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
    return Verdict.TRANSLATED;
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
   * A first byte in the previous segment was decided by first().
   */
  private rewrite(d: number, i: number, oldValue: number, newValue: number): void {
    if (i >= 2) this.rewriteByte(d, i - 2, oldValue >>> 8, newValue >>> 8);
    this.rewriteByte(d, i - 1, oldValue & 0xff, newValue & 0xff);
    this.counters.counts[PptpCounter.REWRITES]++;
  }

  /** Rewrites the byte at segment index `i` and records it for retransmissions. */
  private rewriteByte(d: number, i: number, oldByte: number, newByte: number): void {
    if (oldByte === newByte) return;
    this.setByte(this.dataOff + i, newByte);
    const r = this.recFree.take();
    this.recSeq[r] = (this.seq + i) | 0;
    this.recOld[r] = oldByte;
    this.recNew[r] = newByte;
    this.recNext[r] = NONE;
    if (this.tail[d] === NONE) this.head[d] = r;
    else this.recNext[this.tail[d]] = r;
    this.tail[d] = r;
    this.count[d]++;
  }

  /** Applies the recorded rewrites to a retransmission's first `len` bytes (bytes walked before). */
  private replay(d: number, len: number): void {
    const buf = this.buf;
    for (let r = this.head[d]; r !== NONE; r = this.recNext[r]) {
      const rel = seqDiff(this.recSeq[r], this.seq);
      if (rel < 0 || rel >= len) continue;
      const at = this.dataOff + rel;
      if (buf[at] === this.recOld[r]) this.setByte(at, this.recNew[r]);
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
