/**
 * ESP (RFC 4303 §2) and AH (RFC 4302 §2) headers, as far as a NAT reads them.
 * Offsets from the start of the ESP / AH header.
 */
import { read32 } from './checksum';
import { View } from './view';

export const ESP_SPI = 0, ESP_SEQ = 4;
/** SPI + sequence number: all a translator needs, and what an ICMP error quotes (RFC 792). */
export const ESP_MIN_HDR = 8;
/** SPIs 1-255 are reserved by IANA and 0 means "no SA" (RFC 4303 §2.1). */
export const ESP_SPI_RESERVED_MAX = 255;

export const AH_NEXT_HEADER = 0, AH_PAYLOAD_LEN = 1, AH_SPI = 4, AH_SEQ = 8;
export const AH_MIN_HDR = 12;

export const ESP_OK = 0, ESP_ERR_TRUNCATED = 1;

/** A checked view of the SPI and sequence number that start every ESP packet. */
export class EspHeader extends View {
  parse(buf: Uint8Array, off: number, avail: number): number {
    if (avail < ESP_MIN_HDR) return ESP_ERR_TRUNCATED;
    this.buf = buf; this.off = off; this.avail = avail;
    return ESP_OK;
  }

  get spi(): number { return read32(this.buf, this.off + ESP_SPI); }
  get seq(): number { return read32(this.buf, this.off + ESP_SEQ); }
}

/** A checked view of the fixed part of an AH header (the ICV is opaque). */
export class AhHeader extends View {
  parse(buf: Uint8Array, off: number, avail: number): number {
    if (avail < AH_MIN_HDR) return ESP_ERR_TRUNCATED;
    this.buf = buf; this.off = off; this.avail = avail;
    return ESP_OK;
  }

  get nextHeader(): number { return this.buf[this.off + AH_NEXT_HEADER]; }
  /** Length of the AH header in bytes: (payload length field + 2) 32-bit words (RFC 4302 §2.2). */
  get hdrLen(): number { return (this.buf[this.off + AH_PAYLOAD_LEN] + 2) << 2; }
  get spi(): number { return read32(this.buf, this.off + AH_SPI); }
  get seq(): number { return read32(this.buf, this.off + AH_SEQ); }
}
