/**
 * The translation step of the packet path: parse views -> look up state ->
 * translate -> checksum, for one packet at a time, in place, in the shared
 * arena. Pure: no I/O, no clock reads (the caller sets `now` per batch), no
 * allocation, no string keys.
 *
 * Direction is decided by the TUN device the packet was read from (its side,
 * core/side.ts), never by its addresses alone: only a packet from the LAN
 * device with a source inside a LAN prefix is outbound and may create a
 * mapping; a packet from the WAN device is inbound. A LAN-device packet with
 * a source outside the LAN prefixes, or a WAN-device packet with one inside,
 * is a spoof (Drop.SPOOFED_SOURCE; RFC 2827 ingress filtering). TCP, UDP
 * and ICMP are NAPT's own (transport.ts, icmp.ts); other protocols, and the
 * port pairs and sessions the helpers registered for, go to their Tracker
 * (tracker.ts). Fragments follow their first fragment's translation, or are
 * collected and translated as one datagram when a helper must see it whole
 * (fragments.ts). A session helper's segments beyond a gap wait in the same
 * hold pool (SegmentHolder).
 */
import { checksum, pseudoHeaderSum, read16, read32, write16, write32 } from '../wire/checksum';
import {
  IPV4_CSUM, IPV4_DST, IPV4_FLAG_MF, IPV4_FRAG, IPV4_FRAG_OFFSET_MASK, IPV4_MIN_HDR, IPV4_OK, IPV4_PROTO, IPV4_SRC, IPV4_TOTAL_LEN, IPV4_VER_IHL,
  PROTO_AH, PROTO_ESP, PROTO_GRE, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
  IPV4_ERR_CHECKSUM, IPV4_ERR_IHL, IPV4_ERR_TOTAL_LEN, IPV4_ERR_TRUNCATED, IPV4_ERR_VERSION,
} from '../wire/ipv4';
import { TCP_ACK, TCP_ACK_FLAG, TCP_CSUM, TCP_DATA_OFF, TCP_FIN, TCP_FLAGS, TCP_MIN_HDR, TCP_RST, TCP_SEQ, TCP_SYN, TCP_URGENT, TCP_WINDOW } from '../wire/tcp';
import { VNET_OK, VnetHeader } from '../wire/vnet';
import { isIcmpError, isIcmpQueryRequest } from '../wire/icmp';
import { Drop, DropCounters, Verdict } from '../core/verdict';
import { TxList } from '../core/tx-list';
import { COLLECT, DONE, FOLLOW, FRAGMENT, FragmentTracker, SEGMENT, SOURCE_LIMIT } from './fragments';
import type { Forwards } from './forwards';
import { LOOKUP_HOME, LOOKUP_PEEK, SLOT_TCP, SLOT_UDP, SessionListener, SessionTable } from './sessions';
import { Refusals } from './refuse';
import { IcmpNat } from './icmp';
import { NatTimers, Transport } from './transport';
import { restoreHop, setAddresses, setUdpAddress } from './rewrite';
import { HairpinPeers } from './hairpin';
import { NO_FORWARD } from './forwards';
import { Packet, SegmentHolder, Tracker, TrackerRegistry } from './tracker';
import { SIDE_LAN } from '../core/side';

export type { NatTimers };

export interface NaptOptions {
  /** LAN prefixes as [network, mask] int32 pairs. */
  lanPrefixes: Array<[number, number]>;
  /** A new flow that cannot be mapped is answered with ICMP code 13 (true, the default) or only dropped. */
  refuseWithIcmp?: boolean;
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

const TRANSLATED = Verdict.TRANSLATED;
const HELD = Verdict.HELD;
const TO_KERNEL = Verdict.TO_KERNEL;
const RESET = Verdict.RESET;
/** fragment(): not a fragment the pool takes care of; translate the packet itself. */
const ITSELF = -100;
/** Fragments of one collected datagram at most (64 KiB in 1 KiB pieces). */
const MAX_FRAGMENTS = 64;
const RST_LEN = 40;

/** Hairpin peers of a UDP port pair are keyed apart from IP protocol numbers. */
const PAIR_KEY = 0x10000;

/** Drop reasons of a new outbound flow that could not be mapped, answered with ICMP code 13 (refuse.ts). */
const REFUSED = new Uint8Array(256);
for (const d of [Drop.TABLE_FULL, Drop.PORTS_EXHAUSTED, Drop.HOST_SESSION_LIMIT, Drop.HOST_RATE_LIMIT, Drop.MAPPING_CONFLICT]) REFUSED[d] = 1;

const IP_ERR_TO_DROP: number[] = [];
IP_ERR_TO_DROP[IPV4_ERR_TRUNCATED] = Drop.IP_TRUNCATED;
IP_ERR_TO_DROP[IPV4_ERR_VERSION] = Drop.IP_VERSION;
IP_ERR_TO_DROP[IPV4_ERR_IHL] = Drop.IP_BAD_IHL;
IP_ERR_TO_DROP[IPV4_ERR_TOTAL_LEN] = Drop.IP_BAD_TOTAL_LEN;
IP_ERR_TO_DROP[IPV4_ERR_CHECKSUM] = Drop.IP_BAD_CHECKSUM;

export class Napt implements SessionListener, SegmentHolder {
  readonly drops = new DropCounters();
  readonly traffic = new Float64Array(4);
  /** The last Drop.SPOOFED_SOURCE packet: its source (int32) and 1 when it came from the LAN device (for the log). */
  readonly lastSpoof = new Int32Array(2);
  /**
   * Shared-address mode (set by the daemon): the public address is also the
   * box's own, so inbound ICMP that belongs to no mapping goes to the kernel
   * (TO_KERNEL) instead of being dropped.
   */
  sharedAddress = false;
  readonly trackers = new TrackerRegistry();
  /** Flows refused with ICMP code 13 (RFC 5508 REQ-8). */
  readonly refusals: Refusals;
  private readonly peers = new HairpinPeers();
  private readonly pkt = new Packet();
  private readonly vnet = new VnetHeader();
  private readonly lanNet: Int32Array;
  private readonly lanMask: Int32Array;
  private readonly transport: Transport;
  private readonly icmp: IcmpNat;
  /** The held fragments of the datagram being reassembled, by offset, and how many. */
  private readonly pieces = new Int32Array(MAX_FRAGMENTS);
  private pieceCount = 0;
  /** A reassembled datagram is being translated; deliver() writes its fragments itself. */
  private whole = false;
  private wholeWritten = false;
  /** Connections (helper owners) whose held segments go back to the helper once the current packet is queued. */
  private readonly releases = new Int32Array(32);
  private releaseCount = 0;

