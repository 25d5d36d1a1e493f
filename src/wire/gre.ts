/**
 * Enhanced GRE header of PPTP (RFC 2637 §4.1; spec §2). Offsets from the
 * start of the GRE header.
 */
import { read32 } from './checksum';

export const GRE_FLAGS = 0;
export const GRE_VERSION = 1;
export const GRE_PROTO = 2;
export const GRE_PAYLOAD_LEN = 4;
/** The receiver's (peer's) Call ID: the low half of the key. */
export const GRE_CALL_ID = 6;
export const GRE_SEQ = 8;
/** Bytes up to and including the Call ID: what a PPTP GRE header always has. */
export const GRE_PPTP_MIN = 8;

export const GRE_FLAG_S = 0x10;
export const GRE_FLAG_A = 0x80;
export const GRE_PROTO_PPP = 0x880b;

/** libalias PPTP_INIT_MASK / PPTP_INIT_VALUE: K set, version 1, protocol 0x880B; S and A ignored (spec §9.10). */
const PPTP_MASK = 0xef7fffff | 0;
const PPTP_VALUE = 0x2001880b;

/** True when `len` bytes at `off` hold a PPTP enhanced GRE header (Call ID included). */
export function isPptpGre(buf: Uint8Array, off: number, len: number): boolean {
  return len >= GRE_PPTP_MIN && (read32(buf, off) & PPTP_MASK) === PPTP_VALUE;
}
