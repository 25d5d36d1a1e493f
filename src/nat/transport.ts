/**
 * TCP and UDP NAPT (RFC 4787, RFC 5382): the session lookup and creation for
 * each direction, timers and counters, MSS clamping, the address and port
 * rewrite with its checksums, then the session helper registered for the
 * connection's port, if any (PPTP control on TCP 1723).
 */
import { fold, pseudoHeaderSum, sumBytes } from '../wire/checksum';
import { IPV4_DST, IPV4_SRC, PROTO_ICMP, PROTO_TCP } from '../wire/ipv4';
import { TCP_ACK_FLAG, TCP_FIN, TCP_OK, TCP_RST, TCP_SYN } from '../wire/tcp';
import { UDP_OK } from '../wire/udp';
import { VNET_F_DATA_VALID, VNET_F_NEEDS_CSUM } from '../wire/vnet';
import { Drop, Verdict } from '../core/verdict';
import { PORTS_EXHAUSTED, SF_GUARDED, SF_HOST, SF_UNANSWERED, SLOT_TCP, SLOT_UDP, SessionTable, TABLE_FULL, protoSlot } from './sessions';
import { ADMITTED, HOST_SESSION_LIMIT } from './hosts';
import { BUDGET_OK, EIF_TARGET } from './budget';
import { BUDGET_REFUSED } from './forwards';
import { tcpInitialState, tcpNextState, tcpStateClass, tcpTimeoutMs } from './tcp-tracker';
import { clampMss } from './mss-clamp';
import { rewriteTransport } from './rewrite';
import { Packet, TrackerRegistry } from './tracker';

export interface NatTimers {
  tcpEstablishedMs: number;
  tcpTransitoryMs: number;
  udpMs: number;
  icmpMs: number;
  fragmentMs: number;
}

const TRANSLATED = Verdict.TRANSLATED;

export class Transport {
  /** Largest TCP MSS let through in SYN/SYN-ACK options; 0 = no clamping (config mssClamp). */
  mssClamp = 0;

  constructor(
    private readonly table: SessionTable,
    private readonly timers: NatTimers,
    private readonly endpointIndependentFiltering: boolean,
    private readonly trackers: TrackerRegistry,
  ) {}

  /**
   * Gives every session the deadline the current timers give it: its last
   * packet plus the timeout of its protocol and TCP state (after a reload
   * changed the timeouts). A deadline already passed expires the session at
   * the next sweep. Not the packet path.
   */
  retime(): void {
    const t = this.table;
    const timers = this.timers;
    for (let s = 0; s < t.capacity; s++) {
      if (t.sInUse[s] === 0) continue;
      const proto = t.protoOf(s);
      let timeout = proto === PROTO_TCP ? tcpTimeoutMs(t.stateOf(s), timers.tcpEstablishedMs, timers.tcpTransitoryMs)
        : proto === PROTO_ICMP ? timers.icmpMs : timers.udpMs;
      if ((t.flagsOf(s) & SF_UNANSWERED) !== 0 && timeout > t.inbound.limits.unansweredMs) timeout = t.inbound.limits.unansweredMs;
      t.setExpires(s, t.lastSeenOf(s) + timeout);
    }
  }

  /**
   * Length and checksum checks every TCP and UDP packet gets, whichever path
   * translates it: the transport header (and a sane TCP data offset) is
   * present, then `need` more bytes after it; the L4 checksum is verified only
   * where the kernel neither verified it (DATA_VALID) nor left it to be
   * finished (NEEDS_CSUM), and never on fragments. Parses p.tcp or p.udp.
   */
  check(p: Packet, need: number): Verdict {
    const ip = p.ip;
    const isTcp = ip.proto === PROTO_TCP;
    if (isTcp) {
      if (p.tcp.parse(p.buf, ip.payloadOff, ip.payloadLen, ip.isFragment) !== TCP_OK || p.tcp.dataLen < need) return Drop.L4_TRUNCATED;
    } else if (p.udp.parse(p.buf, ip.payloadOff, ip.payloadLen) !== UDP_OK || p.udp.payloadLen < need) {
      return Drop.L4_TRUNCATED;
    }
    if ((p.vflags & (VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID)) === 0 && !ip.isFragment && !this.checksumOk(p, isTcp)) {
      return Drop.L4_BAD_CHECKSUM;
    }
    return TRANSLATED;
  }

  private checksumOk(p: Packet, isTcp: boolean): boolean {
    const ip = p.ip;
    if (!isTcp && p.udp.checksum === 0) return true;
    const len = ip.payloadLen;
    return fold(sumBytes(p.buf, ip.payloadOff, len, pseudoHeaderSum(ip.src, ip.dst, ip.proto, len))) === 0xffff;
  }

