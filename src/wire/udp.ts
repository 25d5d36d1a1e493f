/** UDP header (RFC 768). Offsets from the start of the UDP header. */
export const UDP_SPORT = 0;
export const UDP_DPORT = 2;
export const UDP_LEN = 4;
export const UDP_CSUM = 6;
export const UDP_HDR = 8;
