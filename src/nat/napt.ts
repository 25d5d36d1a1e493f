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
import { IPV4_OK, PROTO_AH, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
  IPV4_ERR_CHECKSUM, IPV4_ERR_IHL, IPV4_ERR_TOTAL_LEN, IPV4_ERR_TRUNCATED, IPV4_ERR_VERSION,
} from '../wire/ipv4';
import { VNET_OK, VnetHeader } from '../wire/vnet';
import { Drop, DropCounters, Verdict } from '../core/verdict';
import { TxList } from '../core/tx-list';
import { FragmentTracker } from './fragments';
import type { Forwards } from './forwards';
import { SLOT_TCP, SLOT_UDP, SessionListener, SessionTable } from './sessions';
import { IcmpNat } from './icmp';
import { NatTimers, Transport } from './transport';
import { restoreHop, setAddresses } from './rewrite';
import { Packet, Tracker, TrackerRegistry } from './tracker';

export type { NatTimers };

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

const TRANSLATED = Verdict.TRANSLATED;
const HELD = Verdict.HELD;
const TO_KERNEL = Verdict.TO_KERNEL;

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
    this.lanNet = Int32Array.from(opts.lanPrefixes.map((p) => p[0] & p[1]));
    this.lanMask = Int32Array.from(opts.lanPrefixes.map((p) => p[1]));
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
   * A reload's new timers and filtering: new entries get them, and so do the
   * existing ones (sessions' deadlines are recomputed from their last packet,
   * fragment deadlines move by the change). Not the packet path.
   */
  configure(timers: NatTimers, endpointIndependentFiltering: boolean): void {
    const current = this.opts.timers;
    const fragmentDelta = timers.fragmentMs - current.fragmentMs;
    // The one timers object NAPT, the transport and the ICMP translator share.
    Object.assign(current, timers);
    this.transport.endpointIndependentFiltering = endpointIndependentFiltering;
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

  /** Translates the packet at `off` (vnet header included) of `len` bytes and queues what is to be sent. */
  process(off: number, len: number, out: TxList): void {
    const buf = this.arena;
    const p = this.pkt;
    const v = this.opts.vnetLen;
    if (v > 0 && this.vnet.parse(buf, off, len) !== VNET_OK) { this.drops.counts[Drop.VNET_TRUNCATED]++; return; }
    p.vflags = v > 0 ? this.vnet.flags : 0;
    p.publicAddr = this.table.publicAddr;
    p.session = -1;
    const ip = p.ip;
    const ipOff = off + v;
    const err = ip.parse(buf, ipOff, len - v, true, true);
    if (err !== IPV4_OK) { this.drops.counts[IP_ERR_TO_DROP[err]]++; return; }
    const sendLen = v + ip.totalLen;
    p.src = ip.src;
    p.dst = ip.dst;
    const outbound = this.isLan(p.src);
    let verdict: number;
    if (outbound) verdict = this.outbound(p, out);
    else if (p.dst === this.table.publicAddr) verdict = this.inbound(p, out);
    else verdict = Drop.NOT_OURS;
    if (verdict >= 0) { this.drops.counts[verdict]++; return; }
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
    const dst = p.dst;
    const proto = ip.proto;
    let r: Verdict;
    if (proto === PROTO_TCP || proto === PROTO_UDP) {
      const owner = this.pairOwner(p);
      if (owner !== 0) {
        r = this.pairCheck(p);
        if (r === TRANSLATED) r = this.trackers.at(owner).outbound(p);
      } else {
        r = this.transport.outbound(p);
        // Hairpinning (RFC 4787 REQ-9, RFC 5382 REQ-8): a LAN host addressed
        // another one's public endpoint; the inbound half runs on the same packet.
        if (r === TRANSLATED && dst === this.table.publicAddr) r = this.transport.inbound(p);
      }
    } else if (proto === PROTO_ICMP) {
      return this.icmp.outbound(p);
    } else {
      const t = this.trackers.byProto[proto];
      if (t === 0) return proto === PROTO_AH ? Drop.AH_REFUSED : Drop.UNKNOWN_PROTOCOL;
      r = this.trackers.at(t).outbound(p);
    }
    if (r === TRANSLATED && ip.isFragment) this.rememberAndRelease(p.src, dst, proto, ip.id, ip.src, ip.dst, out);
    return r;
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
        return r === TRANSLATED ? this.deliver(p, this.trackers.at(owner), out) : r;
      }
      const r = this.transport.inbound(p);
      if (r === TRANSLATED && ip.isFragment) this.rememberAndRelease(p.src, p.dst, proto, ip.id, ip.src, ip.dst, out);
      return r;
    }
    if (proto === PROTO_ICMP) return this.ownIcmp(this.icmp.inbound(p), p, out);
    const t = this.trackers.byProto[proto];
    if (t === 0) return proto === PROTO_AH ? Drop.AH_REFUSED : Drop.UNKNOWN_PROTOCOL;
    return this.deliver(p, this.trackers.at(t), out);
  }

  /**
   * Asks a tracker where an inbound packet goes and sends it there: copies
   * to hosts 1.. go out from borrowed hold slots (guessing, spec §4.3 step 4),
   * the packet itself to host 0. Later fragments follow host 0.
   */
  private deliver(p: Packet, tracker: Tracker, out: TxList): Verdict {
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
    if (ip.isFragment) this.rememberAndRelease(p.src, pub, ip.proto, ip.id, p.src, to.addr[0], out);
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