  constructor(
    readonly table: SessionTable,
    readonly frags: FragmentTracker,
    readonly arena: Uint8Array,
    private readonly opts: NaptOptions,
  ) {
    // Endpoint-independent filtering finds the mapping by its public port alone (sessions.ts).
    if (opts.endpointIndependentFiltering !== table.exclusivePorts) throw new Error('endpoint-independent filtering needs a table with exclusive ports');
    this.lanNet = Int32Array.from(opts.lanPrefixes.map((p) => p[0] & p[1]));
    this.lanMask = Int32Array.from(opts.lanPrefixes.map((p) => p[1]));
    this.refusals = new Refusals(opts.refuseWithIcmp ?? true);
    this.transport = new Transport(table, opts.timers, opts.endpointIndependentFiltering, this.trackers);
    this.icmp = new IcmpNat(table, this.transport, this.trackers);
    this.pkt.buf = arena;
    table.listener = this;
  }

  /** Time of the current batch (ms); set by the caller before each batch. */
  get now(): number { return this.pkt.now; }
  set now(t: number) { this.pkt.now = t; }

  /** Largest TCP MSS let through in SYN/SYN-ACK options; 0 = no clamping (config mssClamp). */
  get mssClamp(): number { return this.transport.mssClamp; }
  set mssClamp(v: number) { this.transport.mssClamp = v; }

  /** Forwards for servers on the LAN, consulted when an inbound packet matches nothing. */
  get forwards(): Forwards | null { return this.pkt.forwards; }
  set forwards(f: Forwards | null) { this.pkt.forwards = f; }

  get publicAddr(): number { return this.table.publicAddr; }

  /**
   * A reload's new timers: new entries get them, and so do the
   * existing ones (sessions' deadlines are recomputed from their last packet,
   * fragment deadlines move by the change). Not the packet path.
   */
  configure(timers: NatTimers): void {
    const current = this.opts.timers;
    const fragmentDelta = timers.fragmentMs - current.fragmentMs;
    // The one timers object NAPT, the transport and the ICMP translator share.
    Object.assign(current, timers);
    this.transport.retime();
    if (fragmentDelta !== 0) this.frags.shiftDeadlines(fragmentDelta);
  }

  /** IP protocol `proto` (ESP, GRE, AH) is translated by `t`. */
  registerProtocol(proto: number, t: Tracker): void {
    this.trackers.protocol(proto, t);
  }

  /**
   * UDP (or TCP) `port` <-> `port` is translated by `t` instead of NAPT
   * (ISAKMP keeps 500, spec Rule I-1); shorter than `need` bytes of payload
   * is L4_TRUNCATED.
   */
  registerPortPair(proto: number, port: number, t: Tracker, need: number): void {
    this.trackers.pair(proto === PROTO_TCP ? SLOT_TCP : SLOT_UDP, port, t, need);
  }

  /** NAPT sessions with `port` at one end are also handed to `t` after translation (PPTP control on TCP 1723). */
  registerSessionHelper(proto: number, port: number, t: Tracker): void {
    this.trackers.sessions(proto === PROTO_TCP ? SLOT_TCP : SLOT_UDP, port, t);
  }

  /** SessionTable hook: a session helper's master connection is going away. */
  sessionRemoved(s: number): void {
    const h = this.transport.helperOf(s);
    if (h !== 0) this.trackers.at(h).sessionRemoved(s);
  }

  isLan(addr: number): boolean {
    for (let i = 0; i < this.lanNet.length; i++) if ((addr & this.lanMask[i]) === this.lanNet[i]) return true;
    return false;
  }

  /** Folded words of warm(): kept so the reads are not optimized away. */
  private warmth = 0;
  /** warm(): the home slots, then the sessions, the passes found (grown to the largest batch, never per packet). */
  private warmFound = new Int32Array(0);
  /** warm(): the batch index of each packet looked up. */
  private warmPackets = new Int32Array(0);

