/**
 * The translation step of the packet path: parse views -> look up state ->
 * translate -> checksum, for one packet at a time, in place, in the shared
 * arena. Pure: no I/O, no clock reads (the caller sets `now` per batch), no
 * allocation, no string keys.
 *
 * Direction is decided by addresses: a source inside a LAN prefix is
 * outbound; a destination equal to the public address is inbound.
 */
import {
  checksum, fold, partialUpdate32, pseudoHeaderSum, read16, read32, sumBytes, update16, update32, write16, write32,
} from '../wire/checksum';
import {
  IPV4_CSUM, IPV4_DST, IPV4_OK, IPV4_SRC, IPV4_TTL, Ipv4Header, PROTO_AH, PROTO_ESP, PROTO_GRE, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
  IPV4_ERR_CHECKSUM, IPV4_ERR_IHL, IPV4_ERR_TOTAL_LEN, IPV4_ERR_TRUNCATED, IPV4_ERR_VERSION,
} from '../wire/ipv4';
import { TCP_CSUM, TCP_DPORT, TCP_FLAGS, TCP_MIN_HDR, TCP_SPORT, tcpHeaderLen } from '../wire/tcp';
import { UDP_CSUM, UDP_DPORT, UDP_HDR, UDP_SPORT } from '../wire/udp';
import {
  ICMP_CSUM, ICMP_ERR_EMBEDDED, ICMP_HDR, ICMP_ID, ICMP_TYPE, isIcmpError, isIcmpQueryReply, isIcmpQueryRequest,
} from '../wire/icmp';
import { VNET_F_DATA_VALID, VNET_F_NEEDS_CSUM, VNET_FLAGS } from '../wire/vnet';
import { ESP_MIN_HDR, ESP_SPI } from '../wire/esp';
import { ISAKMP_HDR, ISAKMP_PORT } from '../wire/isakmp';
import { IpsecMasq } from '../helpers/ipsec/ipsec';
import { Drop, DropCounters } from '../core/verdict';
import { FragmentTracker } from './fragments';
import { Forwards, NO_FORWARD } from './forwards';
import { PptpCalls } from '../helpers/pptp/calls';
import { PptpControl } from '../helpers/pptp/control';
import { PPTP_PORT } from '../wire/pptp';
import { SLOT_ICMP, SessionTable, protoSlot } from './sessions';
import { tcpInitialState, tcpNextState, tcpTimeoutMs } from './tcp-tracker';
import { TxList } from '../core/tx-list';
import { clampMss } from './mss-clamp';

export interface NatTimers {
  tcpEstablishedMs: number;
  tcpTransitoryMs: number;
  udpMs: number;
  icmpMs: number;
  fragmentMs: number;
}

export interface NaptOptions {
  /** LAN prefixes as [network, mask] int32 pairs. */
  lanPrefixes: Array<[number, number]>;
  timers: NatTimers;
  /** RFC 4787 REQ-8: endpoint-independent filtering instead of address-and-port-dependent. */
  endpointIndependentFiltering: boolean;
  /** Bytes of virtio_net_hdr before each packet (0 or 10). */
  vnetLen: number;
}

/** Traffic counter indexes. */
export const T_PKTS_OUT = 0;
export const T_PKTS_IN = 1;
export const T_BYTES_OUT = 2;
export const T_BYTES_IN = 3;

/** Verdicts below zero: translated, or kept back until its first fragment arrives. */
const TRANSLATED = -1;
const HELD = -2;
/** Shared-address mode: the box's own ICMP, written back unchanged for the kernel to deliver locally. */
const TO_KERNEL = -3;

const IP_ERR_TO_DROP: number[] = [];
IP_ERR_TO_DROP[IPV4_ERR_TRUNCATED] = Drop.IP_TRUNCATED;
IP_ERR_TO_DROP[IPV4_ERR_VERSION] = Drop.IP_VERSION;
IP_ERR_TO_DROP[IPV4_ERR_IHL] = Drop.IP_BAD_IHL;
IP_ERR_TO_DROP[IPV4_ERR_TOTAL_LEN] = Drop.IP_BAD_TOTAL_LEN;
IP_ERR_TO_DROP[IPV4_ERR_CHECKSUM] = Drop.IP_BAD_CHECKSUM;

export class Napt {
  now = 0;
  /** Largest TCP MSS let through in SYN/SYN-ACK options; 0 = no clamping (config mssClamp). */
  mssClamp = 0;
  readonly drops = new DropCounters();
  readonly traffic = new Float64Array(4);
  /** IPsec masquerade (set by the daemon); null: ESP is an unknown protocol and UDP 500 plain NAPT. */
  ipsec: IpsecMasq | null = null;
  private readonly ip = new Ipv4Header();
  private readonly inner = new Ipv4Header();
  private readonly lanNet: Int32Array;
  private readonly lanMask: Int32Array;
  /** Forwards for servers on the LAN (set by the daemon), consulted when an inbound packet matches nothing. */
  forwards: Forwards | null = null;
  /** PPTP calls / GRE (set by the daemon); null: GRE is an unknown protocol. */
  gre: PptpCalls | null = null;
  /** PPTP control-channel inspection on TCP 1723 (set by the daemon together with `gre`). */
  pptp: PptpControl | null = null;
  /**
   * Shared-address mode (set by the daemon): the public address is also the
   * box's own, so inbound ICMP that belongs to no mapping goes to the kernel
   * (TO_KERNEL) instead of being dropped.
   */
  sharedAddress = false;

