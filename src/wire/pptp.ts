/**
 * PPTP control messages on TCP 1723 (RFC 2637 §2; spec §2 table, RFC
 * numbering). Offsets from the first byte of the PPTP message.
 */
import { read16, read32 } from './checksum';
import { View } from './view';

export const PPTP_PORT = 1723;

export const PPTP_LENGTH = 0, PPTP_MSG_TYPE = 2, PPTP_MAGIC = 4, PPTP_CTRL_TYPE = 8;
export const PPTP_HDR = 12;
/** Body fields used by the Call-ID masquerade. */
export const PPTP_CALL_ID = 12;
export const PPTP_PEER_CALL_ID = 14;
/** Result code of Outgoing-Call-Reply and Incoming-Call-Reply (1 = connected / accept). */
export const PPTP_RESULT = 16;

export const PPTP_MSG_CONTROL = 1;
export const PPTP_MAGIC_COOKIE = 0x1a2b3c4d;
export const PPTP_RESULT_OK = 1;
/** Outgoing-Call-Reply result "general error" (RFC 2637 §2.8). */
export const PPTP_RESULT_GENERAL_ERROR = 2;

/** Control message types (RFC 2637 §2): control connection management. */
export const START_CTRL_REQUEST = 1, START_CTRL_REPLY = 2, STOP_CTRL_REQUEST = 3, STOP_CTRL_REPLY = 4;
export const ECHO_REQUEST = 5, ECHO_REPLY = 6;
/** Call management. */
export const OUT_CALL_REQUEST = 7, OUT_CALL_REPLY = 8, IN_CALL_REQUEST = 9, IN_CALL_REPLY = 10, IN_CALL_CONNECTED = 11;
export const CALL_CLEAR_REQUEST = 12, CALL_DISCONNECT_NOTIFY = 13;
/** Error reporting and PPP session control. */
export const WAN_ERROR_NOTIFY = 14, SET_LINK_INFO = 15;
export const PPTP_MAX_TYPE = 15;

/** Fixed length of each control message type (index = type), spec §2. */
export const PPTP_MSG_LEN: readonly number[] = [0, 156, 156, 16, 16, 16, 20, 168, 32, 220, 24, 28, 16, 148, 40, 24];

/** Longest control message; a stated length above this is malformed. */
export const PPTP_MAX_LEN = 220;

/** Check results; PPTP_ERR_TRUNCATED (parse only): the header is good but fewer bytes than its length are present. */
export const PPTP_OK = 0, PPTP_ERR_LENGTH = 1, PPTP_ERR_MSG_TYPE = 2, PPTP_ERR_MAGIC = 3, PPTP_ERR_CTRL_TYPE = 4, PPTP_ERR_TRUNCATED = 5;

/**
 * Checks the 12-byte header at `off` whose Length field says `len`: PPTP
 * type 1, magic cookie, known control type, and Length equal to the type's
 * fixed size (RFC 2637 gives every control message a fixed length; [NF]
 * pptp_msg_size rejects shorter ones). The caller guarantees 12 bytes.
 */
export function checkPptp(buf: Uint8Array, off: number, len: number): number {
  if (len < PPTP_HDR || len > PPTP_MAX_LEN) return PPTP_ERR_LENGTH;
  if (read16(buf, off + PPTP_MSG_TYPE) !== PPTP_MSG_CONTROL) return PPTP_ERR_MSG_TYPE;
  if (read32(buf, off + PPTP_MAGIC) !== PPTP_MAGIC_COOKIE) return PPTP_ERR_MAGIC;
  const type = read16(buf, off + PPTP_CTRL_TYPE);
  if (type < 1 || type > PPTP_MAX_TYPE) return PPTP_ERR_CTRL_TYPE;
  return len === PPTP_MSG_LEN[type] ? PPTP_OK : PPTP_ERR_LENGTH;
}

/** True when 12 bytes at `off` begin a control message: PPTP type 1 and the magic cookie. */
export function isPptpFramed(buf: Uint8Array, off: number, avail: number): boolean {
  return avail >= PPTP_HDR && read16(buf, off + PPTP_MSG_TYPE) === PPTP_MSG_CONTROL &&
    read32(buf, off + PPTP_MAGIC) === PPTP_MAGIC_COOKIE;
}

/**
 * A checked view of one complete control message (for messages that sit
 * whole in a buffer; the TCP stream walker checks headers with checkPptp as
 * bytes arrive). After `parse` the whole fixed-length message is present, so
 * every body field of its type can be read.
 */
export class PptpMessage extends View {
  length = 0;

  parse(buf: Uint8Array, off: number, avail: number): number {
    if (avail < PPTP_HDR) return PPTP_ERR_TRUNCATED;
    const len = read16(buf, off + PPTP_LENGTH);
    const err = checkPptp(buf, off, len);
    if (err !== PPTP_OK) return err;
    if (avail < len) return PPTP_ERR_TRUNCATED;
    this.buf = buf; this.off = off; this.avail = avail;
    this.length = len;
    return PPTP_OK;
  }

  get ctrlType(): number { return read16(this.buf, this.off + PPTP_CTRL_TYPE); }
  /** Call ID @12 (every type that has a Call ID field is at least 16 bytes). */
  get callId(): number { return read16(this.buf, this.off + PPTP_CALL_ID); }
  get peerCallId(): number { return this.length >= PPTP_PEER_CALL_ID + 2 ? read16(this.buf, this.off + PPTP_PEER_CALL_ID) : 0; }
  get result(): number { return this.length > PPTP_RESULT ? this.buf[this.off + PPTP_RESULT] : 0; }
}