  /**
   * Before a batch is translated: for every unfragmented TCP or UDP packet
   * with a plain 20-byte header, reads the index entry and then the session
   * row its lookup will touch, in passes whose reads do not depend on each
   * other, so the CPU overlaps their cache misses instead of taking them one
   * after another (a row's address is known only once its index entry
   * arrived): the home slots are computed (nothing read), then read, then
   * matched against the keys (now cached) for the sessions, whose rows are
   * read last. Translation then finds them cached.
   */
  warm(offs: Uint32Array, lens: Uint32Array, devs: Uint8Array, count: number): void {
    const b = this.arena;
    const v = this.opts.vnetLen;
    const t = this.table;
    if (this.warmFound.length < count) {
      this.warmFound = new Int32Array(count);
      this.warmPackets = new Int32Array(count);
    }
    const found = this.warmFound;
    const packets = this.warmPackets;
    let n = 0;
    for (let i = 0; i < count; i++) {
      const o = offs[i] + v;
      if (lens[i] < v + IPV4_MIN_HDR + 4 || b[o + IPV4_VER_IHL] !== 0x45 || (read16(b, o + IPV4_FRAG) & (IPV4_FLAG_MF | IPV4_FRAG_OFFSET_MASK)) !== 0) continue;
      const proto = b[o + IPV4_PROTO];
      if (proto !== PROTO_TCP && proto !== PROTO_UDP) continue;
      const h = this.warmLookup(LOOKUP_HOME, o, devs[i]);
      if (h >= 0) { found[n] = h; packets[n++] = i; }
    }
    let sink = 0;
    for (let k = 0; k < n; k++) sink ^= t.warmSlot(found[k]);
    let m = 0;
    for (let k = 0; k < n; k++) {
      const i = packets[k];
      const s = this.warmLookup(LOOKUP_PEEK, offs[i] + v, devs[i]);
      if (s >= 0) found[m++] = s;
    }
    for (let k = 0; k < m; k++) sink ^= t.warmRow(found[k]);
    this.warmth ^= sink;
  }

  /** SessionTable.warmLookup of the TCP/UDP packet whose IPv4 header (20 bytes) is at `o`, read from device `dev`. */
  private warmLookup(how: number, o: number, dev: number): number {
    const b = this.arena;
    const l4 = o + IPV4_MIN_HDR;
    return this.table.warmLookup(how, dev === SIDE_LAN, b[o + IPV4_PROTO], read32(b, o + IPV4_SRC), read16(b, l4), read32(b, o + IPV4_DST), read16(b, l4 + 2));
  }

  /**
   * Translates the packet at `off` (vnet header included) of `len` bytes,
   * read from the TUN device of `side` (SIDE_LAN, SIDE_WAN), and queues what
   * is to be sent.
   */
  process(off: number, len: number, out: TxList, side: number): void {
    const buf = this.arena;
    const p = this.pkt;
    const v = this.opts.vnetLen;
    if (v > 0 && this.vnet.parse(buf, off, len) !== VNET_OK) { this.drops.counts[Drop.VNET_TRUNCATED]++; return; }
    const ip = p.ip;
    const err = ip.parse(buf, off + v, len - v, true, true);
    if (err !== IPV4_OK) { this.drops.counts[IP_ERR_TO_DROP[err]]++; return; }
    this.translate(off, v > 0 ? this.vnet.flags : 0, out, side === SIDE_LAN);
    if (this.releaseCount > 0) this.runReleases(out);
  }

  /** Translates the packet parsed into p.ip (its vnet header at `off`), read from the LAN device or not, and queues it. */
  private translate(off: number, vflags: number, out: TxList, fromLan: boolean): void {
    const p = this.pkt;
    const ip = p.ip;
    p.vflags = vflags;
    p.session = -1;
    p.src = ip.src;
    p.dst = ip.dst;
    const proto = ip.proto;
    if ((proto === PROTO_TCP || proto === PROTO_UDP) && ip.payloadLen >= 4) {
      p.sport = read16(p.buf, ip.payloadOff);
      p.dport = read16(p.buf, ip.payloadOff + 2);
    }
    if (this.isLan(p.src) !== fromLan && !this.boxError(p, fromLan)) {
      this.drops.counts[Drop.SPOOFED_SOURCE]++;
      this.lastSpoof[0] = p.src;
      this.lastSpoof[1] = fromLan ? 1 : 0;
      return;
    }
    const outbound = fromLan;
    const verdict = !this.selectPublic(p, outbound) ? Drop.NOT_OURS : outbound ? this.outbound(p, out) : this.inbound(p, out);
    this.finish(verdict, outbound, off, out);
  }

  /**
   * An ICMP error with a LAN source from the WAN device: the box's own (a
   * frag-needed or time-exceeded it sends to the public address for a
   * translated packet leaves by the WAN table, and the kernel gives it the
   * first address it finds, often its LAN one; RFC 1812 §4.3.2.4). Let
   * through: an error only translates against the mapping of the packet it
   * quotes (RFC 5508 §3.2) and never creates one, and a spoofed one from the
   * WAN interface is already refused by its strict rp_filter.
   */
  private boxError(p: Packet, fromLan: boolean): boolean {
    const ip = p.ip;
    return !fromLan && ip.proto === PROTO_ICMP && ip.payloadLen > 0 && !ip.isLaterFragment && isIcmpError(p.buf[ip.payloadOff]);
  }