  constructor(
    readonly table: SessionTable,
    readonly frags: FragmentTracker,
    readonly arena: Uint8Array,
    private readonly opts: NaptOptions,
  ) {
    this.lanNet = Int32Array.from(opts.lanPrefixes.map((p) => p[0] & p[1]));
    this.lanMask = Int32Array.from(opts.lanPrefixes.map((p) => p[1]));
  }

  get publicAddr(): number { return this.table.publicAddr; }

  isLan(addr: number): boolean {
    for (let i = 0; i < this.lanNet.length; i++) if ((addr & this.lanMask[i]) === this.lanNet[i]) return true;
    return false;
  }

  /** Translates the packet at `off` (vnet header included) of `len` bytes and queues what is to be sent. */
  process(off: number, len: number, out: TxList): void {
    const buf = this.arena;
    const v = this.opts.vnetLen;
    if (len < v) { this.drops.counts[Drop.VNET_TRUNCATED]++; return; }
    const vflags = v > 0 ? buf[off + VNET_FLAGS] : 0;
    const ip = this.ip;
    const ipOff = off + v;
    const err = ip.parse(buf, ipOff, len - v, true, true);
    if (err !== IPV4_OK) { this.drops.counts[IP_ERR_TO_DROP[err]]++; return; }
    const sendLen = v + ip.totalLen;
    const src = ip.src;
    const dst = ip.dst;
    const outbound = this.isLan(src);
    let verdict: number;
    if (outbound) verdict = this.outbound(buf, ip, vflags, out);
    else if (dst === this.table.publicAddr) verdict = this.inbound(buf, ip, vflags, out);
    else verdict = Drop.NOT_OURS;
    if (verdict >= 0) { this.drops.counts[verdict]++; return; }
    if (verdict === HELD) return;
    if (verdict === TRANSLATED) {
      const dir = outbound ? T_PKTS_OUT : T_PKTS_IN;
      this.traffic[dir]++;
      this.traffic[dir + 2] += ip.totalLen;
    }
    this.restoreHop(buf, ipOff);
    out.push(off, sendLen);
  }

  /**
   * The kernel decremented the TTL when it forwarded the packet into the TUN
   * and will again when it forwards the translated packet out; give one back
   * so the router counts as a single hop (RFC 1812 §5.3.1).
   */
  private restoreHop(buf: Uint8Array, ipOff: number): void {
    const ttl = buf[ipOff + IPV4_TTL];
    if (ttl === 255) return;
    const oldWord = read16(buf, ipOff + IPV4_TTL);
    buf[ipOff + IPV4_TTL] = ttl + 1;
    write16(buf, ipOff + IPV4_CSUM, update16(read16(buf, ipOff + IPV4_CSUM), oldWord, oldWord + 0x100));
  }

  // ---- outbound ------------------------------------------------------------

  /** Returns TRANSLATED, HELD or a drop reason; a hairpinned packet also runs the inbound half. */
  private outbound(buf: Uint8Array, ip: Ipv4Header, vflags: number, out: TxList): number {
    if (ip.isLaterFragment) return this.laterFragment(buf, ip);
    switch (ip.proto) {
      case PROTO_TCP:
      case PROTO_UDP: {
        if (this.isIsakmp(buf, ip)) return this.outboundIsakmp(buf, ip, vflags, out);
        const lanSrc = ip.src;
        const dst = ip.dst;
        let r = this.outboundTransport(buf, ip, vflags);
        if (r !== TRANSLATED) return r;
        // Hairpinning (RFC 4787 REQ-9, RFC 5382 REQ-8): a LAN host addressed
        // another one's public endpoint; the inbound half runs on the same packet.
        if (dst === this.table.publicAddr) r = this.inboundTransport(buf, ip, vflags);
        if (r === TRANSLATED && ip.isFragment) this.rememberAndRelease(buf, lanSrc, dst, ip.proto, ip.id, ip.src, ip.dst, out);
        return r;
      }
      case PROTO_ICMP:
        return this.outboundIcmp(buf, ip);
      case PROTO_ESP:
        return this.outboundEsp(buf, ip, out);
      case PROTO_GRE:
        return this.outboundGre(buf, ip, out);
      case PROTO_AH:
        return this.refuseAh(ip);
      default:
        return Drop.UNKNOWN_PROTOCOL;
    }
  }

