/** TCP header (RFC 9293 §3.1). Offsets from the start of the TCP header. */
export const TCP_SPORT = 0;
export const TCP_DPORT = 2;
export const TCP_SEQ = 4;
export const TCP_ACK = 8;
export const TCP_DATA_OFF = 12;
export const TCP_FLAGS = 13;
export const TCP_CSUM = 16;
export const TCP_MIN_HDR = 20;

export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_ACK_FLAG = 0x10;

export const TCP_OPT_END = 0;
export const TCP_OPT_NOP = 1;
export const TCP_OPT_MSS = 2;

/** Header length in bytes from the data-offset field. */
export function tcpHeaderLen(buf: Uint8Array, tcpOff: number): number {
  return (buf[tcpOff + TCP_DATA_OFF] >>> 4) << 2;
}