  /**
   * The packet's public address: outbound, its LAN host's one address
   * (paired pooling, RFC 4787 REQ-2); inbound, its destination, when that is
   * one of the public addresses (false otherwise).
   */
  private selectPublic(p: Packet, outbound: boolean): boolean {
    const t = this.table;
    if (outbound) {
      p.pubIdx = t.addressCount === 1 ? 0 : t.hosts.addressOf(p.src);
      p.publicAddr = t.publicAddress(p.pubIdx);
      return true;
    }
    p.pubIdx = t.publicIndexOf(p.dst);
    p.publicAddr = p.dst;
    return p.pubIdx >= 0;
  }

  /** Counts the verdict and queues what it says to send. */
  private finish(verdict: number, outbound: boolean, off: number, out: TxList): void {
    const p = this.pkt;
    const ip = p.ip;
    if (verdict >= 0) {
      this.drops.counts[verdict]++;
      // A reassembled datagram has no slot of its own to answer from.
      if (outbound && REFUSED[verdict] === 1 && !this.whole) this.refuse(off, out);
      return;
    }
    if (verdict === HELD) return;
    if (verdict === RESET) {
      this.drops.counts[Drop.REFUSED]++;
      this.resetBoth(p, out);
      return;
    }
    if (verdict === TRANSLATED) {
      const dir = outbound ? T_PKTS_OUT : T_PKTS_IN;
      this.traffic[dir]++;
      this.traffic[dir + 2] += ip.totalLen;
    }
    if (this.whole) {
      if (!this.wholeWritten) this.writePieces(false, out);
      return;
    }
    restoreHop(this.arena, ip.off);
    out.push(off, this.opts.vnetLen + ip.totalLen);
  }

  /**
   * A new outbound flow could not be mapped: ICMP code 13 back to its
   * sender, built in the packet's own slot (at most 96 bytes, smaller than
   * any slot; refuse.ts).
   */
  private refuse(off: number, out: TxList): void {
    const ip = this.pkt.ip;
    const n = this.refusals.build(this.arena, ip.off, this.opts.vnetLen, ip.hdrLen, ip.totalLen, ip.isLaterFragment,
      this.pkt.publicAddr, this.pkt.now);
    if (n > 0) out.push(off, n);
  }

  /**
   * The tracker that owns a TCP/UDP packet's port pair (ISAKMP 500 <-> 500),
   * or 0.
   */
  private pairOwner(p: Packet): number {
    const ip = p.ip;
    if (ip.payloadLen < 4) return 0;
    const buf = p.buf;
    const l4 = ip.payloadOff;
    const sport = (buf[l4] << 8) | buf[l4 + 1];
    if (sport !== ((buf[l4 + 2] << 8) | buf[l4 + 3])) return 0;
    return this.trackers.portPair[ip.proto === PROTO_TCP ? SLOT_TCP : SLOT_UDP][sport];
  }

  /** Checks the header of a packet whose port pair a tracker owns, with the payload the tracker needs. */
  private pairCheck(p: Packet): Verdict {
    const ip = p.ip;
    const port = (p.buf[ip.payloadOff] << 8) | p.buf[ip.payloadOff + 1];
    return this.transport.check(p, this.trackers.pairNeed[ip.proto === PROTO_TCP ? SLOT_TCP : SLOT_UDP][port]);
  }

  // ---- outbound ------------------------------------------------------------

  /** Returns TRANSLATED, HELD, RESET or a drop reason; a hairpinned packet also runs the inbound half. */
  private outbound(p: Packet, out: TxList): Verdict {
    const ip = p.ip;
    if (ip.isFragment) {
      const f = this.fragment(p, true, out);
      if (f !== ITSELF) return f as Verdict;
    }
    const src = p.src;
    const dst = p.dst;
    const proto = ip.proto;
    let r: Verdict;
    if (proto === PROTO_TCP || proto === PROTO_UDP) {
      const owner = this.pairOwner(p);
      if (owner !== 0) {
        r = this.pairCheck(p);
        if (r !== TRANSLATED) return r;
        const pub = this.table.publicIndexOf(dst);
        if (pub >= 0) return this.hairpinVpn(p, pub, PAIR_KEY | ((p.buf[ip.payloadOff] << 8) | p.buf[ip.payloadOff + 1]), out);
        r = this.trackers.at(owner).outbound(p);
      } else {
        r = this.transport.outbound(p);
        // Hairpinning (RFC 4787 REQ-9, RFC 5382 REQ-8): a LAN host addressed
        // another one's public endpoint; the inbound half runs on the same packet.
        if (r === TRANSLATED && this.hairpin(p, ip.dst)) r = this.transport.inbound(p);
      }
    } else if (proto === PROTO_ICMP) {
      // An echo or timestamp request to a public address has no one behind it
      // (RFC 5508 REQ-7 hairpins queries only for Basic NAT): no mapping is made for it.
      if (ip.payloadLen > 0 && isIcmpQueryRequest(p.buf[ip.payloadOff]) && this.table.publicIndexOf(dst) >= 0) {
        // Shared mode: the public address is the box's own, which answers;
        // its reply comes back through the mapping like any remote's.
        return this.sharedAddress ? this.icmp.outbound(p) : Drop.NO_MAPPING;
      }
      r = this.icmp.outbound(p);
      // An error about a hairpinned packet goes on to the host it quotes.
      if (r === TRANSLATED && this.hairpin(p, ip.dst)) r = this.icmp.inbound(p);
      return r;
    } else {
      const t = this.trackers.byProto[proto];
      if (t === 0) return proto === PROTO_AH ? Drop.AH_REFUSED : Drop.UNKNOWN_PROTOCOL;
      // Only ESP and GRE are hairpinned by address (hairpin.ts); AH and the rest go to their tracker.
      const pub = proto === PROTO_ESP || proto === PROTO_GRE ? this.table.publicIndexOf(dst) : -1;
      if (pub >= 0) return this.hairpinVpn(p, pub, proto, out);
      r = this.trackers.at(t).outbound(p);
    }
    if (r === TRANSLATED && ip.isFragment) this.rememberAndRelease(src, dst, proto, ip.id, ip.src, ip.dst, out);
    return r;
  }