  private outboundTransport(buf: Uint8Array, ip: Ipv4Header, vflags: number): number {
    const proto = ip.proto;
    const l4 = ip.payloadOff;
    const isTcp = proto === PROTO_TCP;
    const bad = this.checkTransport(buf, ip, vflags, isTcp ? TCP_MIN_HDR : UDP_HDR);
    if (bad !== TRANSLATED) return bad;
    const csumOff = l4 + (isTcp ? TCP_CSUM : UDP_CSUM);
    const partial = (vflags & VNET_F_NEEDS_CSUM) !== 0;
    const src = ip.src;
    const dst = ip.dst;
    const sport = read16(buf, l4 + (isTcp ? TCP_SPORT : UDP_SPORT));
    const dport = read16(buf, l4 + (isTcp ? TCP_DPORT : UDP_DPORT));
    const t = this.table;
    const now = this.now;
    const flags = isTcp ? buf[l4 + TCP_FLAGS] : 0;
    let s = t.findOut(proto, src, sport, dst, dport);
    if (s >= 0 && t.sExpires[s] <= now) {
      t.removeSession(s);
      s = -1;
    }
    if (s < 0) {
      const state = isTcp ? tcpInitialState(flags) : 0;
      s = t.createOut(proto, src, sport, dst, dport, now, state, now);
      if (s < 0) return s === -1 ? Drop.TABLE_FULL : Drop.PORTS_EXHAUSTED;
    }
    this.refresh(s, isTcp, flags, true, ip.totalLen);
    const pubPort = t.mPubPort[t.sMap[s]];
    if (isTcp && this.mssClamp > 0) clampMss(buf, l4, ip.payloadLen, this.mssClamp, csumOff, partial);
    this.rewriteTransport(buf, ip.off, IPV4_SRC, src, t.publicAddr, l4 + (isTcp ? TCP_SPORT : UDP_SPORT), sport, pubPort, csumOff, partial, !isTcp);
    if (isTcp && this.pptp !== null && (dport === PPTP_PORT || sport === PPTP_PORT) && !ip.isFragment) {
      return this.pptp.segment(buf, l4, ip.payloadLen, s, true, partial, now);
    }
    return TRANSLATED;
  }

  /** Updates TCP state, expiry and counters of a session for a packet in one direction. */
  private refresh(s: number, isTcp: boolean, flags: number, outbound: boolean, bytes: number): void {
    const t = this.table;
    const timers = this.opts.timers;
    const now = this.now;
    let timeout: number;
    if (isTcp) {
      const st = tcpNextState(t.sState[s], flags, outbound);
      t.sState[s] = st;
      timeout = tcpTimeoutMs(st, timers.tcpEstablishedMs, timers.tcpTransitoryMs);
    } else {
      timeout = t.mProto[t.sMap[s]] === PROTO_ICMP ? timers.icmpMs : timers.udpMs;
    }
    t.sExpires[s] = now + timeout;
    t.sLastSeen[s] = now;
    if (outbound) {
      t.sPktsOut[s]++;
      t.sBytesOut[s] += bytes;
    } else {
      t.sPktsIn[s]++;
      t.sBytesIn[s] += bytes;
    }
  }

  private outboundIcmp(buf: Uint8Array, ip: Ipv4Header): number {
    if (ip.isFragment) return Drop.ICMP_UNSUPPORTED;
    const l4 = ip.payloadOff;
    if (ip.payloadLen < ICMP_HDR) return Drop.L4_TRUNCATED;
    if (sumBytes(buf, l4, ip.payloadLen, 0) !== 0xffff) return Drop.L4_BAD_CHECKSUM;
    const type = buf[l4 + ICMP_TYPE];
    if (isIcmpError(type)) {
      const r = this.outboundIcmpError(buf, ip);
      // The router's own error about a packet it forwarded for us (frag-needed on a narrower WAN link) is
      // addressed to the public address but leaves from its LAN address: it quotes our outbound packet.
      return r === Drop.ICMP_ERROR_NO_MAPPING && ip.dst === this.table.publicAddr ? this.inboundIcmpError(buf, ip) : r;
    }
    if (!isIcmpQueryRequest(type)) return Drop.ICMP_UNSUPPORTED;
    const t = this.table;
    const now = this.now;
    const src = ip.src;
    const dst = ip.dst;
    const id = read16(buf, l4 + ICMP_ID);
    let s = t.findOut(PROTO_ICMP, src, id, dst, 0);
    if (s >= 0 && t.sExpires[s] <= now) {
      t.removeSession(s);
      s = -1;
    }
    if (s < 0) {
      s = t.createOut(PROTO_ICMP, src, id, dst, 0, now, 0, now);
      if (s < 0) return s === -1 ? Drop.TABLE_FULL : Drop.PORTS_EXHAUSTED;
    }
    this.refresh(s, false, 0, true, ip.totalLen);
    const pubId = t.mPubPort[t.sMap[s]];
    this.setAddress(buf, ip.off, IPV4_SRC, src, t.publicAddr);
    write16(buf, l4 + ICMP_ID, pubId);
    write16(buf, l4 + ICMP_CSUM, update16(read16(buf, l4 + ICMP_CSUM), id, pubId));
    return TRANSLATED;
  }

  /**
   * An error a LAN host sends about a packet it received from the outside
   * (RFC 5508 REQ-5): the embedded packet runs remote -> LAN host.
   */
  private outboundIcmpError(buf: Uint8Array, ip: Ipv4Header): number {
    const icmp = ip.payloadOff;
    const inner = this.inner;
    if (inner.parse(buf, icmp + ICMP_ERR_EMBEDDED, ip.payloadLen - ICMP_ERR_EMBEDDED, true, false) !== IPV4_OK) {
      return Drop.ICMP_ERROR_MALFORMED;
    }
    const innerProto = inner.proto;
    const il4 = inner.payloadOff;
    if (innerProto !== PROTO_TCP && innerProto !== PROTO_UDP) return Drop.ICMP_ERROR_NO_MAPPING;
    if (il4 + 8 > ip.off + ip.totalLen) return Drop.ICMP_ERROR_MALFORMED;
    const rem = inner.src;
    const lan = inner.dst;
    const remPort = read16(buf, il4);
    const lanPort = read16(buf, il4 + 2);
    const t = this.table;
    const s = t.findOut(innerProto, lan, lanPort, rem, remPort);
    if (s < 0 || lan !== ip.src) return Drop.ICMP_ERROR_NO_MAPPING;
    const pubPort = t.mPubPort[t.sMap[s]];
    this.setAddress(buf, ip.off, IPV4_SRC, lan, t.publicAddr);
    this.rewriteEmbedded(buf, ip, IPV4_DST, lan, t.publicAddr, innerProto, 2, lanPort, pubPort);
    return TRANSLATED;
  }

