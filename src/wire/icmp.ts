/** ICMPv4 (RFC 792). Offsets from the start of the ICMP header. */
import { read16 } from './checksum';
import { View } from './view';

export const ICMP_TYPE = 0;
export const ICMP_CODE = 1;
export const ICMP_CSUM = 2;
/** Query messages: identifier and sequence. */
export const ICMP_ID = 4;
export const ICMP_SEQ = 6;
/** Error messages: the offending datagram's IP header starts here. */
export const ICMP_ERR_EMBEDDED = 8;
export const ICMP_HDR = 8;
/** Fragmentation-needed carries the next-hop MTU here (RFC 1191 §4). */
export const ICMP_NEXT_HOP_MTU = 6;

/** Message types (RFC 792). */
export const ICMP_ECHO_REPLY = 0, ICMP_ECHO_REQUEST = 8, ICMP_TIMESTAMP = 13, ICMP_TIMESTAMP_REPLY = 14;
export const ICMP_DEST_UNREACH = 3, ICMP_SOURCE_QUENCH = 4, ICMP_TIME_EXCEEDED = 11, ICMP_PARAM_PROBLEM = 12;
/** Destination-unreachable codes. */
export const ICMP_CODE_PORT_UNREACH = 3, ICMP_CODE_FRAG_NEEDED = 4;

/** An error quotes the offending IP header plus at least 64 bits of its payload (RFC 792). */
export const ICMP_QUOTE_MIN_L4 = 8;

export const ICMP_OK = 0, ICMP_ERR_TRUNCATED = 1;

/** Query requests sent from the inside, keyed by their identifier (RFC 5508 §3.1). */
export function isIcmpQueryRequest(type: number): boolean {
  return type === ICMP_ECHO_REQUEST || type === ICMP_TIMESTAMP;
}

export function isIcmpQueryReply(type: number): boolean {
  return type === ICMP_ECHO_REPLY || type === ICMP_TIMESTAMP_REPLY;
}

/** Error messages that embed the offending datagram (RFC 5508 §3.2). */
export function isIcmpError(type: number): boolean {
  return type === ICMP_DEST_UNREACH || type === ICMP_TIME_EXCEEDED ||
    type === ICMP_PARAM_PROBLEM || type === ICMP_SOURCE_QUENCH;
}

/**
 * A checked view of one ICMP message: the 8-byte header is present after
 * `parse`; an error's embedded datagram is [embeddedOff, +embeddedLen), to be
 * parsed with its own Ipv4Header.
 */
export class IcmpHeader extends View {
  parse(buf: Uint8Array, off: number, avail: number): number {
    if (avail < ICMP_HDR) return ICMP_ERR_TRUNCATED;
    this.buf = buf; this.off = off; this.avail = avail;
    return ICMP_OK;
  }

  get type(): number { return this.buf[this.off + ICMP_TYPE]; }
  get code(): number { return this.buf[this.off + ICMP_CODE]; }
  get checksum(): number { return read16(this.buf, this.off + ICMP_CSUM); }
  /** Query messages. */
  get id(): number { return read16(this.buf, this.off + ICMP_ID); }
  get seq(): number { return read16(this.buf, this.off + ICMP_SEQ); }
  /** Fragmentation-needed. */
  get nextHopMtu(): number { return read16(this.buf, this.off + ICMP_NEXT_HOP_MTU); }
  get isError(): boolean { return isIcmpError(this.type); }
  get idOff(): number { return this.off + ICMP_ID; }
  get csumOff(): number { return this.off + ICMP_CSUM; }
  get embeddedOff(): number { return this.off + ICMP_ERR_EMBEDDED; }
  get embeddedLen(): number { return this.avail - ICMP_ERR_EMBEDDED; }
}