  /**
   * ESP, GRE or ISAKMP from a LAN host to public address `pubIdx` (hairpin.ts):
   * to the LAN server of that protocol's forward, or, from that server, back
   * to the client that last reached it; from the sender's public address,
   * by address only. Returns TRANSLATED or NO_MAPPING.
   */
  private hairpinVpn(p: Packet, pubIdx: number, key: number, out: TxList): Verdict {
    const f = p.forwards;
    const src = p.src;
    const dst = p.dst;
    const server = f === null ? NO_FORWARD : key === PROTO_ESP || key === PROTO_GRE ? f.protoForward(key) : f.isakmpServer();
    let to: number;
    if (server !== NO_FORWARD && server !== src && f !== null && f.servedOn(server) === pubIdx) {
      this.peers.remember(key, server, src, p.now);
      to = server;
    } else {
      to = this.peers.clientOf(key, src, p.now);
      if (to === NO_FORWARD) return Drop.NO_MAPPING;
    }
    const ip = p.ip;
    if (key === PROTO_ESP || key === PROTO_GRE) {
      setAddresses(p.buf, ip.off, src, dst, p.publicAddr, to);
    } else {
      setUdpAddress(p.buf, ip.off, ip.payloadOff, IPV4_SRC, src, p.publicAddr, p.partial);
      setUdpAddress(p.buf, ip.off, ip.payloadOff, IPV4_DST, dst, to, p.partial);
    }
    if (ip.isFragment) this.rememberAndRelease(src, dst, ip.proto, ip.id, p.publicAddr, to, out);
    return TRANSLATED;
  }

  /**
   * After the outbound half of a packet, now addressed to `dst`: when that is
   * a public address, the packet turns around (hairpinning): from now on it
   * comes from the sender's public address to `dst`, for the inbound half.
   * (The router's own ICMP error, already turned toward its LAN host by the
   * ICMP half, is not addressed to a public address any more.)
   */
  private hairpin(p: Packet, dst: number): boolean {
    const pubIdx = this.table.publicIndexOf(dst);
    if (pubIdx < 0) return false;
    p.src = p.publicAddr;
    p.pubIdx = pubIdx;
    p.publicAddr = dst;
    return true;
  }

  // ---- inbound -------------------------------------------------------------

  private inbound(p: Packet, out: TxList): Verdict {
    const ip = p.ip;
    if (ip.isFragment) {
      const f = this.fragment(p, false, out);
      if (f !== ITSELF) return f as Verdict;
    }
    const proto = ip.proto;
    if (proto === PROTO_TCP || proto === PROTO_UDP) {
      const owner = this.pairOwner(p);
      if (owner !== 0) {
        const r = this.pairCheck(p);
        return r === TRANSLATED ? this.deliver(p, this.trackers.at(owner), out, p.src) : r;
      }
      const r = this.transport.inbound(p);
      if (r === TRANSLATED && ip.isFragment) this.rememberAndRelease(p.src, p.dst, proto, ip.id, ip.src, ip.dst, out);
      return r;
    }
    if (proto === PROTO_ICMP) return this.ownIcmp(this.icmp.inbound(p), p, out);
    const t = this.trackers.byProto[proto];
    if (t === 0) return proto === PROTO_AH ? Drop.AH_REFUSED : Drop.UNKNOWN_PROTOCOL;
    return this.deliver(p, this.trackers.at(t), out, p.src);
  }

  /**
   * Asks a tracker where an inbound packet goes and sends it there: copies
   * to hosts 1.. go out from borrowed hold slots (guessing, spec §4.3 step 4),
   * the packet itself to host 0. A reassembled datagram goes out as its
   * fragments, a full set per host; later fragments (which arrive from
   * `arrivedSrc`, the LAN host of a hairpinned packet) follow host 0.
   */
  private deliver(p: Packet, tracker: Tracker, out: TxList, arrivedSrc: number): Verdict {
    p.to.count = 0;
    const r = tracker.inbound(p);
    if (r !== TRANSLATED) return r;
    const ip = p.ip;
    const to = p.to;
    const n = to.count;
    const buf = p.buf;
    const pub = p.dst;
    const partial = p.partial;
    if (this.whole) {
      let prev = pub;
      for (let i = 0; i < n; i++) {
        tracker.deliver(buf, ip.off, ip.payloadOff, prev, to.addr[i], partial);
        prev = to.addr[i];
        if (!this.writePieces(i < n - 1, out)) break;
      }
      this.wholeWritten = true;
      return TRANSLATED;
    }
    const f = this.frags;
    const v = this.opts.vnetLen;
    const len = v + ip.totalLen;
    for (let i = 1; i < n; i++) {
      const h = f.borrow(buf, ip.off - v, len);
      if (h < 0) {
        this.drops.counts[Drop.FRAGMENT_HOLD_FULL]++;
        break;
      }
      const copy = f.heldOffset(h) + v;
      tracker.deliver(buf, copy, copy + ip.hdrLen, pub, to.addr[i], partial);
      restoreHop(buf, copy);
      out.push(copy - v, len);
    }
    tracker.deliver(buf, ip.off, ip.payloadOff, pub, to.addr[0], partial);
    if (ip.isFragment) this.rememberAndRelease(arrivedSrc, pub, ip.proto, ip.id, p.src, to.addr[0], out);
    return TRANSLATED;
  }

