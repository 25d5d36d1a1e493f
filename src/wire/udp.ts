/** UDP header (RFC 768). Offsets from the start of the UDP header. */
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
    return this.bind(buf, off, avail, UDP_HDR) ? UDP_OK : UDP_ERR_TRUNCATED;
  }

  get sport(): number { return this.u16(UDP_SPORT); }
  get dport(): number { return this.u16(UDP_DPORT); }
  get length(): number { return this.u16(UDP_LEN); }
  /** 0 means "no checksum" (RFC 768). */
  get checksum(): number { return this.u16(UDP_CSUM); }
  get sportOff(): number { return this.off + UDP_SPORT; }
  get dportOff(): number { return this.off + UDP_DPORT; }
  get csumOff(): number { return this.off + UDP_CSUM; }
  get payloadOff(): number { return this.off + UDP_HDR; }
  get payloadLen(): number { return this.avail - UDP_HDR; }
}
