/**
 * ICMP through NAPT: queries keyed by their identifier (RFC 5508 §3.1) and
 * errors with the quoted datagram translated along with the outer header,
 * both checksums fixed (RFC 5508 §3.2, REQ-3 to REQ-6). Errors quoting a
 * protocol a tracker owns (ESP, GRE) are matched by that tracker.
 */
import { checksum, read16, read32, sumBytes, update16, update32, write16 } from '../wire/checksum';
import {
  ICMP_CSUM, ICMP_ID, ICMP_OK, ICMP_QUOTE_MIN_L4, ICMP_TYPE, IcmpHeader, isIcmpError, isIcmpQueryReply, isIcmpQueryRequest,
} from '../wire/icmp';
import { IPV4_DST, IPV4_ERR_CHECKSUM, IPV4_OK, IPV4_SRC, PROTO_ICMP, PROTO_TCP, PROTO_UDP } from '../wire/ipv4';
import { TCP_CSUM, TCP_SEQ } from '../wire/tcp';
import { UDP_CSUM } from '../wire/udp';
import { Drop, Verdict } from '../core/verdict';
import { SF_GUARDED, SLOT_TCP, SLOT_UDP, SessionTable } from './sessions';
import { setAddress } from './rewrite';
import { Packet, TrackerRegistry } from './tracker';
import { Transport } from './transport';
import { BUDGET_REFUSED } from './forwards';

const TRANSLATED = Verdict.TRANSLATED;

export class IcmpNat {
  private readonly icmp = new IcmpHeader();

  constructor(
    private readonly table: SessionTable,
    private readonly transport: Transport,
    private readonly trackers: TrackerRegistry,
  ) {}

  /** LAN -> outside: an echo or timestamp request gets a public identifier; an error goes back to the remote it is about. */
  outbound(p: Packet): Verdict {
    const ip = p.ip;
    if (ip.isFragment) return Drop.ICMP_UNSUPPORTED;
    const c = this.icmp;
    if (c.parse(p.buf, ip.payloadOff, ip.payloadLen) !== ICMP_OK) return Drop.L4_TRUNCATED;
    if (sumBytes(p.buf, c.off, c.avail, 0) !== 0xffff) return Drop.L4_BAD_CHECKSUM;
    const type = c.type;
    if (isIcmpError(type)) {
      const r = this.outboundError(p);
      // The router's own error about a packet it forwarded for us (frag-needed on a narrower WAN link) is
      // addressed to the public address but leaves from its LAN address: it quotes our outbound packet.
      if (r !== Drop.ICMP_ERROR_NO_MAPPING) return r;
      const pubIdx = this.table.publicIndexOf(ip.dst);
      if (pubIdx < 0) return r;
      p.pubIdx = pubIdx;
      return this.inboundError(p);
    }
    if (!isIcmpQueryRequest(type)) return Drop.ICMP_UNSUPPORTED;
    const t = this.table;
    const now = p.now;
    const src = ip.src;
    const dst = ip.dst;
    const id = c.id;
    let s = t.findOut(PROTO_ICMP, src, id, dst, 0);
    if (s >= 0 && t.expiresOf(s) <= now) {
      t.removeSession(s);
      s = -1;
    }
    if (s < 0) {
      s = this.transport.createOut(PROTO_ICMP, src, id, dst, 0, 0, now, null);
      if (s < 0) return (-s - 1) as Verdict;
    }
    this.transport.refresh(s, false, 0, true, ip.totalLen, now);
    const pubId = t.pubPortOf(s);
    setAddress(p.buf, ip.off, IPV4_SRC, src, t.pubAddrOf(s));
    this.setId(p.buf, c.off, id, pubId);
    return TRANSLATED;
  }

  /** Outside -> public address: a query reply to its LAN host, an error to the host whose packet it quotes. */
  inbound(p: Packet): Verdict {
    const ip = p.ip;
    if (ip.isFragment) return Drop.ICMP_UNSUPPORTED;
    const c = this.icmp;
    if (c.parse(p.buf, ip.payloadOff, ip.payloadLen) !== ICMP_OK) return Drop.L4_TRUNCATED;
    const type = c.type;
    if (isIcmpError(type)) return this.inboundError(p);
    if (sumBytes(p.buf, c.off, c.avail, 0) !== 0xffff) return Drop.L4_BAD_CHECKSUM;
    if (!isIcmpQueryReply(type)) return Drop.NO_MAPPING;
    const t = this.table;
    const pubId = c.id;
    const s = this.transport.inboundSession(PROTO_ICMP, p.pubIdx, pubId, ip.src, 0, p.now);
    if (s < 0) return s === -1 ? Drop.FILTERED : s === BUDGET_REFUSED ? Drop.UNANSWERED_LIMIT : Drop.NO_MAPPING;
    this.transport.refresh(s, false, 0, false, ip.totalLen, p.now);
    setAddress(p.buf, ip.off, IPV4_DST, ip.dst, t.lanOf(s));
    this.setId(p.buf, c.off, pubId, t.lanPortOf(s));
    return TRANSLATED;
  }