  /**
   * Shared-address mode: inbound ICMP that matches no session (echo requests
   * to the box, replies to its own pings, errors about its own traffic,
   * fragmented ICMP) is the box's, so it goes back to the kernel unchanged;
   * later fragments follow the first. Mapped traffic keeps RFC 5508 handling.
   * Dedicated mode drops it: nothing else owns that address.
   */
  private ownIcmp(verdict: Verdict, p: Packet, out: TxList): Verdict {
    if (!this.sharedAddress || (verdict !== Drop.NO_MAPPING && verdict !== Drop.FILTERED &&
      verdict !== Drop.ICMP_ERROR_NO_MAPPING && verdict !== Drop.ICMP_UNSUPPORTED)) return verdict;
    const ip = p.ip;
    if (ip.isFragment) this.rememberAndRelease(ip.src, ip.dst, PROTO_ICMP, ip.id, ip.src, ip.dst, out);
    return TO_KERNEL;
  }

  // ---- fragments -----------------------------------------------------------

  /**
   * A fragment: a later one follows its datagram's translation, joins its
   * collection, or waits for the first; a first one starts a collection when
   * a helper must see the datagram whole. Returns the verdict, or ITSELF for
   * a first fragment NAPT translates on its own.
   */
  private fragment(p: Packet, outbound: boolean, out: TxList): number {
    const ip = p.ip;
    const f = this.frags;
    const src = p.src;
    const dst = p.dst;
    const key = FragmentTracker.key(ip.proto, ip.id);
    const later = ip.isLaterFragment;
    const d = f.find(src, dst, key, p.now);
    if (later && d >= 0 && f.dMode[d] === FOLLOW) {
      setAddresses(p.buf, ip.off, src, dst, f.dNewSrc[d], f.dNewDst[d]);
      return TRANSLATED;
    }
    if (d >= 0 && f.dMode[d] === DONE) return Drop.FRAGMENT_DUPLICATE;
    const collect = d >= 0 ? f.dMode[d] === COLLECT : !later && f.wholeOff >= 0 && this.needsWhole(p, outbound);
    if (!later && !collect) return ITSELF;
    const v = this.opts.vnetLen;
    const len = v + ip.totalLen;
    if (len > f.holdSlotSize) return Drop.FRAGMENT_TOO_BIG;
    const deadline = p.now + this.opts.timers.fragmentMs;
    const fragOff = (read16(p.buf, ip.off + IPV4_FRAG) & IPV4_FRAG_OFFSET_MASK) << 3;
    const more = (read16(p.buf, ip.off + IPV4_FRAG) & IPV4_FLAG_MF) !== 0;
    const held = f.holdSlot(this.arena, ip.off - v, len, src, dst, key, deadline, FRAGMENT, fragOff, ip.payloadLen, more);
    if (held < 0) return held === SOURCE_LIMIT ? Drop.FRAGMENT_SOURCE_LIMIT : Drop.FRAGMENT_HOLD_FULL;
    if (!collect) return HELD;
    if (d < 0) f.remember(src, dst, key, src, dst, deadline, COLLECT);
    const n = f.whole(src, dst, key, this.pieces);
    if (n > 0) this.reassemble(n, outbound, src, dst, key, deadline, out);
    return HELD;
  }

  /**
   * A first fragment's datagram is collected when a helper reads its payload
   * (a port pair owner, a session helper by port) or, inbound, when a
   * tracker delivers it (so every guessed copy gets every fragment).
   */
  private needsWhole(p: Packet, outbound: boolean): boolean {
    const ip = p.ip;
    const proto = ip.proto;
    if (proto === PROTO_TCP || proto === PROTO_UDP) {
      if (this.pairOwner(p) !== 0) return true;
      if (ip.payloadLen < 4) return false;
      const sport = read16(p.buf, ip.payloadOff);
      const dport = read16(p.buf, ip.payloadOff + 2);
      const slot = proto === PROTO_TCP ? SLOT_TCP : SLOT_UDP;
      if (outbound) return this.transport.helperFor(slot, dport, sport, sport) !== 0;
      const t = this.table;
      const sess = t.findIn(proto, p.pubIdx, dport, p.src, sport);
      const m = sess >= 0 ? -1 : t.mappingOfPort(proto, p.pubIdx, dport);
      const lanPort = sess >= 0 ? t.lanPortOf(sess) : m >= 0 ? t.mLanPort[m] : dport;
      return this.transport.helperFor(slot, sport, lanPort, dport) !== 0;
    }
    return !outbound && proto !== PROTO_ICMP && this.trackers.byProto[proto] !== 0;
  }