  // ---- inbound -------------------------------------------------------------

  private inbound(buf: Uint8Array, ip: Ipv4Header, vflags: number, out: TxList): number {
    if (ip.isLaterFragment) return this.laterFragment(buf, ip);
    switch (ip.proto) {
      case PROTO_TCP:
      case PROTO_UDP: {
        if (this.isIsakmp(buf, ip)) return this.inboundIsakmp(buf, ip, vflags, out);
        const publicDst = ip.dst;
        const r = this.inboundTransport(buf, ip, vflags);
        if (r === TRANSLATED && ip.isFragment) this.rememberAndRelease(buf, ip.src, publicDst, ip.proto, ip.id, ip.src, ip.dst, out);
        return r;
      }
      case PROTO_ICMP:
        return this.ownIcmp(this.inboundIcmp(buf, ip), buf, ip, out);
      case PROTO_ESP:
        return this.inboundEsp(buf, ip, out);
      case PROTO_GRE:
        return this.inboundGre(buf, ip, out);
      case PROTO_AH:
        return this.refuseAh(ip);
      default:
        return Drop.UNKNOWN_PROTOCOL;
    }
  }

  private inboundTransport(buf: Uint8Array, ip: Ipv4Header, vflags: number): number {
    const proto = ip.proto;
    const l4 = ip.payloadOff;
    const isTcp = proto === PROTO_TCP;
    const bad = this.checkTransport(buf, ip, vflags, isTcp ? TCP_MIN_HDR : UDP_HDR);
    if (bad !== TRANSLATED) return bad;
    const csumOff = l4 + (isTcp ? TCP_CSUM : UDP_CSUM);
    const partial = (vflags & VNET_F_NEEDS_CSUM) !== 0;
    const sport = read16(buf, l4 + (isTcp ? TCP_SPORT : UDP_SPORT));
    const dport = read16(buf, l4 + (isTcp ? TCP_DPORT : UDP_DPORT));
    const t = this.table;
    const slot = protoSlot(proto);
    const m = t.mappingOfPort(slot, dport);
    let s = m < 0 ? -2 : this.inboundSession(m, slot, dport, ip.src, sport);
    // A forward (spec §6) serves what no mapping or session accepts.
    if (s < 0 && this.forwards !== null) {
      const f = this.forwards.inbound(proto, dport, ip.src, sport, this.now);
      if (f >= 0) s = f;
    }
    if (s < 0) return s === -1 ? Drop.FILTERED : Drop.NO_MAPPING;
    const mm = t.sMap[s];
    this.refresh(s, isTcp, isTcp ? buf[l4 + TCP_FLAGS] : 0, false, ip.totalLen);
    if (isTcp && this.mssClamp > 0) clampMss(buf, l4, ip.payloadLen, this.mssClamp, csumOff, partial);
    this.rewriteTransport(buf, ip.off, IPV4_DST, ip.dst, t.mLan[mm], l4 + (isTcp ? TCP_DPORT : UDP_DPORT), dport, t.mLanPort[mm], csumOff, partial, !isTcp);
    if (isTcp && this.pptp !== null && (sport === PPTP_PORT || dport === PPTP_PORT) && !ip.isFragment) {
      return this.pptp.segment(buf, l4, ip.payloadLen, s, false, partial, this.now);
    }
    return TRANSLATED;
  }

  /**
   * The session an inbound packet belongs to: an existing one, or with
   * endpoint-independent filtering a new one under the mapping.
   * Returns -1 when filtered, -2 when the mapping is gone or the table is full.
   */
  private inboundSession(m: number, slot: number, pubPort: number, rem: number, remPort: number): number {
    const t = this.table;
    const now = this.now;
    let s = t.findIn(m, rem, remPort);
    if (s >= 0 && t.sExpires[s] <= now) {
      t.removeSession(s);
      s = -1;
      m = t.mappingOfPort(slot, pubPort);
      if (m < 0) return -2;
    }
    if (s >= 0) return s;
    if (!this.opts.endpointIndependentFiltering) return -1;
    s = t.createSession(m, rem, remPort, now, 0, now);
    return s < 0 ? -2 : s;
  }

