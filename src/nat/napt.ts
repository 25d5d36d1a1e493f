/**
 * The translation step of the packet path: parse views -> look up state ->
 * translate -> checksum, for one packet at a time, in place, in the shared
 * arena. Pure: no I/O, no clock reads (the caller sets `now` per batch), no
 * allocation, no string keys.
 *
 * Direction is decided by addresses: a source inside a LAN prefix is
 * outbound; a destination equal to the public address is inbound. TCP, UDP
 * and ICMP are NAPT's own (transport.ts, icmp.ts); other protocols, and the
 * port pairs and sessions the helpers registered for, go to their Tracker
 * (tracker.ts). Fragments follow their first fragment's translation
 * (fragments.ts).
 */
import { IPV4_DST, IPV4_OK, IPV4_SRC, PROTO_AH, PROTO_ESP, PROTO_GRE, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
  IPV4_ERR_CHECKSUM, IPV4_ERR_IHL, IPV4_ERR_TOTAL_LEN, IPV4_ERR_TRUNCATED, IPV4_ERR_VERSION,
} from '../wire/ipv4';
import { VNET_OK, VnetHeader } from '../wire/vnet';
import { isIcmpQueryRequest } from '../wire/icmp';
import { Drop, DropCounters, Verdict } from '../core/verdict';
import { TxList } from '../core/tx-list';
import { FragmentTracker } from './fragments';
import type { Forwards } from './forwards';
import { SLOT_TCP, SLOT_UDP, SessionListener, SessionTable } from './sessions';
import { Refusals } from './refuse';
import { IcmpNat } from './icmp';
import { NatTimers, Transport } from './transport';
import { restoreHop, setAddresses, setUdpAddress } from './rewrite';
import { HairpinPeers } from './hairpin';
import { NO_FORWARD } from './forwards';
import { Packet, Tracker, TrackerRegistry } from './tracker';

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

export class Napt implements SessionListener {
  readonly drops = new DropCounters();
  readonly traffic = new Float64Array(4);
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

  /** Translates the packet at `off` (vnet header included) of `len` bytes and queues what is to be sent. */
  process(off: number, len: number, out: TxList): void {
    const buf = this.arena;
    const p = this.pkt;
    const v = this.opts.vnetLen;
    if (v > 0 && this.vnet.parse(buf, off, len) !== VNET_OK) { this.drops.counts[Drop.VNET_TRUNCATED]++; return; }
    p.vflags = v > 0 ? this.vnet.flags : 0;
    p.session = -1;
    const ip = p.ip;
    const ipOff = off + v;
    const err = ip.parse(buf, ipOff, len - v, true, true);
    if (err !== IPV4_OK) { this.drops.counts[IP_ERR_TO_DROP[err]]++; return; }
    const sendLen = v + ip.totalLen;
    p.src = ip.src;
    p.dst = ip.dst;
    const outbound = this.isLan(p.src);
    const t = this.table;
    let verdict: number;
    if (outbound) {
      // Paired pooling: every packet of a LAN host leaves from its one public address.
      p.pubIdx = t.addressCount === 1 ? 0 : t.hosts.addressOf(p.src);
      p.publicAddr = t.publicAddress(p.pubIdx);
      verdict = this.outbound(p, out);
    } else {
      p.pubIdx = t.publicIndexOf(p.dst);
      p.publicAddr = p.dst;
      verdict = p.pubIdx >= 0 ? this.inbound(p, out) : Drop.NOT_OURS;
    }
    if (verdict >= 0) {
      this.drops.counts[verdict]++;
      if (outbound && REFUSED[verdict] === 1) this.refuse(off, out);
      return;
    }
    if (verdict === HELD) return;
    if (verdict === TRANSLATED) {
      const dir = outbound ? T_PKTS_OUT : T_PKTS_IN;
      this.traffic[dir]++;
      this.traffic[dir + 2] += ip.totalLen;
    }
    restoreHop(buf, ipOff);
    out.push(off, sendLen);
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

  /** Returns TRANSLATED, HELD or a drop reason; a hairpinned packet also runs the inbound half. */
  private outbound(p: Packet, out: TxList): Verdict {
    const ip = p.ip;
    if (ip.isLaterFragment) return this.laterFragment(p);
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
      if (ip.payloadLen > 0 && isIcmpQueryRequest(p.buf[ip.payloadOff]) && this.table.publicIndexOf(dst) >= 0) return Drop.NO_MAPPING;
      r = this.icmp.outbound(p);
      // An error about a hairpinned packet goes on to the host it quotes.
      if (r === TRANSLATED && this.hairpin(p, ip.dst)) r = this.icmp.inbound(p);
      return r;
    } else {
      const t = this.trackers.byProto[proto];
      if (t === 0) return proto === PROTO_AH ? Drop.AH_REFUSED : Drop.UNKNOWN_PROTOCOL;
      const pub = this.table.publicIndexOf(dst);
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
    if (ip.isLaterFragment) return this.laterFragment(p);
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
   * the packet itself to host 0. Later fragments (which arrive from
   * `arrivedSrc`, the LAN host of a hairpinned packet) follow host 0.
   */
  private deliver(p: Packet, tracker: Tracker, out: TxList, arrivedSrc: number): Verdict {
    p.to.count = 0;
    const r = tracker.inbound(p);
    if (r !== TRANSLATED) return r;
    const ip = p.ip;
    const to = p.to;
    const n = to.count;
    const f = this.frags;
    const buf = p.buf;
    const v = this.opts.vnetLen;
    const len = v + ip.totalLen;
    const pub = p.dst;
    const partial = p.partial;
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

  /** A fragment without transport header: follow its datagram's translation, or hold it until the first fragment comes. */
  private laterFragment(p: Packet): Verdict {
    const ip = p.ip;
    const f = this.frags;
    const src = ip.src;
    const dst = ip.dst;
    const key = FragmentTracker.key(ip.proto, ip.id);
    const d = f.find(src, dst, key, p.now);
    if (d < 0) {
      const len = this.opts.vnetLen + ip.totalLen;
      if (len > f.holdSlotSize) return Drop.FRAGMENT_TOO_BIG;
      const held = f.hold(this.arena, ip.off - this.opts.vnetLen, len, src, dst, key, p.now + this.opts.timers.fragmentMs);
      return held ? HELD : Drop.FRAGMENT_HOLD_FULL;
    }
    setAddresses(p.buf, ip.off, src, dst, f.dNewSrc[d], f.dNewDst[d]);
    return TRANSLATED;
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
}