  /**
   * The collected datagram is complete: copied whole into the reassembly
   * area, translated there once, then written back out as its fragments
   * (writePieces); late duplicates of it are dropped.
   */
  private reassemble(n: number, outbound: boolean, src: number, dst: number, key: number, deadline: number, out: TxList): void {
    const f = this.frags;
    const buf = this.arena;
    const v = this.opts.vnetLen;
    this.pieceCount = n;
    const w = f.wholeOff;
    const first = f.heldOffset(this.pieces[0]) + v;
    const hl = (buf[first] & 0x0f) << 2;
    buf.fill(0, w, w + v);
    buf.copyWithin(w + v, first, first + hl);
    let at = w + v + hl;
    for (let i = 0; i < n; i++) {
      const h = this.pieces[i];
      const ipOff = f.heldOffset(h) + v;
      const phl = (buf[ipOff] & 0x0f) << 2;
      buf.copyWithin(at, ipOff + phl, ipOff + phl + f.fragLen(h));
      at += f.fragLen(h);
    }
    const total = at - (w + v);
    write16(buf, w + v + IPV4_TOTAL_LEN, total);
    write16(buf, w + v + IPV4_FRAG, 0);
    write16(buf, w + v + IPV4_CSUM, 0);
    write16(buf, w + v + IPV4_CSUM, checksum(buf, w + v, hl, 0));
    const p = this.pkt;
    f.remember(src, dst, key, src, dst, deadline, DONE);
    if (p.ip.parse(buf, w + v, total, true, true) !== IPV4_OK) {
      this.dropPieces();
      this.drops.counts[Drop.IP_BAD_TOTAL_LEN]++;
      return;
    }
    this.whole = true;
    this.wholeWritten = false;
    p.vflags = 0;
    this.selectPublic(p, outbound);
    p.session = -1;
    p.src = src;
    p.dst = dst;
    p.sport = read16(buf, p.ip.payloadOff);
    p.dport = read16(buf, p.ip.payloadOff + 2);
    const verdict = outbound ? this.outbound(p, out) : this.inbound(p, out);
    this.finish(verdict, outbound, w, out);
    this.whole = false;
    if (verdict !== TRANSLATED) this.dropPieces();
    const ip = p.ip;
    f.remember(src, dst, key, ip.src, ip.dst, deadline, DONE);
  }

  /**
   * Writes the reassembled datagram (translated in the reassembly area) out
   * as the fragments it came in: each keeps its own header (addresses
   * rewritten) and gets its part of the translated payload. `copy`: into
   * borrowed slots, the held ones staying for another copy. Returns false
   * when the pool had no room for a whole copy.
   */
  private writePieces(copy: boolean, out: TxList): boolean {
    const f = this.frags;
    const buf = this.arena;
    const v = this.opts.vnetLen;
    const n = this.pieceCount;
    const ip = this.pkt.ip;
    const payload = ip.payloadOff;
    const newSrc = ip.src;
    const newDst = ip.dst;
    if (copy && f.freeSlots < n) {
      this.drops.counts[Drop.FRAGMENT_HOLD_FULL]++;
      return false;
    }
    for (let i = 0; i < n; i++) {
      const h = this.pieces[i];
      let slot = h;
      if (copy) slot = f.borrow(buf, f.heldOffset(h), f.heldLength(h));
      else f.release(h);
      const pOff = f.heldOffset(slot);
      const ipOff = pOff + v;
      const phl = (buf[ipOff] & 0x0f) << 2;
      setAddresses(buf, ipOff, this.pkt.src, this.pkt.dst, newSrc, newDst);
      buf.copyWithin(ipOff + phl, payload + f.fragOffset(h), payload + f.fragOffset(h) + f.fragLen(h));
      restoreHop(buf, ipOff);
      out.push(pOff, f.heldLength(h));
    }
    return true;
  }

  /** The collected datagram was not sent: its fragments are let go. */
  private dropPieces(): void {
    const f = this.frags;
    for (let i = 0; i < this.pieceCount; i++) {
      const h = this.pieces[i];
      if (f.isHeld(h)) f.discard(h);
    }
    this.pieceCount = 0;
  }

  /**
   * After translating a first fragment: remember the datagram, keyed by the
   * addresses its later fragments carry and with the addresses they leave
   * with, and release those that came early.
   */
  private rememberAndRelease(src: number, dst: number, proto: number, id: number, newSrc: number, newDst: number, out: TxList): void {
    const f = this.frags;
    const key = FragmentTracker.key(proto, id);
    f.remember(src, dst, key, newSrc, newDst, this.pkt.now + this.opts.timers.fragmentMs);
    if (f.heldCount === 0) return;
    const v = this.opts.vnetLen;
    const buf = this.arena;
    for (let h = f.takeHeld(src, dst, key, 0); h >= 0; h = f.takeHeld(src, dst, key, h + 1)) {
      const hOff = f.heldOffset(h);
      const ipOff = hOff + v;
      setAddresses(buf, ipOff, src, dst, newSrc, newDst);
      restoreHop(buf, ipOff);
      if (!out.push(hOff, f.heldLength(h))) this.drops.counts[Drop.FRAGMENT_HOLD_FULL]++;
    }
  }

  // ---- held segments (SegmentHolder) -----------------------------------------

  hold(p: Packet, owner: number, outbound: boolean): boolean {
    const v = this.opts.vnetLen;
    const ip = p.ip;
    return this.frags.hold(this.arena, ip.off - v, v + ip.totalLen, owner, p.session, p.tcp.seq,
      p.now + this.opts.timers.fragmentMs, outbound ? SEGMENT : SEGMENT + 1);
  }

