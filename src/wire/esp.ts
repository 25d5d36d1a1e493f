/**
 * ESP (RFC 4303 §2) and AH (RFC 4302 §2) headers, as far as a NAT reads them.
 * Offsets from the start of the ESP / AH header.
 */
export const ESP_SPI = 0;
export const ESP_SEQ = 4;
/** SPI + sequence number: all a translator needs, and what an ICMP error quotes (RFC 792). */
export const ESP_MIN_HDR = 8;
/** SPIs 1-255 are reserved by IANA and 0 means "no SA" (RFC 4303 §2.1). */
export const ESP_SPI_RESERVED_MAX = 255;

export const AH_SPI = 4;
export const AH_MIN_HDR = 12;
