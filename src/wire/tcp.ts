/** TCP header (RFC 9293 §3.1). Offsets from the start of the TCP header. */
import { read16, read32 } from './checksum';
import { View } from './view';

export const TCP_SPORT = 0;
export const TCP_DPORT = 2;
export const TCP_SEQ = 4;
export const TCP_ACK = 8;
/** Data offset in the high nibble; flags in the next byte. */
export const TCP_DATA_OFF = 12, TCP_FLAGS = 13;
export const TCP_WINDOW = 14;
export const TCP_CSUM = 16;
export const TCP_URGENT = 18;
export const TCP_MIN_HDR = 20;

export const TCP_FIN = 0x01, TCP_SYN = 0x02, TCP_RST = 0x04, TCP_PSH = 0x08, TCP_ACK_FLAG = 0x10;
/** Option kinds (RFC 9293 §3.2). */
export const TCP_OPT_END = 0, TCP_OPT_NOP = 1, TCP_OPT_MSS = 2;

/** parse results: fewer than 20 bytes; a data offset below 5 words or (in a whole segment) beyond the bytes present. */
export const TCP_OK = 0, TCP_ERR_TRUNCATED = 1, TCP_ERR_DATA_OFFSET = 2;

/**
 * A checked view of one TCP segment. The header of the first fragment of a
 * fragmented datagram may run past the fragment (`fragment`): then `hdrLen`
 * counts only the header bytes present and there is no data.
 */
export class TcpHeader extends View {
  /** Header length from the data offset, options included (at most `avail`). */
  hdrLen = 0;

  parse(buf: Uint8Array, off: number, avail: number, fragment: boolean): number {
    if (avail < TCP_MIN_HDR) return TCP_ERR_TRUNCATED;
    const hl = (buf[off + TCP_DATA_OFF] >>> 4) << 2;
    if (hl < TCP_MIN_HDR || (hl > avail && !fragment)) return TCP_ERR_DATA_OFFSET;
    this.buf = buf; this.off = off; this.avail = avail;
    this.hdrLen = hl < avail ? hl : avail;
    return TCP_OK;
  }

  get sport(): number { return read16(this.buf, this.off + TCP_SPORT); }
  get dport(): number { return read16(this.buf, this.off + TCP_DPORT); }
  get seq(): number { return read32(this.buf, this.off + TCP_SEQ); }
  get ack(): number { return read32(this.buf, this.off + TCP_ACK); }
  get flags(): number { return this.buf[this.off + TCP_FLAGS]; }
  get window(): number { return read16(this.buf, this.off + TCP_WINDOW); }
  get checksum(): number { return read16(this.buf, this.off + TCP_CSUM); }
  /** Absolute offsets of the fields a translator writes. */
  get sportOff(): number { return this.off + TCP_SPORT; }
  get dportOff(): number { return this.off + TCP_DPORT; }
  get csumOff(): number { return this.off + TCP_CSUM; }
  /** Payload: absolute offset and length (0 when the header fills what is present). */
  get dataOff(): number { return this.off + this.hdrLen; }
  get dataLen(): number { return this.avail - this.hdrLen; }
}

/** Header length in bytes from the data-offset field (the caller has checked 20 bytes are present). */
export function tcpHeaderLen(buf: Uint8Array, tcpOff: number): number {
  return (buf[tcpOff + TCP_DATA_OFF] >>> 4) << 2;
}