  release(owner: number): void {
    if (this.releaseCount < this.releases.length) this.releases[this.releaseCount++] = owner;
  }

  discard(owner: number): void {
    const f = this.frags;
    for (let kind = SEGMENT; kind <= SEGMENT + 1; kind++) {
      for (let h = f.nextHeld(kind, owner, -1, -1, 0); h >= 0; h = f.nextHeld(kind, owner, -1, -1, h + 1)) f.discard(h);
    }
  }

  /** Hands held segments back to their helpers, lowest sequence number first, until one is still ahead. */
  private runReleases(out: TxList): void {
    const f = this.frags;
    const p = this.pkt;
    const buf = this.arena;
    const v = this.opts.vnetLen;
    while (this.releaseCount > 0) {
      const owner = this.releases[--this.releaseCount];
      for (;;) {
        let best = -1;
        for (let kind = SEGMENT; kind <= SEGMENT + 1; kind++) {
          for (let h = f.nextHeld(kind, owner, -1, -1, 0); h >= 0; h = f.nextHeld(kind, owner, -1, -1, h + 1)) {
            if (best < 0 || ((f.heldKey(h) - f.heldKey(best)) | 0) < 0) best = h;
          }
        }
        if (best < 0) break;
        const off = f.heldOffset(best);
        const s = f.heldDst(best);
        const h = this.transport.helperOf(s);
        if (h === 0 || p.ip.parse(buf, off + v, f.heldLength(best) - v, false, true) !== IPV4_OK ||
          p.tcp.parse(buf, p.ip.payloadOff, p.ip.payloadLen, false) !== 0) {
          f.discard(best);
          continue;
        }
        p.vflags = v > 0 ? buf[off] : 0;
        p.session = s;
        p.src = p.ip.src;
        p.dst = p.ip.dst;
        p.fromHold = true;
        const tr = this.trackers.at(h);
        const r = f.heldKind(best) === SEGMENT ? tr.outbound(p) : tr.inbound(p);
        p.fromHold = false;
        if (r === HELD) break;
        if (r !== TRANSLATED) {
          f.discard(best);
          this.drops.counts[r >= 0 ? r : Drop.PPTP_OUT_OF_ORDER]++;
          continue;
        }
        f.release(best);
        restoreHop(buf, off + v);
        out.push(off, f.heldLength(best));
      }
    }
  }

  // ---- refusing a TCP connection -----------------------------------------------

  /**
   * A helper refused the connection (Verdict.RESET): instead of the segment,
   * a RST goes on to its destination and one back to its sender (RFC 9293
   * §3.10.7.4: an acknowledgment-bearing RST takes its sequence number from
   * the acknowledgment), both from borrowed slots.
   */
  private resetBoth(p: Packet, out: TxList): void {
    const tcp = p.tcp;
    const ip = p.ip;
    const flags = tcp.flags;
    const hasAck = (flags & TCP_ACK_FLAG) !== 0;
    const seq = tcp.seq;
    const ack = tcp.ack;
    const sent = (seq + tcp.dataLen + ((flags & TCP_SYN) !== 0 ? 1 : 0) + ((flags & TCP_FIN) !== 0 ? 1 : 0)) | 0;
    this.writeRst(ip.src, ip.dst, tcp.sport, tcp.dport, seq, hasAck ? ack : 0, hasAck ? TCP_RST | TCP_ACK_FLAG : TCP_RST, out);
    this.writeRst(p.dst, p.src, p.dport, p.sport, hasAck ? ack : 0, sent, TCP_RST | TCP_ACK_FLAG, out);
  }

  private writeRst(src: number, dst: number, sport: number, dport: number, seq: number, ack: number, flags: number, out: TxList): void {
    const f = this.frags;
    const v = this.opts.vnetLen;
    const h = f.borrow(this.arena, 0, 0);
    if (h < 0) {
      this.drops.counts[Drop.FRAGMENT_HOLD_FULL]++;
      return;
    }
    const buf = this.arena;
    const at = f.heldOffset(h);
    buf.fill(0, at, at + v + RST_LEN);
    const o = at + v;
    buf[o] = 0x45;
    write16(buf, o + IPV4_TOTAL_LEN, RST_LEN);
    write16(buf, o + IPV4_FRAG, 0x4000);
    buf[o + 8] = 64;
    buf[o + 9] = PROTO_TCP;
    write32(buf, o + 12, src);
    write32(buf, o + 16, dst);
    write16(buf, o + IPV4_CSUM, checksum(buf, o, 20, 0));
    const t = o + 20;
    write16(buf, t, sport);
    write16(buf, t + 2, dport);
    write32(buf, t + TCP_SEQ, seq);
    write32(buf, t + TCP_ACK, ack);
    buf[t + TCP_DATA_OFF] = (TCP_MIN_HDR >>> 2) << 4;
    buf[t + TCP_FLAGS] = flags;
    write16(buf, t + TCP_WINDOW, 0);
    write16(buf, t + TCP_URGENT, 0);
    write16(buf, t + TCP_CSUM, checksum(buf, t, TCP_MIN_HDR, pseudoHeaderSum(src, dst, PROTO_TCP, TCP_MIN_HDR)));
    out.push(at, v + RST_LEN);
  }
}
