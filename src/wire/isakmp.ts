/**
 * ISAKMP / IKE header (RFC 2408 §3.1, RFC 7296 §3.1), carried in UDP.
 * Offsets from the start of the ISAKMP header (UDP payload + 0 on port 500,
 * + 4 after the non-ESP marker on port 4500, RFC 3948 §2.2).
 */
export const ISAKMP_PORT = 500;
/** Initiator cookie (IKEv2: initiator SPI), 8 bytes, read as two words. */
export const ISAKMP_ICOOKIE = 0;
/** Responder cookie (IKEv2: responder SPI), 8 bytes; zero in the first message of a new SA. */
export const ISAKMP_RCOOKIE = 8;
export const ISAKMP_NEXT_PAYLOAD = 16;
export const ISAKMP_VERSION = 17;
export const ISAKMP_EXCHANGE = 18;
export const ISAKMP_FLAGS = 19;
export const ISAKMP_MESSAGE_ID = 20;
export const ISAKMP_LENGTH = 24;
export const ISAKMP_HDR = 28;