  private inboundIcmp(buf: Uint8Array, ip: Ipv4Header): number {
    if (ip.isFragment) return Drop.ICMP_UNSUPPORTED;
    const l4 = ip.payloadOff;
    if (ip.payloadLen < ICMP_HDR) return Drop.L4_TRUNCATED;
    const type = buf[l4 + ICMP_TYPE];
    if (isIcmpError(type)) return this.inboundIcmpError(buf, ip);
    if (sumBytes(buf, l4, ip.payloadLen, 0) !== 0xffff) return Drop.L4_BAD_CHECKSUM;
    if (!isIcmpQueryReply(type)) return Drop.NO_MAPPING;
    const t = this.table;
    const pubId = read16(buf, l4 + ICMP_ID);
    const m = t.mappingOfPort(SLOT_ICMP, pubId);
    if (m < 0) return Drop.NO_MAPPING;
    const s = this.inboundSession(m, SLOT_ICMP, pubId, ip.src, 0);
    if (s < 0) return s === -1 ? Drop.FILTERED : Drop.NO_MAPPING;
    const mm = t.sMap[s];
    this.refresh(s, false, 0, false, ip.totalLen);
    const lanId = t.mLanPort[mm];
    this.setAddress(buf, ip.off, IPV4_DST, ip.dst, t.mLan[mm]);
    write16(buf, l4 + ICMP_ID, lanId);
    write16(buf, l4 + ICMP_CSUM, update16(read16(buf, l4 + ICMP_CSUM), pubId, lanId));
    return TRANSLATED;
  }

  /**
   * Shared-address mode: inbound ICMP that matches no session (echo requests
   * to the box, replies to its own pings, errors about its own traffic,
   * fragmented ICMP) is the box's, so it goes back to the kernel unchanged;
   * later fragments follow the first. Mapped traffic keeps RFC 5508 handling.
   * Dedicated mode drops it: nothing else owns that address.
   */
  private ownIcmp(verdict: number, buf: Uint8Array, ip: Ipv4Header, out: TxList): number {
    if (!this.sharedAddress || (verdict !== Drop.NO_MAPPING && verdict !== Drop.FILTERED &&
      verdict !== Drop.ICMP_ERROR_NO_MAPPING && verdict !== Drop.ICMP_UNSUPPORTED)) return verdict;
    if (ip.isFragment) this.rememberAndRelease(buf, ip.src, ip.dst, PROTO_ICMP, ip.id, ip.src, ip.dst, out);
    return TO_KERNEL;
  }

  /**
   * An error from the outside about a packet we translated (RFC 5508 REQ-3,
   * REQ-4): the embedded packet runs public address -> remote. Both checksums
   * are verified first; the session's timer is left alone (REQ-6).
   */
  private inboundIcmpError(buf: Uint8Array, ip: Ipv4Header): number {
    const icmp = ip.payloadOff;
    if (sumBytes(buf, icmp, ip.payloadLen, 0) !== 0xffff) return Drop.ICMP_ERROR_BAD_CHECKSUM;
    const inner = this.inner;
    const perr = inner.parse(buf, icmp + ICMP_ERR_EMBEDDED, ip.payloadLen - ICMP_ERR_EMBEDDED, true, false);
    if (perr === IPV4_ERR_CHECKSUM) return Drop.ICMP_ERROR_BAD_CHECKSUM;
    if (perr !== IPV4_OK) return Drop.ICMP_ERROR_MALFORMED;
    const t = this.table;
    const innerProto = inner.proto;
    const il4 = inner.payloadOff;
    if (il4 + 8 > ip.off + ip.totalLen) return Drop.ICMP_ERROR_MALFORMED;
    // The error may come from the remote or from any router on the way, so only the embedded packet is matched.
    if (inner.src !== t.publicAddr) return Drop.ICMP_ERROR_NO_MAPPING;
    if (innerProto === PROTO_ESP && this.ipsec !== null) return this.inboundIcmpErrorEsp(buf, ip);
    if (innerProto === PROTO_GRE && this.gre !== null) return this.inboundIcmpErrorGre(buf, ip);
    let s: number;
    let pubPort: number;
    let portOff: number;
    if (innerProto === PROTO_TCP || innerProto === PROTO_UDP) {
      pubPort = read16(buf, il4);
      portOff = 0;
      const m = t.mappingOfPort(protoSlot(innerProto), pubPort);
      s = m < 0 ? -1 : t.findIn(m, inner.dst, read16(buf, il4 + 2));
    } else if (innerProto === PROTO_ICMP && isIcmpQueryRequest(buf[il4 + ICMP_TYPE])) {
      pubPort = read16(buf, il4 + ICMP_ID);
      portOff = ICMP_ID;
      const m = t.mappingOfPort(SLOT_ICMP, pubPort);
      s = m < 0 ? -1 : t.findIn(m, inner.dst, 0);
    } else {
      return Drop.ICMP_ERROR_NO_MAPPING;
    }
    if (s < 0 || t.sExpires[s] <= this.now) return Drop.ICMP_ERROR_NO_MAPPING;
    const m = t.sMap[s];
    const lan = t.mLan[m];
    this.setAddress(buf, ip.off, IPV4_DST, ip.dst, lan);
    this.rewriteEmbedded(buf, ip, IPV4_SRC, inner.src, lan, innerProto, portOff, pubPort, t.mLanPort[m]);
    return TRANSLATED;
  }

  // ---- IPsec (vpn-masquerade-spec §3, §4) -----------------------------------

