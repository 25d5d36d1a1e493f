/** ICMPv4 (RFC 792). Offsets from the start of the ICMP header. */
export const ICMP_TYPE = 0;
export const ICMP_CODE = 1;
export const ICMP_CSUM = 2;
/** Query messages: identifier and sequence. */
export const ICMP_ID = 4;
export const ICMP_SEQ = 6;
/** Error messages: the offending datagram's IP header starts here. */
export const ICMP_ERR_EMBEDDED = 8;
export const ICMP_HDR = 8;
/** Fragmentation-needed carries the next-hop MTU here (RFC 1191 §4). */
export const ICMP_NEXT_HOP_MTU = 6;

export const ICMP_ECHO_REPLY = 0;
export const ICMP_DEST_UNREACH = 3;
export const ICMP_SOURCE_QUENCH = 4;
export const ICMP_ECHO_REQUEST = 8;
export const ICMP_TIME_EXCEEDED = 11;
export const ICMP_PARAM_PROBLEM = 12;
export const ICMP_TIMESTAMP = 13;
export const ICMP_TIMESTAMP_REPLY = 14;

export const ICMP_CODE_PORT_UNREACH = 3;
export const ICMP_CODE_FRAG_NEEDED = 4;

/** Query requests sent from the inside, keyed by their identifier (RFC 5508 §3.1). */
export function isIcmpQueryRequest(type: number): boolean {
  return type === ICMP_ECHO_REQUEST || type === ICMP_TIMESTAMP;
}

export function isIcmpQueryReply(type: number): boolean {
  return type === ICMP_ECHO_REPLY || type === ICMP_TIMESTAMP_REPLY;
}

/** Error messages that embed the offending datagram (RFC 5508 §3.2). */
export function isIcmpError(type: number): boolean {
  return type === ICMP_DEST_UNREACH || type === ICMP_TIME_EXCEEDED ||
    type === ICMP_PARAM_PROBLEM || type === ICMP_SOURCE_QUENCH;
}