  /** LAN -> outside: find or create the session, rewrite the source. */
  outbound(p: Packet): Verdict {
    const bad = this.check(p, 0);
    if (bad !== TRANSLATED) return bad;
    const ip = p.ip;
    const proto = ip.proto;
    const isTcp = proto === PROTO_TCP;
    const src = p.src;
    const dst = p.dst;
    const sport = isTcp ? p.tcp.sport : p.udp.sport;
    const dport = isTcp ? p.tcp.dport : p.udp.dport;
    const flags = isTcp ? p.tcp.flags : 0;
    const t = this.table;
    const now = p.now;
    let s = t.findOut(proto, src, sport, dst, dport);
    if (s >= 0 && t.expiresOf(s) <= now) {
      t.removeSession(s);
      s = -1;
    }
    if (s < 0) {
      // Only a SYN (no ACK) may take over a closed session's 5-tuple.
      const synSeq = isTcp && (flags & (TCP_SYN | TCP_ACK_FLAG)) === TCP_SYN ? p.tcp.seq : null;
      s = this.createOut(proto, src, sport, dst, dport, isTcp ? tcpInitialState(flags) : 0, now, synSeq);
      if (s < 0) return (-s - 1) as Verdict;
    }
    this.refresh(s, isTcp, flags, true, ip.totalLen, now);
    if (isTcp) t.sent(s, (p.tcp.seq + p.tcp.dataLen + (flags & TCP_SYN ? 1 : 0) + (flags & TCP_FIN)) | 0);
    const pubPort = t.pubPortOf(s);
    const csumOff = isTcp ? p.tcp.csumOff : p.udp.csumOff;
    const partial = p.partial;
    if (isTcp && this.mssClamp > 0) clampMss(p.buf, ip.payloadOff, ip.payloadLen, this.mssClamp, csumOff, partial);
    rewriteTransport(p.buf, ip.off, IPV4_SRC, src, t.pubAddrOf(s), isTcp ? p.tcp.sportOff : p.udp.sportOff, sport, pubPort,
      csumOff, partial, !isTcp);
    const h = this.helperFor(isTcp ? SLOT_TCP : SLOT_UDP, dport, sport, pubPort);
    return h === 0 ? TRANSLATED : this.helper(p, s, h, true);
  }

  /**
   * A new outbound session for a LAN endpoint, within its host's budget and
   * on its host's public address. Returns the session, or -1 - the drop
   * reason.
   */
  createOut(proto: number, lan: number, lanPort: number, rem: number, remPort: number, state: number, now: number,
    synSeq: number | null): number {
    const hosts = this.table.hosts;
    const h = hosts.record(lan, now);
    if (h < 0) return -1 - Drop.TABLE_FULL;
    const a = hosts.admit(h, now);
    if (a !== ADMITTED) return -1 - (a === HOST_SESSION_LIMIT ? Drop.HOST_SESSION_LIMIT : Drop.HOST_RATE_LIMIT);
    const t = this.table;
    const s = t.createOut(proto, lan, lanPort, rem, remPort, now, state, now, hosts.pubIdx[h], synSeq);
    if (s < 0) return -1 - (s === TABLE_FULL ? Drop.TABLE_FULL : s === PORTS_EXHAUSTED ? Drop.PORTS_EXHAUSTED : Drop.MAPPING_CONFLICT);
    hosts.added(h);
    t.setFlags(s, t.flagsOf(s) | SF_HOST);
    return s;
  }

  /** Outside -> public address: the session, or a new one under endpoint-independent filtering or a forward. */
  inbound(p: Packet): Verdict {
    const bad = this.check(p, 0);
    if (bad !== TRANSLATED) return bad;
    const ip = p.ip;
    const proto = ip.proto;
    const isTcp = proto === PROTO_TCP;
    const sport = isTcp ? p.tcp.sport : p.udp.sport;
    const dport = isTcp ? p.tcp.dport : p.udp.dport;
    const flags = isTcp ? p.tcp.flags : 0;
    const t = this.table;
    let s = this.inboundSession(proto, p.pubIdx, dport, ip.src, sport, p.now);
    if (s >= 0 && isTcp && (t.flagsOf(s) & SF_GUARDED) !== 0 && !t.guardAccepts(s, (flags & TCP_ACK_FLAG) !== 0, p.tcp.ack)) {
      return Drop.STALE_SEGMENT;
    }
    // A forward (spec §6) serves what no mapping or session accepts.
    if (s < 0 && p.forwards !== null) {
      const f = p.forwards.inbound(proto, p.pubIdx, dport, ip.src, sport, p.now);
      if (f >= 0 || f === BUDGET_REFUSED) s = f;
    }
    if (s < 0) return s === -1 ? Drop.FILTERED : s === BUDGET_REFUSED ? Drop.UNANSWERED_LIMIT : Drop.NO_MAPPING;
    this.refresh(s, isTcp, flags, false, ip.totalLen, p.now);
    const csumOff = isTcp ? p.tcp.csumOff : p.udp.csumOff;
    const partial = p.partial;
    if (isTcp && this.mssClamp > 0) clampMss(p.buf, ip.payloadOff, ip.payloadLen, this.mssClamp, csumOff, partial);
    const lanPort = t.lanPortOf(s);
    rewriteTransport(p.buf, ip.off, IPV4_DST, ip.dst, t.lanOf(s), isTcp ? p.tcp.dportOff : p.udp.dportOff, dport, lanPort,
      csumOff, partial, !isTcp);
    const h = this.helperFor(isTcp ? SLOT_TCP : SLOT_UDP, sport, lanPort, dport);
    return h === 0 ? TRANSLATED : this.helper(p, s, h, false);
  }

