/**
 * GRE (RFC 2784, RFC 2890) and the enhanced GRE header of PPTP (RFC 2637
 * §4.1; spec §2). Offsets from the start of the GRE header.
 */
import { read16, read32 } from './checksum';
import { View } from './view';

export const GRE_FLAGS = 0, GRE_VERSION = 1, GRE_PROTO = 2;
export const GRE_PAYLOAD_LEN = 4;
/** The receiver's (peer's) Call ID: the low half of the key. */
export const GRE_CALL_ID = 6;
export const GRE_SEQ = 8;
/** Flags, version and protocol: every GRE header has them. */
export const GRE_BASE = 4;
/** Bytes up to and including the Call ID: what a PPTP GRE header always has. */
export const GRE_PPTP_MIN = 8;

/** Flags in byte 0 (checksum, key, sequence) and the ack flag of version 1 in byte 1. */
export const GRE_FLAG_C = 0x80, GRE_FLAG_K = 0x20, GRE_FLAG_S = 0x10, GRE_FLAG_A = 0x80;
export const GRE_PROTO_PPP = 0x880b;

/** libalias PPTP_INIT_MASK / PPTP_INIT_VALUE: K set, version 1, protocol 0x880B; S and A ignored (spec §9.10). */
const PPTP_MASK = 0xef7fffff | 0;
const PPTP_VALUE = 0x2001880b;

/** True when `len` bytes at `off` hold a PPTP enhanced GRE header (Call ID included). */
export function isPptpGre(buf: Uint8Array, off: number, len: number): boolean {
  return len >= GRE_PPTP_MIN && (read32(buf, off) & PPTP_MASK) === PPTP_VALUE;
}

/** Parse results: PPTP enhanced GRE, other GRE (only the base header is read), or too short for either. */
export const GRE_PPTP = 0, GRE_OTHER = 1, GRE_ERR_TRUNCATED = 2;

/**
 * A checked view of a GRE header. After `parse` returns GRE_PPTP the 8 bytes
 * up to the Call ID are present; after GRE_OTHER only the base 4 bytes are,
 * and `callId` reads 0.
 */
export class GreHeader extends View {
  pptp = false;

  parse(buf: Uint8Array, off: number, avail: number): number {
    if (avail < GRE_BASE) return GRE_ERR_TRUNCATED;
    this.buf = buf; this.off = off; this.avail = avail;
    this.pptp = isPptpGre(buf, off, avail);
    return this.pptp ? GRE_PPTP : GRE_OTHER;
  }

  get flags(): number { return this.buf[this.off + GRE_FLAGS]; }
  get version(): number { return this.buf[this.off + GRE_VERSION] & 0x07; }
  get protocol(): number { return read16(this.buf, this.off + GRE_PROTO); }
  get callId(): number { return this.pptp ? read16(this.buf, this.off + GRE_CALL_ID) : 0; }
  get callIdOff(): number { return this.off + GRE_CALL_ID; }
}
