/**
 * IPv4 header (RFC 791 §3.1). Offsets from the start of the header.
 */
import { read16, read32, sumBytes } from './checksum';

export const IPV4_VER_IHL = 0;
export const IPV4_TOTAL_LEN = 2;
export const IPV4_ID = 4;
export const IPV4_FRAG = 6;
export const IPV4_TTL = 8;
export const IPV4_PROTO = 9;
export const IPV4_CSUM = 10;
export const IPV4_SRC = 12;
export const IPV4_DST = 16;
export const IPV4_MIN_HDR = 20;

export const IPV4_FLAG_MF = 0x2000;
export const IPV4_FLAG_DF = 0x4000;
export const IPV4_FRAG_OFFSET_MASK = 0x1fff;

export const PROTO_ICMP = 1;
export const PROTO_TCP = 6;
export const PROTO_UDP = 17;
export const PROTO_GRE = 47;
export const PROTO_ESP = 50;
export const PROTO_AH = 51;

/** Result of checking an IPv4 header; 0 means valid. */
export const IPV4_OK = 0;
export const IPV4_ERR_TRUNCATED = 1;
export const IPV4_ERR_VERSION = 2;
export const IPV4_ERR_IHL = 3;
export const IPV4_ERR_TOTAL_LEN = 4;
export const IPV4_ERR_CHECKSUM = 5;

/**
 * A reusable, checked view of one IPv4 header. `parse` validates version,
 * IHL, total length and header checksum against the bytes actually present,
 * so every accessor afterwards reads inside [off, off + totalLen).
 * One instance is reused for every packet: no allocation per packet.
 */
export class Ipv4Header {
  buf: Uint8Array = new Uint8Array(0);
  off = 0;
  hdrLen = 0;
  totalLen = 0;

  /**
   * Validates the header at `off`, with `avail` bytes present; returns an
   * IPV4_ERR_* code or IPV4_OK. `whole` requires the whole datagram to be
   * present; it is false for the truncated copy quoted inside an ICMP error.
   */
  parse(buf: Uint8Array, off: number, avail: number, verifyChecksum: boolean, whole: boolean): number {
    if (avail < IPV4_MIN_HDR) return IPV4_ERR_TRUNCATED;
    const verIhl = buf[off + IPV4_VER_IHL];
    if (verIhl >>> 4 !== 4) return IPV4_ERR_VERSION;
    const hdrLen = (verIhl & 0x0f) << 2;
    if (hdrLen < IPV4_MIN_HDR || hdrLen > avail) return IPV4_ERR_IHL;
    const totalLen = read16(buf, off + IPV4_TOTAL_LEN);
    if (totalLen < hdrLen || (whole && totalLen > avail)) return IPV4_ERR_TOTAL_LEN;
    if (verifyChecksum && sumBytes(buf, off, hdrLen, 0) !== 0xffff) return IPV4_ERR_CHECKSUM;
    this.buf = buf;
    this.off = off;
    this.hdrLen = hdrLen;
    this.totalLen = totalLen;
    return IPV4_OK;
  }

  get proto(): number { return this.buf[this.off + IPV4_PROTO]; }
  get src(): number { return read32(this.buf, this.off + IPV4_SRC); }
  get dst(): number { return read32(this.buf, this.off + IPV4_DST); }
  get id(): number { return read16(this.buf, this.off + IPV4_ID); }
  get fragField(): number { return read16(this.buf, this.off + IPV4_FRAG); }
  /** True for every fragment of a fragmented datagram, first one included. */
  get isFragment(): boolean { return (this.fragField & (IPV4_FLAG_MF | IPV4_FRAG_OFFSET_MASK)) !== 0; }
  /** True for fragments that carry no transport header (offset > 0). */
  get isLaterFragment(): boolean { return (this.fragField & IPV4_FRAG_OFFSET_MASK) !== 0; }
  /** Offset of the payload (transport header) from the start of the buffer. */
  get payloadOff(): number { return this.off + this.hdrLen; }
  get payloadLen(): number { return this.totalLen - this.hdrLen; }
}
