/**
 * Refusing a new flow visibly: when no mapping can be made for an outbound
 * packet (the table is full, the ports are exhausted, the LAN host is at
 * its limit), the packet is turned, in its own slot, into an ICMP
 * destination unreachable, code 13 "communication administratively
 * prohibited", back to its sender (RFC 5508 REQ-8 and §3.2.1; RFC 1812
 * §5.2.7.1). It quotes the IP header and the first 8 bytes after it (RFC
 * 792). Never about an ICMP error, a later fragment or a non-unicast
 * destination (RFC 1812 §4.3.2.7), and rate-limited by a token bucket
 * (RFC 1812 §4.3.2.8), like the kernel's icmp_msgs_per_sec and burst.
 */
import { checksum, write16, write32 } from '../wire/checksum';
import { ICMP_CODE, ICMP_CSUM, ICMP_DEST_UNREACH, ICMP_HDR, ICMP_TYPE, isIcmpError } from '../wire/icmp';
import {
  IPV4_CSUM, IPV4_DST, IPV4_FRAG, IPV4_ID, IPV4_MIN_HDR, IPV4_PROTO, IPV4_SRC, IPV4_TOTAL_LEN, IPV4_TTL, IPV4_VER_IHL, PROTO_ICMP,
} from '../wire/ipv4';

/** Code 13 of destination unreachable (RFC 1812 §5.2.7.1). */
export const ICMP_CODE_ADMIN_PROHIBITED = 13;
/** Quoted: the IP header and this many bytes of what follows (RFC 792). */
const QUOTE_L4 = 8;
/** ICMP errors per second and burst, as the kernel's net.ipv4.icmp_msgs_per_sec / icmp_msgs_burst. */
const RATE_PER_SECOND = 1000;
const BURST = 50;

export class Refusals {
  /** Refusals sent as ICMP. */
  sent = 0;
  /** Refusals not sent because of the rate limit. */
  limited = 0;
  private tokens = BURST;
  private stamp = 0;

  /** false: refused packets are only dropped (limits.refuse "drop"). */
  constructor(public icmp = true) {}

  /**
   * Rewrites the packet at `ipOff` (its vnet header of `vnetLen` bytes
   * before it) into the ICMP error from `from` and returns the new length
   * with the vnet header, or 0 when nothing is to be sent.
   */
  build(buf: Uint8Array, ipOff: number, vnetLen: number, hdrLen: number, totalLen: number, isLaterFragment: boolean,
    from: number, now: number): number {
    if (!this.icmp || isLaterFragment) return 0;
    const proto = buf[ipOff + IPV4_PROTO];
    if (proto === PROTO_ICMP && (hdrLen + ICMP_HDR > totalLen || isIcmpError(buf[ipOff + hdrLen + ICMP_TYPE]))) return 0;
    const dst = (buf[ipOff + IPV4_DST] >= 224) || buf[ipOff + IPV4_DST] === 0;
    if (dst) return 0;
    if (!this.take(now)) {
      this.limited++;
      return 0;
    }
    const quote = Math.min(totalLen, hdrLen + QUOTE_L4);
    const icmpOff = ipOff + IPV4_MIN_HDR;
    const len = IPV4_MIN_HDR + ICMP_HDR + quote;
    // The sender's address, before the quote moves over it.
    const sender = ((buf[ipOff + IPV4_SRC] << 24) | (buf[ipOff + IPV4_SRC + 1] << 16) | (buf[ipOff + IPV4_SRC + 2] << 8) |
      buf[ipOff + IPV4_SRC + 3]) | 0;
    buf.copyWithin(icmpOff + ICMP_HDR, ipOff, ipOff + quote);
    if (vnetLen > 0) buf.fill(0, ipOff - vnetLen, ipOff);
    buf[ipOff + IPV4_VER_IHL] = 0x45;
    buf[ipOff + 1] = 0;
    write16(buf, ipOff + IPV4_TOTAL_LEN, len);
    write16(buf, ipOff + IPV4_ID, 0);
    write16(buf, ipOff + IPV4_FRAG, 0);
    buf[ipOff + IPV4_TTL] = 64;
    buf[ipOff + IPV4_PROTO] = PROTO_ICMP;
    write32(buf, ipOff + IPV4_SRC, from);
    write32(buf, ipOff + IPV4_DST, sender);
    write16(buf, ipOff + IPV4_CSUM, 0);
    write16(buf, ipOff + IPV4_CSUM, checksum(buf, ipOff, IPV4_MIN_HDR, 0));
    buf[icmpOff + ICMP_TYPE] = ICMP_DEST_UNREACH;
    buf[icmpOff + ICMP_CODE] = ICMP_CODE_ADMIN_PROHIBITED;
    write16(buf, icmpOff + ICMP_CSUM, 0);
    write32(buf, icmpOff + 4, 0);
    write16(buf, icmpOff + ICMP_CSUM, checksum(buf, icmpOff, ICMP_HDR + quote, 0));
    this.sent++;
    return vnetLen + len;
  }

  private take(now: number): boolean {
    let t = this.tokens + ((now - this.stamp) * RATE_PER_SECOND) / 1000;
    if (t > BURST) t = BURST;
    this.stamp = now;
    if (t < 1) {
      this.tokens = t;
      return false;
    }
    this.tokens = t - 1;
    return true;
  }
}