  /** UDP 500 -> 500 is ISAKMP masquerade (Rule I-1); any other port pair is plain NAPT (§9.13). */
  private isIsakmp(buf: Uint8Array, ip: Ipv4Header): boolean {
    const l4 = ip.payloadOff;
    return this.ipsec !== null && ip.proto === PROTO_UDP && ip.payloadLen >= UDP_HDR &&
      read16(buf, l4 + UDP_SPORT) === ISAKMP_PORT && read16(buf, l4 + UDP_DPORT) === ISAKMP_PORT;
  }

  /** L:500 -> R:500 leaves as P:500 -> R:500, demultiplexed later by cookie (Rule I-1, I-2). */
  private outboundIsakmp(buf: Uint8Array, ip: Ipv4Header, vflags: number, out: TxList): number {
    const c = this.checkTransport(buf, ip, vflags, UDP_HDR + ISAKMP_HDR);
    if (c !== TRANSLATED) return c;
    const l4 = ip.payloadOff;
    const lan = ip.src;
    const pub = this.table.publicAddr;
    const r = (this.ipsec as IpsecMasq).outIsakmp(lan, ip.dst, buf, l4 + UDP_HDR, this.now);
    if (r !== TRANSLATED) return r;
    const partial = (vflags & VNET_F_NEEDS_CSUM) !== 0;
    this.rewriteTransport(buf, ip.off, IPV4_SRC, lan, pub, l4 + UDP_SPORT, ISAKMP_PORT, ISAKMP_PORT, l4 + UDP_CSUM, partial, true);
    if (ip.isFragment) this.rememberAndRelease(buf, lan, ip.dst, PROTO_UDP, ip.id, pub, ip.dst, out);
    return TRANSLATED;
  }

  private inboundIsakmp(buf: Uint8Array, ip: Ipv4Header, vflags: number, out: TxList): number {
    const c = this.checkTransport(buf, ip, vflags, UDP_HDR + ISAKMP_HDR);
    if (c !== TRANSLATED) return c;
    const ipsec = this.ipsec as IpsecMasq;
    const server = this.forwards === null ? NO_FORWARD : this.forwards.isakmpServer();
    const n = ipsec.inIsakmp(ip.src, buf, ip.payloadOff + UDP_HDR, this.now, server);
    if (n === 0) return ipsec.lastDrop;
    this.deliver(buf, ip, n, (vflags & VNET_F_NEEDS_CSUM) !== 0, out);
    return TRANSLATED;
  }

  private outboundEsp(buf: Uint8Array, ip: Ipv4Header, out: TxList): number {
    const ipsec = this.ipsec;
    if (ipsec === null) return Drop.UNKNOWN_PROTOCOL;
    if (ip.payloadLen < ESP_MIN_HDR) return Drop.L4_TRUNCATED;
    const lan = ip.src;
    const pub = this.table.publicAddr;
    const r = ipsec.outEsp(lan, ip.dst, read32(buf, ip.payloadOff + ESP_SPI), this.now);
    if (r !== TRANSLATED) return r;
    this.setAddress(buf, ip.off, IPV4_SRC, lan, pub);
    if (ip.isFragment) this.rememberAndRelease(buf, lan, ip.dst, PROTO_ESP, ip.id, pub, ip.dst, out);
    return TRANSLATED;
  }

  private inboundEsp(buf: Uint8Array, ip: Ipv4Header, out: TxList): number {
    const ipsec = this.ipsec;
    if (ipsec === null) return Drop.UNKNOWN_PROTOCOL;
    if (ip.payloadLen < ESP_MIN_HDR) return Drop.L4_TRUNCATED;
    const forward = this.forwards === null ? NO_FORWARD : this.forwards.protoForward(PROTO_ESP);
    const n = ipsec.inEsp(ip.src, read32(buf, ip.payloadOff + ESP_SPI), this.now, forward);
    if (n === 0) return ipsec.lastDrop;
    this.deliver(buf, ip, n, false, out);
    return TRANSLATED;
  }

  /**
   * Sends an inbound ESP or ISAKMP packet to ipsec.targets[0..n): copies to
   * targets 1.. go out from borrowed hold slots (guessing, spec §4.3 step 4),
   * the packet itself to target 0. Later fragments follow target 0.
   */
  private deliver(buf: Uint8Array, ip: Ipv4Header, n: number, partial: boolean, out: TxList): void {
    const targets = (this.ipsec as IpsecMasq).targets;
    const f = this.frags;
    const v = this.opts.vnetLen;
    const len = v + ip.totalLen;
    const pub = ip.dst;
    for (let i = 1; i < n; i++) {
      const h = f.borrow(buf, ip.off - v, len);
      if (h < 0) {
        this.drops.counts[Drop.FRAGMENT_HOLD_FULL]++;
        break;
      }
      const copy = f.heldOffset(h);
      this.retarget(buf, copy + v, copy + v + ip.hdrLen, ip.proto, pub, targets[i], partial);
      this.restoreHop(buf, copy + v);
      out.push(copy, len);
    }
    this.retarget(buf, ip.off, ip.payloadOff, ip.proto, pub, targets[0], partial);
    if (ip.isFragment) this.rememberAndRelease(buf, ip.src, pub, ip.proto, ip.id, ip.src, targets[0], out);
  }

