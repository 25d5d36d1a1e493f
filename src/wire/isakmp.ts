/**
 * ISAKMP / IKE header (RFC 2408 §3.1, RFC 7296 §3.1), carried in UDP.
 * Offsets from the start of the ISAKMP header (UDP payload + 0 on port 500,
 * + 4 after the non-ESP marker on port 4500, RFC 3948 §2.2).
 */
import { read32 } from './checksum';
import { View } from './view';

export const ISAKMP_PORT = 500;
/** Initiator cookie (IKEv2: initiator SPI), 8 bytes, read as two words. */
export const ISAKMP_ICOOKIE = 0;
/** Responder cookie (IKEv2: responder SPI), 8 bytes; zero in the first message of a new SA. */
export const ISAKMP_RCOOKIE = 8;
/** One byte each: next payload, version (major in the high nibble), exchange type, flags. */
export const ISAKMP_NEXT_PAYLOAD = 16, ISAKMP_VERSION = 17, ISAKMP_EXCHANGE = 18, ISAKMP_FLAGS = 19;
/** Message ID, the length of the whole message, and the header's own length. */
export const ISAKMP_MESSAGE_ID = 20, ISAKMP_LENGTH = 24, ISAKMP_HDR = 28;

export const ISAKMP_OK = 0, ISAKMP_ERR_TRUNCATED = 1;

/** A checked view of the 28-byte ISAKMP header; the cookies are read as two big-endian int32 words each, the form the tables key on. */
export class IsakmpHeader extends View {
  parse(buf: Uint8Array, off: number, avail: number): number {
    if (avail < ISAKMP_HDR) return ISAKMP_ERR_TRUNCATED;
    this.buf = buf; this.off = off; this.avail = avail;
    return ISAKMP_OK;
  }

  get icookie0(): number { return read32(this.buf, this.off + ISAKMP_ICOOKIE); }
  get icookie1(): number { return read32(this.buf, this.off + ISAKMP_ICOOKIE + 4); }
  get rcookie0(): number { return read32(this.buf, this.off + ISAKMP_RCOOKIE); }
  get rcookie1(): number { return read32(this.buf, this.off + ISAKMP_RCOOKIE + 4); }
  get nextPayload(): number { return this.buf[this.off + ISAKMP_NEXT_PAYLOAD]; }
  /** 1 for IKEv1, 2 for IKEv2. */
  get majorVersion(): number { return this.buf[this.off + ISAKMP_VERSION] >>> 4; }
  get exchange(): number { return this.buf[this.off + ISAKMP_EXCHANGE]; }
  get flags(): number { return this.buf[this.off + ISAKMP_FLAGS]; }
  get messageId(): number { return read32(this.buf, this.off + ISAKMP_MESSAGE_ID); }
  /** Length of the whole message as stated; a first fragment holds less of it. */
  get length(): number { return read32(this.buf, this.off + ISAKMP_LENGTH) >>> 0; }
}