  /**
   * The session helper of a connection: the one registered for its remote
   * port (the LAN host is the client), its LAN port or its public port (a
   * server on the LAN, reached through a forward or a mapping); 0 for none.
   */
  helperFor(slot: number, remPort: number, lanPort: number, pubPort: number): number {
    const h = this.trackers.helper[slot];
    return h[remPort] || h[lanPort] || h[pubPort];
  }

  /** The session helper of session `s`, or 0. */
  helperOf(s: number): number {
    const t = this.table;
    const slot = protoSlot(t.protoOf(s));
    return slot === SLOT_TCP || slot === SLOT_UDP ? this.helperFor(slot, t.remPortOf(s), t.lanPortOf(s), t.pubPortOf(s)) : 0;
  }

  /**
   * Runs session helper `h` on a translated segment (a fragmented one reaches
   * it reassembled). A connection the helper refuses is marked reset.
   */
  private helper(p: Packet, s: number, h: number, outbound: boolean): Verdict {
    if (p.ip.isFragment) return TRANSLATED;
    p.session = s;
    const tr = this.trackers.at(h);
    const v = outbound ? tr.outbound(p) : tr.inbound(p);
    if (v === Verdict.RESET) this.refresh(s, true, TCP_RST, outbound, 0, p.now);
    return v;
  }

  /**
   * The session an inbound packet to public port `pubPort` of address
   * `pubIdx` belongs to: an existing one, or with endpoint-independent
   * filtering a new one under the port's mapping. Returns -1 when filtered
   * (some mapping uses the port), -2 when no mapping does or the table is
   * full, BUDGET_REFUSED when the remote holds its unanswered sessions.
   */
  inboundSession(proto: number, pubIdx: number, pubPort: number, rem: number, remPort: number, now: number): number {
    const t = this.table;
    let s = t.findIn(proto, pubIdx, pubPort, rem, remPort);
    if (s >= 0 && t.expiresOf(s) <= now) {
      t.removeSession(s);
      s = -1;
    }
    if (s >= 0) return s;
    if (!this.endpointIndependentFiltering) return t.portInUse(proto, pubIdx, pubPort) ? -1 : -2;
    const m = t.mappingOfPort(proto, pubIdx, pubPort);
    if (m < 0) return -2;
    if (t.inbound.admit(EIF_TARGET, rem) !== BUDGET_OK) return BUDGET_REFUSED;
    s = t.createSession(m, rem, remPort, now, 0, now);
    if (s < 0) return -2;
    t.markUnanswered(s, EIF_TARGET);
    return s;
  }

  /**
   * Updates TCP state, expiry and counters of a session for a packet in one
   * direction. A state an operator sees changing (a TCP state, the first
   * reply of a UDP or ICMP flow) is an UPDATE event, except on the packet
   * that created the session (its NEW event shows the state).
   */
  refresh(s: number, isTcp: boolean, flags: number, outbound: boolean, bytes: number, now: number): void {
    const t = this.table;
    const timers = this.timers;
    const seen = t.pktsOut(s) + t.pktsIn(s) > 0;
    let timeout: number;
    if (isTcp) {
      const old = t.stateOf(s);
      const st = tcpNextState(old, flags, outbound);
      t.setState(s, st);
      if (seen && st !== old && tcpStateClass(st) !== tcpStateClass(old)) t.updated(s);
      timeout = tcpTimeoutMs(st, timers.tcpEstablishedMs, timers.tcpTransitoryMs);
    } else {
      if (seen && !outbound && t.pktsIn(s) === 0) t.updated(s);
      timeout = t.protoOf(s) === PROTO_ICMP ? timers.icmpMs : timers.udpMs;
    }
    if ((t.flagsOf(s) & SF_UNANSWERED) !== 0) {
      // A session the outside made is short-lived until the LAN host answers (budget.ts).
      if (outbound) t.answered(s);
      else if (timeout > t.inbound.limits.unansweredMs) timeout = t.inbound.limits.unansweredMs;
    }
    t.touch(s, outbound, bytes, now, now + timeout);
  }
}