  private setId(buf: Uint8Array, icmpOff: number, oldId: number, newId: number): void {
    write16(buf, icmpOff + ICMP_ID, newId);
    write16(buf, icmpOff + ICMP_CSUM, update16(read16(buf, icmpOff + ICMP_CSUM), oldId, newId));
  }

  /**
   * An error a LAN host sends about a packet it received from the outside
   * (RFC 5508 REQ-5): the embedded packet runs remote -> LAN host.
   */
  private outboundError(p: Packet): Verdict {
    const c = this.icmp;
    const inner = p.inner;
    if (inner.parse(p.buf, c.embeddedOff, c.embeddedLen, true, false) !== IPV4_OK) return Drop.ICMP_ERROR_MALFORMED;
    const innerProto = inner.proto;
    let tr = this.trackers.byProto[innerProto];
    if (tr === 0 && innerProto !== PROTO_TCP && innerProto !== PROTO_UDP) return Drop.ICMP_ERROR_NO_MAPPING;
    const ip = p.ip;
    const il4 = inner.payloadOff;
    if (il4 + ICMP_QUOTE_MIN_L4 > ip.off + ip.totalLen) return Drop.ICMP_ERROR_MALFORMED;
    if (tr === 0) tr = this.pairOwner(p.buf, innerProto, il4);
    const lan = inner.dst;
    const t = this.table;
    if (lan !== ip.src) return Drop.ICMP_ERROR_NO_MAPPING;
    if (tr !== 0) {
      const v = this.trackers.at(tr).icmpErrorOut(p);
      if (v !== TRANSLATED) return v;
      setAddress(p.buf, ip.off, IPV4_SRC, lan, p.publicAddr);
      this.rewriteEmbedded(p, IPV4_DST, lan, p.publicAddr, innerProto, -1, 0, 0);
      return TRANSLATED;
    }
    const rem = inner.src;
    const remPort = read16(p.buf, il4);
    const lanPort = read16(p.buf, il4 + 2);
    const s = t.findOut(innerProto, lan, lanPort, rem, remPort);
    if (s < 0) return Drop.ICMP_ERROR_NO_MAPPING;
    const pub = t.pubAddrOf(s);
    setAddress(p.buf, ip.off, IPV4_SRC, lan, pub);
    this.rewriteEmbedded(p, IPV4_DST, lan, pub, innerProto, 2, lanPort, t.pubPortOf(s));
    return TRANSLATED;
  }

