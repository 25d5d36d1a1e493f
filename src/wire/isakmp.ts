/**
 * ISAKMP / IKE header (RFC 2408 §3.1, RFC 7296 §3.1), carried in UDP.
 * Offsets from the start of the ISAKMP header (UDP payload + 0 on port 500,
 * + 4 after the non-ESP marker on port 4500, RFC 3948 §2.2).
 */
import { View } from './view';

export const ISAKMP_PORT = 500;
/** Initiator cookie (IKEv2: initiator SPI), 8 bytes, read as two words. */
export const ISAKMP_ICOOKIE = 0;
/** Responder cookie (IKEv2: responder SPI), 8 bytes; zero in the first message of a new SA. */
export const ISAKMP_RCOOKIE = 8;
/** One byte each: next payload, version (major in the high nibble), exchange type, flags. */
export const ISAKMP_NEXT_PAYLOAD = 16, ISAKMP_VERSION = 17, ISAKMP_EXCHANGE = 18, ISAKMP_FLAGS = 19;
export const ISAKMP_MESSAGE_ID = 20;
export const ISAKMP_LENGTH = 24;
export const ISAKMP_HDR = 28;

export const ISAKMP_OK = 0, ISAKMP_ERR_TRUNCATED = 1;

/** A checked view of the 28-byte ISAKMP header; the cookies are read as two big-endian int32 words each, the form the tables key on. */
export class IsakmpHeader extends View {
  parse(buf: Uint8Array, off: number, avail: number): number {
    return this.bind(buf, off, avail, ISAKMP_HDR) ? ISAKMP_OK : ISAKMP_ERR_TRUNCATED;
  }

  get icookie0(): number { return this.i32(ISAKMP_ICOOKIE); }
  get icookie1(): number { return this.i32(ISAKMP_ICOOKIE + 4); }
  get rcookie0(): number { return this.i32(ISAKMP_RCOOKIE); }
  get rcookie1(): number { return this.i32(ISAKMP_RCOOKIE + 4); }
  get nextPayload(): number { return this.u8(ISAKMP_NEXT_PAYLOAD); }
  /** 1 for IKEv1, 2 for IKEv2. */
  get majorVersion(): number { return this.u8(ISAKMP_VERSION) >>> 4; }
  get exchange(): number { return this.u8(ISAKMP_EXCHANGE); }
  get flags(): number { return this.u8(ISAKMP_FLAGS); }
  get messageId(): number { return this.i32(ISAKMP_MESSAGE_ID); }
  /** Length of the whole message as stated; a first fragment holds less of it. */
  get length(): number { return this.i32(ISAKMP_LENGTH) >>> 0; }
}
