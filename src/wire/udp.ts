/** UDP header (RFC 768). Offsets from the start of the UDP header. */
import { read16 } from './checksum';
import { View } from './view';

export const UDP_SPORT = 0, UDP_DPORT = 2;
export const UDP_LEN = 4;
export const UDP_CSUM = 6;
export const UDP_HDR = 8;

export const UDP_OK = 0, UDP_ERR_TRUNCATED = 1;

/**
 * A checked view of one UDP header and the payload present after it. The
 * length field is reported, not trusted: the IP total length bounds the
 * datagram (a GSO super-packet or a first fragment holds more or less than
 * one datagram's worth).
 */
export class UdpHeader extends View {
  parse(buf: Uint8Array, off: number, avail: number): number {
    if (avail < UDP_HDR) return UDP_ERR_TRUNCATED;
    this.buf = buf; this.off = off; this.avail = avail;
    return UDP_OK;
  }

  get sport(): number { return read16(this.buf, this.off + UDP_SPORT); }
  get dport(): number { return read16(this.buf, this.off + UDP_DPORT); }
  get length(): number { return read16(this.buf, this.off + UDP_LEN); }
  /** 0 means "no checksum" (RFC 768). */
  get checksum(): number { return read16(this.buf, this.off + UDP_CSUM); }
  get sportOff(): number { return this.off + UDP_SPORT; }
  get dportOff(): number { return this.off + UDP_DPORT; }
  get csumOff(): number { return this.off + UDP_CSUM; }
  get payloadOff(): number { return this.off + UDP_HDR; }
  get payloadLen(): number { return this.avail - UDP_HDR; }
}
