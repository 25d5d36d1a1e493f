/**
 * TCP MSS clamping (RFC 879 §3, RFC 6691): lowers the MSS option of SYN and
 * SYN-ACK segments so neither end sends segments larger than a small-MTU WAN
 * link carries, where ICMP "fragmentation needed" is filtered on the path.
 * Runs on the packet path: no allocation.
 */
import { read16, update16, write16 } from '../wire/checksum';
import { TCP_FLAGS, TCP_MIN_HDR, TCP_OPT_END, TCP_OPT_MSS, TCP_OPT_NOP, TCP_SYN, tcpHeaderLen } from '../wire/tcp';

/** IPv4 (20) + TCP (20) headers without options: MSS = MTU - 40 (RFC 879 §3). */
export const MSS_OVERHEAD = 40;
const MSS_OPT_LEN = 4;

/** The clamp value for config `mssClamp`: 0 = off, 'auto' = TUN MTU - 40. */
export function mssClampValue(setting: null | 'auto' | number, tunMtu: number): number {
  if (setting === null) return 0;
  return setting === 'auto' ? tunMtu - MSS_OVERHEAD : setting;
}

/**
 * Clamps the MSS option of the TCP segment at `tcpOff` (`avail` bytes of
 * TCP header and payload present) to `maxMss` if it is a SYN carrying a
 * larger one. The checksum at `csumOff` is updated incrementally (RFC 1624);
 * a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM) holds only the
 * pseudo-header sum and is left alone. Returns whether the MSS was lowered.
 */
export function clampMss(buf: Uint8Array, tcpOff: number, avail: number, maxMss: number, csumOff: number, partial: boolean): boolean {
  if (avail < TCP_MIN_HDR || (buf[tcpOff + TCP_FLAGS] & TCP_SYN) === 0) return false;
  const hdrLen = tcpHeaderLen(buf, tcpOff);
  const end = tcpOff + (hdrLen < avail ? hdrLen : avail);
  let o = tcpOff + TCP_MIN_HDR;
  while (o < end) {
    const kind = buf[o];
    if (kind === TCP_OPT_END) return false;
    if (kind === TCP_OPT_NOP) { o++; continue; }
    if (o + 1 >= end) return false;
    const len = buf[o + 1];
    if (len < 2 || o + len > end) return false;
    if (kind === TCP_OPT_MSS) {
      if (len !== MSS_OPT_LEN) return false;
      const old = read16(buf, o + 2);
      if (old <= maxMss) return false;
      write16(buf, o + 2, maxMss);
      if (!partial) {
        // A field at an odd offset from the header start sums byte-swapped (RFC 1071 §2(B)).
        const odd = ((o + 2 - tcpOff) & 1) === 1;
        const c = read16(buf, csumOff);
        write16(buf, csumOff, odd ? update16(c, swap16(old), swap16(maxMss)) : update16(c, old, maxMss));
      }
      return true;
    }
    o += len;
  }
  return false;
}

function swap16(v: number): number {
  return ((v & 0xff) << 8) | (v >>> 8);
}