  /** Rewrites the destination of an inbound ESP or ISAKMP packet (and the UDP checksum; the port stays 500). */
  private retarget(buf: Uint8Array, ipOff: number, l4: number, proto: number, pub: number, lan: number, partial: boolean): void {
    if (proto === PROTO_UDP) {
      this.rewriteTransport(buf, ipOff, IPV4_DST, pub, lan, l4 + UDP_DPORT, ISAKMP_PORT, ISAKMP_PORT, l4 + UDP_CSUM, partial, true);
    } else {
      this.setAddress(buf, ipOff, IPV4_DST, pub, lan);
    }
  }

  /** An ICMP error quoting our outbound ESP (inner P -> R, SPI = out-SPI) goes back to its sender (spec §9.14). */
  private inboundIcmpErrorEsp(buf: Uint8Array, ip: Ipv4Header): number {
    const inner = this.inner;
    const ipsec = this.ipsec as IpsecMasq;
    const e = ipsec.espByOutSpi(inner.dst, read32(buf, inner.payloadOff + ESP_SPI), this.now);
    if (e < 0) return Drop.ICMP_ERROR_NO_MAPPING;
    const lan = ipsec.eLan[e];
    this.setAddress(buf, ip.off, IPV4_DST, ip.dst, lan);
    this.rewriteEmbedded(buf, ip, IPV4_SRC, inner.src, lan, PROTO_ESP, -1, 0, 0);
    return TRANSLATED;
  }

  /** AH signs the addresses, so it can never be translated (spec §4.5); logged once per flow. */
  private refuseAh(ip: Ipv4Header): number {
    if (this.ipsec !== null) this.ipsec.ahRefused(ip.src, ip.dst);
    return Drop.AH_REFUSED;
  }

  // ---- PPTP GRE (vpn-masquerade-spec §5.3) ----------------------------------

  /** Outbound GRE: only the source address changes (the Call ID is the remote's). */
  private outboundGre(buf: Uint8Array, ip: Ipv4Header, out: TxList): number {
    const gre = this.gre;
    if (gre === null) return Drop.UNKNOWN_PROTOCOL;
    const lan = ip.src;
    const pub = this.table.publicAddr;
    const r = gre.outbound(buf, ip.payloadOff, ip.payloadLen, lan, ip.dst, this.now);
    if (r !== TRANSLATED) return r;
    this.setAddress(buf, ip.off, IPV4_SRC, lan, pub);
    if (ip.isFragment) this.rememberAndRelease(buf, lan, ip.dst, PROTO_GRE, ip.id, pub, ip.dst, out);
    return TRANSLATED;
  }

  /** Inbound GRE: the public Call ID leads to the LAN host, whose own Call ID gre.inbound wrote back. */
  private inboundGre(buf: Uint8Array, ip: Ipv4Header, out: TxList): number {
    const gre = this.gre;
    if (gre === null) return Drop.UNKNOWN_PROTOCOL;
    const r = gre.inbound(buf, ip.payloadOff, ip.payloadLen, ip.src, this.now);
    if (r !== TRANSLATED) return r;
    const pub = ip.dst;
    this.setAddress(buf, ip.off, IPV4_DST, pub, gre.resultAddr);
    if (ip.isFragment) this.rememberAndRelease(buf, ip.src, pub, PROTO_GRE, ip.id, ip.src, gre.resultAddr, out);
    return TRANSLATED;
  }

  /** An ICMP error quoting our outbound GRE (inner P -> R, Call ID = R's): find the call by (R, Call ID) (spec §9.14). */
  private inboundIcmpErrorGre(buf: Uint8Array, ip: Ipv4Header): number {
    const inner = this.inner;
    const gre = this.gre as PptpCalls;
    if (!gre.icmpTarget(buf, inner.payloadOff, inner.dst)) return Drop.ICMP_ERROR_NO_MAPPING;
    const lan = gre.resultAddr;
    this.setAddress(buf, ip.off, IPV4_DST, ip.dst, lan);
    this.rewriteEmbedded(buf, ip, IPV4_SRC, inner.src, lan, PROTO_GRE, -1, 0, 0);
    return TRANSLATED;
  }

  // ---- fragments -----------------------------------------------------------

  /** A fragment without transport header: follow its datagram's translation, or hold it until the first fragment comes. */
  private laterFragment(buf: Uint8Array, ip: Ipv4Header): number {
    const f = this.frags;
    const src = ip.src;
    const dst = ip.dst;
    const key = FragmentTracker.key(ip.proto, ip.id);
    const d = f.find(src, dst, key, this.now);
    if (d < 0) {
      const len = this.opts.vnetLen + ip.totalLen;
      if (len > f.holdSlotSize) return Drop.FRAGMENT_TOO_BIG;
      const held = f.hold(this.arena, ip.off - this.opts.vnetLen, len, src, dst, key, this.now + this.opts.timers.fragmentMs);
      return held ? HELD : Drop.FRAGMENT_HOLD_FULL;
    }
    this.setAddresses(buf, ip.off, src, dst, f.dNewSrc[d], f.dNewDst[d]);
    return TRANSLATED;
  }