  /**
   * An error from the outside about a packet we translated (RFC 5508 REQ-3,
   * REQ-4): the embedded packet runs public address -> remote. Both checksums
   * are verified first; the session's timer is left alone (REQ-6).
   */
  private inboundError(p: Packet): Verdict {
    const c = this.icmp;
    if (sumBytes(p.buf, c.off, c.avail, 0) !== 0xffff) return Drop.ICMP_ERROR_BAD_CHECKSUM;
    const perr = p.inner.parse(p.buf, c.embeddedOff, c.embeddedLen, true, false);
    if (perr === IPV4_ERR_CHECKSUM) return Drop.ICMP_ERROR_BAD_CHECKSUM;
    if (perr !== IPV4_OK) return Drop.ICMP_ERROR_MALFORMED;
    if (p.inner.payloadOff + ICMP_QUOTE_MIN_L4 > p.ip.off + p.ip.totalLen) return Drop.ICMP_ERROR_MALFORMED;
    const t = this.table;
    const inner = p.inner;
    const innerProto = inner.proto;
    const il4 = inner.payloadOff;
    const ip = p.ip;
    // The error may come from the remote or from any router on the way, so only the embedded packet is matched.
    const pubIdx = t.publicIndexOf(inner.src);
    if (pubIdx < 0) return Drop.ICMP_ERROR_NO_MAPPING;
    let tr = this.trackers.byProto[innerProto];
    if (tr === 0 && (innerProto === PROTO_TCP || innerProto === PROTO_UDP)) tr = this.pairOwner(p.buf, innerProto, il4);
    if (tr !== 0) {
      const v = this.trackers.at(tr).icmpErrorIn(p);
      if (v !== TRANSLATED) return v;
      const lan = p.to.addr[0];
      setAddress(p.buf, ip.off, IPV4_DST, ip.dst, lan);
      this.rewriteEmbedded(p, IPV4_SRC, inner.src, lan, innerProto, -1, 0, 0);
      return TRANSLATED;
    }
    let s: number;
    let pubPort: number;
    let portOff: number;
    if (innerProto === PROTO_TCP || innerProto === PROTO_UDP) {
      pubPort = read16(p.buf, il4);
      portOff = 0;
      s = t.findIn(innerProto, pubIdx, pubPort, inner.dst, read16(p.buf, il4 + 2));
      // A taken-over session only hears about segments of its own connection.
      if (s >= 0 && innerProto === PROTO_TCP && (t.flagsOf(s) & SF_GUARDED) !== 0 && !t.guardSent(s, read32(p.buf, il4 + TCP_SEQ))) {
        return Drop.STALE_SEGMENT;
      }
    } else if (innerProto === PROTO_ICMP && isIcmpQueryRequest(p.buf[il4 + ICMP_TYPE])) {
      pubPort = read16(p.buf, il4 + ICMP_ID);
      portOff = ICMP_ID;
      s = t.findIn(PROTO_ICMP, pubIdx, pubPort, inner.dst, 0);
    } else {
      return Drop.ICMP_ERROR_NO_MAPPING;
    }
    if (s < 0 || t.expiresOf(s) <= p.now) return Drop.ICMP_ERROR_NO_MAPPING;
    const lan = t.lanOf(s);
    setAddress(p.buf, ip.off, IPV4_DST, ip.dst, lan);
    this.rewriteEmbedded(p, IPV4_SRC, inner.src, lan, innerProto, portOff, pubPort, t.lanPortOf(s));
    return TRANSLATED;
  }

  /** The tracker owning the quoted TCP/UDP packet's port pair (ISAKMP 500 <-> 500), or 0. */
  private pairOwner(buf: Uint8Array, proto: number, il4: number): number {
    const sport = read16(buf, il4);
    return sport === read16(buf, il4 + 2) ? this.trackers.portPair[proto === PROTO_TCP ? SLOT_TCP : SLOT_UDP][sport] : 0;
  }

  /**
   * Rewrites the embedded packet of an ICMP error (one address, one port or
   * query ID unless portOff < 0), its IP header checksum and, where quoted, its transport
   * checksum; then recomputes the ICMP checksum over the whole message.
   */
  private rewriteEmbedded(
    p: Packet, innerAddrField: number, oldAddr: number, newAddr: number,
    innerProto: number, portOff: number, oldPort: number, newPort: number,
  ): void {
    const buf = p.buf;
    const inner = p.inner;
    const icmp = this.icmp.off;
    const end = p.ip.off + p.ip.totalLen;
    const il4 = inner.payloadOff;
    setAddress(buf, inner.off, innerAddrField, oldAddr, newAddr);
    if (portOff >= 0) write16(buf, il4 + portOff, newPort);
    if (innerProto === PROTO_UDP) {
      const c = read16(buf, il4 + UDP_CSUM);
      if (c !== 0) {
        let n = update16(update32(c, oldAddr, newAddr), oldPort, newPort);
        if (n === 0) n = 0xffff;
        write16(buf, il4 + UDP_CSUM, n);
      }
    } else if (innerProto === PROTO_TCP) {
      if (il4 + TCP_CSUM + 2 <= end) {
        write16(buf, il4 + TCP_CSUM, update16(update32(read16(buf, il4 + TCP_CSUM), oldAddr, newAddr), oldPort, newPort));
      }
    } else if (innerProto === PROTO_ICMP && il4 + ICMP_CSUM + 2 <= end) {
      write16(buf, il4 + ICMP_CSUM, update16(read16(buf, il4 + ICMP_CSUM), oldPort, newPort));
    }
    write16(buf, icmp + ICMP_CSUM, 0);
    write16(buf, icmp + ICMP_CSUM, checksum(buf, icmp, end - icmp, 0));
  }
}
