/**
 * struct virtio_net_hdr (include/uapi/linux/virtio_net.h), the 10-byte prefix
 * of every TUN read and write once IFF_VNET_HDR is set. Fields are in host
 * byte order (little-endian on the machines this runs on; TUNSETVNETLE).
 */
import { View } from './view';

export const VNET_HDR_LEN = 10;

/** One byte each: flags and GSO type; then 16-bit header length, GSO size, checksum start and offset. */
export const VNET_FLAGS = 0, VNET_GSO_TYPE = 1;
export const VNET_HDR_LEN_FIELD = 2, VNET_GSO_SIZE = 4, VNET_CSUM_START = 6, VNET_CSUM_OFFSET = 8;

/** The L4 checksum field holds only the pseudo-header sum; the kernel finishes it. */
export const VNET_F_NEEDS_CSUM = 1;
/** The checksum was already verified by the kernel. */
export const VNET_F_DATA_VALID = 2;

export const VNET_GSO_NONE = 0, VNET_GSO_TCPV4 = 1, VNET_GSO_UDP_L4 = 5, VNET_GSO_ECN = 0x80;

export const VNET_OK = 0, VNET_ERR_TRUNCATED = 1;

/** A checked view of one virtio_net_hdr (little-endian fields). */
export class VnetHeader extends View {
  parse(buf: Uint8Array, off: number, avail: number): number {
    if (avail < VNET_HDR_LEN) return VNET_ERR_TRUNCATED;
    this.buf = buf; this.off = off; this.avail = avail;
    return VNET_OK;
  }

  private le16(at: number): number { return this.buf[this.off + at] | (this.buf[this.off + at + 1] << 8); }
  get flags(): number { return this.buf[this.off + VNET_FLAGS]; }
  get gsoType(): number { return this.buf[this.off + VNET_GSO_TYPE]; }
  get hdrLen(): number { return this.le16(VNET_HDR_LEN_FIELD); }
  get gsoSize(): number { return this.le16(VNET_GSO_SIZE); }
  get csumStart(): number { return this.le16(VNET_CSUM_START); }
  get csumOffset(): number { return this.le16(VNET_CSUM_OFFSET); }
  get needsChecksum(): boolean { return (this.flags & VNET_F_NEEDS_CSUM) !== 0; }
  get dataValid(): boolean { return (this.flags & VNET_F_DATA_VALID) !== 0; }
}