  /**
   * After translating a first fragment: remember the datagram, keyed by the
   * addresses its later fragments carry and with the addresses they leave
   * with, and release those that came early.
   */
  private rememberAndRelease(buf: Uint8Array, src: number, dst: number, proto: number, id: number, newSrc: number, newDst: number, out: TxList): void {
    const f = this.frags;
    const key = FragmentTracker.key(proto, id);
    f.remember(src, dst, key, newSrc, newDst, this.now + this.opts.timers.fragmentMs);
    if (f.heldCount === 0) return;
    const v = this.opts.vnetLen;
    for (let h = f.takeHeld(src, dst, key, 0); h >= 0; h = f.takeHeld(src, dst, key, h + 1)) {
      const hOff = f.heldOffset(h);
      const ipOff = hOff + v;
      this.setAddresses(buf, ipOff, src, dst, newSrc, newDst);
      this.restoreHop(buf, ipOff);
      if (!out.push(hOff, f.heldLength(h))) this.drops.counts[Drop.FRAGMENT_HOLD_FULL]++;
    }
  }

  // ---- rewriting helpers ---------------------------------------------------

  /** Sets source and destination (each only if it changes) with the header checksum. */
  private setAddresses(buf: Uint8Array, ipOff: number, src: number, dst: number, newSrc: number, newDst: number): void {
    if (newSrc !== src) this.setAddress(buf, ipOff, IPV4_SRC, src, newSrc);
    if (newDst !== dst) this.setAddress(buf, ipOff, IPV4_DST, dst, newDst);
  }

  /** Replaces an IPv4 address field and updates the header checksum (RFC 1624). */
  private setAddress(buf: Uint8Array, ipOff: number, field: number, oldAddr: number, newAddr: number): void {
    write32(buf, ipOff + field, newAddr);
    write16(buf, ipOff + IPV4_CSUM, update32(read16(buf, ipOff + IPV4_CSUM), oldAddr, newAddr));
  }

  /**
   * Rewrites one address and one port of a TCP or UDP packet and its
   * checksums. With a partial checksum only the address (pseudo-header) part
   * is applied, uncomplemented; a UDP checksum of 0 means "none" and stays 0,
   * and a computed 0 is sent as 0xffff (RFC 768).
   */
  private rewriteTransport(
    buf: Uint8Array, ipOff: number, addrField: number, oldAddr: number, newAddr: number,
    portOff: number, oldPort: number, newPort: number, csumOff: number, partial: boolean, isUdp: boolean,
  ): void {
    this.setAddress(buf, ipOff, addrField, oldAddr, newAddr);
    write16(buf, portOff, newPort);
    const old = read16(buf, csumOff);
    let c: number;
    if (partial) {
      c = partialUpdate32(old, oldAddr, newAddr);
    } else {
      if (isUdp && old === 0) return;
      c = update16(update32(old, oldAddr, newAddr), oldPort, newPort);
      if (isUdp && c === 0) c = 0xffff;
    }
    write16(buf, csumOff, c);
  }

  /**
   * Rewrites the embedded packet of an ICMP error (one address, one port or
   * query ID unless portOff < 0), its IP header checksum and, where quoted, its transport
   * checksum; then recomputes the ICMP checksum over the whole message.
   */
  private rewriteEmbedded(
    buf: Uint8Array, ip: Ipv4Header, innerAddrField: number, oldAddr: number, newAddr: number,
    innerProto: number, portOff: number, oldPort: number, newPort: number,
  ): void {
    const inner = this.inner;
    const icmp = ip.payloadOff;
    const end = ip.off + ip.totalLen;
    const il4 = inner.payloadOff;
    this.setAddress(buf, inner.off, innerAddrField, oldAddr, newAddr);
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

  /** The TCP data offset is at least 5 words and, unless the datagram is fragmented, inside the packet (RFC 9293 §3.1). */
  /**
   * Length and checksum checks every TCP and UDP packet gets, whichever path
   * translates it: at least `minLen` bytes of transport header (and a sane TCP
   * data offset); the L4 checksum is verified only where the kernel neither
   * verified it (DATA_VALID) nor left it to be finished (NEEDS_CSUM), and
   * never on fragments. Returns TRANSLATED when the packet may go on, else a
   * drop reason.
   */
  private checkTransport(buf: Uint8Array, ip: Ipv4Header, vflags: number, minLen: number): number {
    const isTcp = ip.proto === PROTO_TCP;
    if (ip.payloadLen < minLen || (isTcp && !this.tcpHeaderFits(buf, ip))) return Drop.L4_TRUNCATED;
    if ((vflags & (VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID)) === 0 && !ip.isFragment &&
      !this.l4ChecksumOk(buf, ip, ip.payloadOff + (isTcp ? TCP_CSUM : UDP_CSUM), isTcp)) return Drop.L4_BAD_CHECKSUM;
    return TRANSLATED;
  }

  private tcpHeaderFits(buf: Uint8Array, ip: Ipv4Header): boolean {
    const hl = tcpHeaderLen(buf, ip.payloadOff);
    return hl >= TCP_MIN_HDR && (hl <= ip.payloadLen || ip.isFragment);
  }

  private l4ChecksumOk(buf: Uint8Array, ip: Ipv4Header, csumOff: number, isTcp: boolean): boolean {
    if (!isTcp && read16(buf, csumOff) === 0) return true;
    const len = ip.payloadLen;
    const pseudo = pseudoHeaderSum(ip.src, ip.dst, ip.proto, len);
    return fold(sumBytes(buf, ip.payloadOff, len, pseudo)) === 0xffff;
  }
}
