/**
 * The NAPT table for TCP, UDP and ICMP queries.
 *
 * A *mapping* binds a LAN endpoint (proto, address, port) to a public
 * address and port; it is endpoint-independent (RFC 4787 REQ-1, RFC 5382
 * REQ-1): every destination of that LAN endpoint gets the same public
 * endpoint. A *session* is one (mapping, remote address, remote port)
 * conversation. Each LAN host has one public address (paired pooling, RFC
 * 4787 REQ-2; the caller chooses it, see hosts.ts).
 *
 * Port overlapping (RFC 7857 §3): a public port may be shared by several
 * mappings as long as every session's 5-tuple (proto, public address,
 * public port, remote address, remote port) stays unique, because inbound
 * packets are matched on the whole 5-tuple. A mapping takes an unused port
 * when there is one and shares only when its class has none left, so
 * sharing, and the conflicts it can bring (a LAN endpoint whose port
 * already carries the same remote endpoint for another mapping), happen
 * only under port pressure. With endpoint-independent filtering a port
 * belongs to one mapping (`exclusivePorts`): an inbound packet from a new
 * remote must find the mapping by its port alone.
 *
 * A closed TCP session (tcpIsClosed) holds its 5-tuple for the transitory
 * timeout, but a new outbound SYN of another LAN endpoint may take it over
 * when the new sequence number lies beyond the old connection's (as
 * netfilter's nf_nat_used_tuple_harder: a peer in TIME_WAIT accepts such a
 * SYN, RFC 1122 §4.2.2.13). The new session is guarded: an inbound segment
 * must acknowledge data of the new connection (after its ISN, at most what
 * it sent), so stray segments of the old connection never reach the new
 * host.
 *
 * Layout: a session's hot fields are one 64-byte row (SESSION_WORDS int32
 * words, the expiry a float64 in the same buffer), so a packet of an
 * existing flow reads one index slot and one row; the rest are columns.
 * Lookups (TupleIndex, one slot per entry):
 *  - outbound: (lan, remote, lanPort << 16 | remotePort, proto) -> session
 *  - inbound:  (remote, pubPort << 16 | remotePort, pubIdx, proto) -> session
 *  - mappings: (lan, lanPort, 0, proto) -> mapping
 *  - exclusive ports: (pubIdx, pubPort, 0, proto) -> mapping
 * No string keys, no allocation after construction.
 */
import { TupleIndex } from '../core/tuple-index';
import { EV_DESTROY, EV_NEW, EV_UPDATE, Journal } from '../core/journal';
import { PROTO_ICMP, PROTO_TCP, PROTO_UDP } from '../wire/ipv4';
import { SlotPool } from '../core/slot-pool';
import { columns, Serials, SoaRows } from '../core/table';
import { PortSpace } from './port-space';
import { tcpIsClosed } from './tcp-tracker';
import { HostLimits, LanHosts } from './hosts';
import { BudgetSessions, EIF_TARGET, InboundBudget, InboundLimits } from './budget';

export { Serials };

export const TABLE_SESSIONS = 1;

/** Index of a protocol's public port space. */
export const SLOT_TCP = 0;
export const SLOT_UDP = 1;
export const SLOT_ICMP = 2;
export const SLOT_COUNT = 3;

export function protoSlot(proto: number): number {
  return proto === PROTO_TCP ? SLOT_TCP : proto === PROTO_UDP ? SLOT_UDP : proto === PROTO_ICMP ? SLOT_ICMP : -1;
}

export interface PortPolicy {
  /** Public ports for LAN ports >= 1024 (and for all ports when lowRange is null). */
  range: [number, number];
  /** Public ports for LAN ports < 1024 (RFC 4787 REQ-3a), or null to use range. */
  lowRange: [number, number] | null;
  /** Keep the LAN port when it is free and in its class's range. */
  preserve: boolean;
}

export interface SessionTableOptions {
  /** One mapping per public port (endpoint-independent filtering) instead of port overlapping. */
  exclusivePorts?: boolean;
  /** Per-LAN-host budgets (default: none beyond the table). */
  hostLimits?: HostLimits;
  /** LAN hosts tracked at once (default: 1024, or the capacity up to 65536). */
  hostCapacity?: number;
  /** Budgets of the sessions the outside creates (default: none beyond the table). */
  inboundLimits?: InboundLimits;
}

/** createOut / createMapping results besides a record number. */
export const TABLE_FULL = -1;
export const PORTS_EXHAUSTED = -2;
/** The LAN endpoint's public port already carries this remote endpoint for another mapping. */
export const MAPPING_CONFLICT = -3;

/** At most this many public addresses (a /24). */
export const MAX_PUBLIC_ADDRESSES = 256;

/** Session flags (SESSION_WORDS row, word W_PORTS bits 24..31). */
/** Taken over from a closed session: inbound segments must belong to the new connection. */
export const SF_GUARDED = 0x01;
/** Created by an inbound packet (forward, endpoint-independent filtering) and not yet answered by the LAN host. */
export const SF_UNANSWERED = 0x02;
/** Counted in its LAN host's sessions (hosts.ts). */
export const SF_HOST = 0x04;

/** Int32 words of a session row; the float64 expiry sits at F_EXPIRES of the row's 8 doubles. */
export const SESSION_WORDS = 16;
const W_MAP = 0;
const W_REM = 1;
/** Remote port | TCP state << 16 | flags << 24. */
const W_PORTS = 2;
/** Public address index << 16 | public port. */
const W_PUB = 3;
const W_LAN = 4;
/** LAN port | proto << 16. */
const W_LANPORT = 5;
const F_EXPIRES = 3;
/** TCP: end of the highest sequence number the LAN host sent. */
const W_SND_END = 8;
/** Last packet, whole seconds (uint32). */
const W_SEEN = 9;
const W_PKTS_OUT = 10;
const W_PKTS_IN = 11;
const W_BYTES_OUT = 12;
const W_BYTES_IN = 13;
/** High 16 bits of the packet counters (out | in << 16), then of the byte counters. */
const W_PKTS_HI = 14;
const W_BYTES_HI = 15;

/** Random public ports a new mapping tries once no port is unused (port overlapping). */
const SHARE_PROBES = 16;
/** A LAN endpoint that found no public port is answered from the negative cache this long. */
export const NEGATIVE_MS = 500;
const NEGATIVE_SLOTS = 4096;
/**
 * A remote endpoint towards which a share found no free 5-tuple (all probed
 * ports already lead there): new LAN endpoints to it are refused this long
 * without probing, so a spray of new flows to a saturated remote costs one
 * lookup each, not SHARE_PROBES random reads of the 5-tuple index.
 */
export const REMOTE_NEGATIVE_MS = 100;

const NONE = -1;
const TWO32 = 4294967296;

/** How findOut/findIn look an entry up: probing (the packet path), */
export const LOOKUP_FIND = 0;
/** its home slot only (TupleIndex.peek), */
export const LOOKUP_PEEK = 1;
/** or only where its home slot lies (TupleIndex.homeOf), reading nothing. */
export const LOOKUP_HOME = 2;

/**
 * The 5-tuple indexes' port key: a LAN or public port and the remote port in
 * one word. outIndex is keyed (lan, rem, portPair(lanPort, remPort), proto),
 * inIndex (rem, portPair(pubPort, remPort), pubIdx, proto).
 */
function portPair(port: number, remPort: number): number {
  return (port << 16) | remPort;
}

function look(ix: TupleIndex, k0: number, k1: number, k2: number, tag: number, how: number): number {
  return how === LOOKUP_FIND ? ix.get(k0, k1, k2, tag) : how === LOOKUP_PEEK ? ix.peek(k0, k1, k2, tag) : ix.homeOf(k0, k1, k2, tag);
}

/** Told about every session just before it is removed (expiry, replacement, takeover, `conns delete`, an address change). */
export interface SessionListener {
  sessionRemoved(s: number): void;
}

export class SessionTable implements BudgetSessions {
  readonly capacity: number;
  readonly journal: Journal | null;
  readonly exclusivePorts: boolean;

  // Public addresses.
  private readonly pub: Int32Array;
  private readonly pubIndex: TupleIndex;
  /** Per address, per protocol slot: the port space, made on first use. */
  private readonly spaces: Array<Array<PortSpace | null>>;
  readonly addressCount: number;

  // Mappings.
  readonly mProto: Uint8Array;
  readonly mLan: Int32Array;
  readonly mLanPort: Uint16Array;
  readonly mPubPort: Uint16Array;
  readonly mPubIdx: Uint16Array;
  readonly mRefs: Int32Array;
  private readonly mapIndex: TupleIndex;
  private readonly portIndex: TupleIndex | null;
  private readonly mFree: SlotPool;
  mappingCount = 0;

  // Sessions.
  private readonly sRows: SoaRows;
  readonly sInUse: Uint8Array;
  readonly sSerial: Float64Array;
  /** SESSION_WORDS words per session. */
  readonly hot: Int32Array;
  private readonly hotF: Float64Array;
  readonly sCreated: Float64Array;
  /** Guarded sessions: the ISN of the LAN host's SYN. */
  private readonly sIsn: Int32Array;
  private readonly outIndex: TupleIndex;
  private readonly inIndex: TupleIndex;
  /** Called with every session about to be removed; set by the engine (its helpers keep state per session). */
  listener: SessionListener | null = null;
  private readonly removeRow = (s: number): void => this.removeSession(s);
  readonly countBySlot = new Int32Array(SLOT_COUNT);
  /** Ids of this table's sessions; the VPN tables take theirs from here too (one id space). */
  readonly serials = new Serials();
  private sweepCursor = 0;
  /** Sessions taken over from closed ones (a counter for `stats`). */
  takeovers = 0;
  /** The LAN hosts with sessions: their public address (paired pooling) and budgets. */
  readonly hosts: LanHosts;
  /** Unanswered sessions the outside created, per forward and remote. */
  readonly inbound: InboundBudget;

  // Negative cache of LAN endpoints that found no public port: direct-mapped.
  private readonly negKey: Int32Array;
  private readonly negUntil: Float64Array;
  private readonly remNegKey: Int32Array;
  private readonly remNegUntil: Float64Array;

  /** The public port policy for new mappings (a reload may replace it: setPorts). */
  private ports: PortPolicy;
  /** Per protocol slot: ports no mapping takes dynamically. */
  private readonly reserved: number[][] = [[], [], []];
  /**
   * Most sessions at once: `capacity` (allocated at start) or less after a
   * reload lowered limits.maxSessions; beyond it new sessions are refused as
   * TABLE_FULL while the existing ones stay until they end.
   */
  limit: number;
  private random: () => number;

  constructor(capacity: number, publicAddrs: number | readonly number[], ports: PortPolicy, journal: Journal | null,
    random: () => number = Math.random, options: SessionTableOptions = {}) {
    const addrs = typeof publicAddrs === 'number' ? [publicAddrs] : publicAddrs;
    if (addrs.length === 0 || addrs.length > MAX_PUBLIC_ADDRESSES) throw new RangeError(`1 to ${MAX_PUBLIC_ADDRESSES} public addresses`);
    this.capacity = capacity;
    this.limit = capacity;
    this.ports = ports;
    this.journal = journal;
    this.random = random;
    this.exclusivePorts = options.exclusivePorts ?? false;
    this.addressCount = addrs.length;
    this.pub = Int32Array.from(addrs, (a) => a | 0);
    this.pubIndex = new TupleIndex(MAX_PUBLIC_ADDRESSES);
    this.pub.forEach((a, i) => this.pubIndex.set(a, 0, 0, 0, i));
    this.spaces = addrs.map(() => [null, null, null]);

    [this.mProto] = columns(Uint8Array, capacity, 1);
    [this.mLan, this.mRefs] = columns(Int32Array, capacity, 2);
    [this.mLanPort, this.mPubPort, this.mPubIdx] = columns(Uint16Array, capacity, 3);
    this.mapIndex = new TupleIndex(capacity);
    this.portIndex = this.exclusivePorts ? new TupleIndex(capacity) : null;
    this.mFree = new SlotPool(capacity);

    this.sRows = new SoaRows(capacity);
    this.sInUse = this.sRows.inUse;
    this.sSerial = this.sRows.serial;
    const rows = new ArrayBuffer(capacity * SESSION_WORDS * 4);
    this.hot = new Int32Array(rows);
    this.hotF = new Float64Array(rows);
    this.sCreated = new Float64Array(capacity);
    this.sIsn = new Int32Array(capacity);
    this.outIndex = new TupleIndex(capacity);
    this.inIndex = new TupleIndex(capacity);
    this.negKey = new Int32Array(NEGATIVE_SLOTS * 2);
    this.negUntil = new Float64Array(NEGATIVE_SLOTS);
    this.remNegKey = new Int32Array(NEGATIVE_SLOTS * 3);
    this.remNegUntil = new Float64Array(NEGATIVE_SLOTS);
    this.hosts = new LanHosts(options.hostCapacity ?? Math.min(65536, Math.max(1024, capacity)), this.pub,
      options.hostLimits ?? { maxSessions: capacity, ratePerSecond: 0, burst: 0 });
    this.inbound = new InboundBudget(this, capacity, options.inboundLimits ?? { perTarget: capacity, perRemote: capacity, unansweredMs: Infinity });
    if (this.exclusivePorts) this.inbound.prepare(EIF_TARGET);
  }

  /** True while record `s` holds the session with this serial and it is still unanswered (InboundBudget). */
  unansweredHolds(s: number, serial: number): boolean {
    return this.sInUse[s] === 1 && this.sSerial[s] === serial && (this.flagsOf(s) & SF_UNANSWERED) !== 0;
  }

  /**
   * Session `s`, created by an inbound packet, is unanswered from now on:
   * it counts in the budget of `target` (budget.ts) until its LAN host sends.
   */
  markUnanswered(s: number, target: number): void {
    this.setFlags(s, this.flagsOf(s) | SF_UNANSWERED);
    this.inbound.added(target, this.remOf(s), s, this.sSerial[s]);
  }

  /** The LAN host sent on an unanswered session: it leaves the inbound budget and gets its normal timers. */
  answered(s: number): void {
    this.setFlags(s, this.flagsOf(s) & ~SF_UNANSWERED);
    this.inbound.released(this.remOf(s));
  }

  get sessionCount(): number { return this.sRows.count; }

  // ---- public addresses ----------------------------------------------------

  /** The first public address (the only one in shared mode). */
  get publicAddr(): number { return this.pub[0]; }

  /** Shared mode's WAN address changed: the one public address becomes `addr` (mappings keep their ports). */
  set publicAddr(addr: number) {
    this.pubIndex.delete(this.pub[0], 0, 0, 0);
    this.pub[0] = addr | 0;
    this.pubIndex.set(addr | 0, 0, 0, 0, 0);
  }

  /** Every public address, by index (read-only). */
  get publicAddrs(): Int32Array { return this.pub; }

  /** Public address number `i`. */
  publicAddress(i: number): number { return this.pub[i]; }

  /** The index of a public address, or -1 when `addr` is none of them. */
  publicIndexOf(addr: number): number {
    return this.addressCount === 1 ? (addr === this.pub[0] ? 0 : NONE) : this.pubIndex.get(addr, 0, 0, 0);
  }

  private space(pubIdx: number, slot: number): PortSpace {
    let sp = this.spaces[pubIdx][slot];
    if (sp === null) {
      sp = new PortSpace(this.ports.range, slot === SLOT_ICMP ? null : this.ports.lowRange);
      for (const p of this.reserved[slot]) sp.reserve(p);
      this.spaces[pubIdx][slot] = sp;
    }
    return sp;
  }

  /**
   * A reload's port policy for new mappings: every port space is rebuilt
   * with the new ranges, the mappings that exist keep their ports (one left
   * outside the new range still counts, so its port is never handed out
   * twice) and the reserved ports stay reserved. Not the packet path.
   */
  setPorts(ports: PortPolicy): void {
    this.ports = ports;
    for (const per of this.spaces) per.fill(null);
    for (let m = 0; m < this.capacity; m++) {
      if (this.mRefs[m] > 0) this.space(this.mPubIdx[m], protoSlot(this.mProto[m])).take(this.mPubPort[m]);
    }
  }

  /** The public port policy for new mappings. */
  get portPolicy(): Readonly<PortPolicy> { return this.ports; }

  /**
   * Ports of protocol slot `slot` that no mapping takes dynamically from now
   * on (forwarded ports inside a default dynamic range; not the packet path).
   * Mappings already on them keep them.
   */
  setReserved(slot: number, ports: readonly number[]): void {
    const old = this.reserved[slot];
    this.reserved[slot] = [...ports];
    for (const per of this.spaces) {
      const sp = per[slot];
      if (sp === null) continue;
      for (const p of old) sp.unreserve(p);
      for (const p of ports) sp.reserve(p);
    }
  }

  // ---- session fields --------------------------------------------------------

  mapOf(s: number): number { return this.hot[s * SESSION_WORDS + W_MAP]; }
  remOf(s: number): number { return this.hot[s * SESSION_WORDS + W_REM]; }
  remPortOf(s: number): number { return this.hot[s * SESSION_WORDS + W_PORTS] & 0xffff; }
  stateOf(s: number): number { return (this.hot[s * SESSION_WORDS + W_PORTS] >>> 16) & 0xff; }
  flagsOf(s: number): number { return this.hot[s * SESSION_WORDS + W_PORTS] >>> 24; }
  lanOf(s: number): number { return this.hot[s * SESSION_WORDS + W_LAN]; }
  lanPortOf(s: number): number { return this.hot[s * SESSION_WORDS + W_LANPORT] & 0xffff; }
  protoOf(s: number): number { return this.hot[s * SESSION_WORDS + W_LANPORT] >>> 16; }
  pubPortOf(s: number): number { return this.hot[s * SESSION_WORDS + W_PUB] & 0xffff; }
  pubIdxOf(s: number): number { return this.hot[s * SESSION_WORDS + W_PUB] >>> 16; }
  pubAddrOf(s: number): number { return this.pub[this.hot[s * SESSION_WORDS + W_PUB] >>> 16]; }
  expiresOf(s: number): number { return this.hotF[s * 8 + F_EXPIRES]; }
  /** Time of the last packet (ms, whole seconds). */
  lastSeenOf(s: number): number { return (this.hot[s * SESSION_WORDS + W_SEEN] >>> 0) * 1000; }
  pktsOut(s: number): number { return this.wide(s, W_PKTS_OUT, W_PKTS_HI, 0); }
  pktsIn(s: number): number { return this.wide(s, W_PKTS_IN, W_PKTS_HI, 16); }
  bytesOut(s: number): number { return this.wide(s, W_BYTES_OUT, W_BYTES_HI, 0); }
  bytesIn(s: number): number { return this.wide(s, W_BYTES_IN, W_BYTES_HI, 16); }

  private wide(s: number, lo: number, hi: number, shift: number): number {
    const o = s * SESSION_WORDS;
    return ((this.hot[o + hi] >>> shift) & 0xffff) * TWO32 + (this.hot[o + lo] >>> 0);
  }

  setState(s: number, state: number): void {
    const o = s * SESSION_WORDS + W_PORTS;
    this.hot[o] = (this.hot[o] & ~0xff0000) | (state << 16);
  }

  setFlags(s: number, flags: number): void {
    const o = s * SESSION_WORDS + W_PORTS;
    this.hot[o] = (this.hot[o] & 0xffffff) | (flags << 24);
  }

  setExpires(s: number, expires: number): void { this.hotF[s * 8 + F_EXPIRES] = expires; }
  setLastSeen(s: number, now: number): void { this.hot[s * SESSION_WORDS + W_SEEN] = (now / 1000) >>> 0; }

  /**
   * A packet of `bytes` in one direction: counters, last-seen time and the
   * new expiry; outbound TCP also moves the highest sequence end sent.
   */
  touch(s: number, outbound: boolean, bytes: number, now: number, expires: number): void {
    const h = this.hot;
    const o = s * SESSION_WORDS;
    this.hotF[s * 8 + F_EXPIRES] = expires;
    h[o + W_SEEN] = (now / 1000) >>> 0;
    const shift = outbound ? 0 : 16;
    const pk = o + (outbound ? W_PKTS_OUT : W_PKTS_IN);
    const p = (h[pk] >>> 0) + 1;
    if (p > 0xffffffff) h[o + W_PKTS_HI] += 1 << shift;
    h[pk] = p | 0;
    const bk = o + (outbound ? W_BYTES_OUT : W_BYTES_IN);
    const b = (h[bk] >>> 0) + bytes;
    if (b > 0xffffffff) h[o + W_BYTES_HI] += 1 << shift;
    h[bk] = b | 0;
  }

  /** Restores the counters (the state store, not the packet path); 48 bits each. */
  setCounters(s: number, pktsOut: number, pktsIn: number, bytesOut: number, bytesIn: number): void {
    this.setPktsOut(s, pktsOut);
    this.setPktsIn(s, pktsIn);
    this.setBytesOut(s, bytesOut);
    this.setBytesIn(s, bytesIn);
  }

  setPktsOut(s: number, v: number): void { this.setWide(s, W_PKTS_OUT, W_PKTS_HI, 0, v); }
  setPktsIn(s: number, v: number): void { this.setWide(s, W_PKTS_IN, W_PKTS_HI, 16, v); }
  setBytesOut(s: number, v: number): void { this.setWide(s, W_BYTES_OUT, W_BYTES_HI, 0, v); }
  setBytesIn(s: number, v: number): void { this.setWide(s, W_BYTES_IN, W_BYTES_HI, 16, v); }

  private setWide(s: number, lo: number, hi: number, shift: number, v: number): void {
    const h = this.hot;
    const o = s * SESSION_WORDS;
    h[o + lo] = v % TWO32;
    h[o + hi] = (h[o + hi] & ~(0xffff << shift)) | ((Math.floor(v / TWO32) & 0xffff) << shift);
  }

  /** TCP, outbound: the segment's sequence space ends at `end`; kept when it is beyond what was sent. */
  sent(s: number, end: number): void {
    const o = s * SESSION_WORDS + W_SND_END;
    if (((end - this.hot[o]) | 0) > 0) this.hot[o] = end;
  }

  /**
   * A guarded session (taken over from a closed one): whether an inbound
   * segment with these flags and acknowledgment number belongs to the new
   * connection, i.e. acknowledges something after its ISN and no more than
   * it sent. A segment without ACK (a bare RST or SYN) cannot be told apart
   * from the old connection's and is refused.
   */
  guardAccepts(s: number, hasAck: boolean, ack: number): boolean {
    if (!hasAck) return false;
    return ((ack - this.sIsn[s]) | 0) > 0 && ((ack - this.hot[s * SESSION_WORDS + W_SND_END]) | 0) <= 0;
  }

  /** Whether `seq` (of a quoted segment the public side sent) lies in a guarded session's own sequence space. */
  guardSent(s: number, seq: number): boolean {
    return ((seq - this.sIsn[s]) | 0) >= 0 && ((seq - this.hot[s * SESSION_WORDS + W_SND_END]) | 0) <= 0;
  }

  // ---- lookups -----------------------------------------------------------

  /** Session for an outbound packet, or -1; `how` other than LOOKUP_FIND: the batch warm-up (warmLookup). */
  findOut(proto: number, lan: number, lanPort: number, rem: number, remPort: number, how = LOOKUP_FIND): number {
    return look(this.outIndex, lan, rem, portPair(lanPort, remPort), proto, how);
  }

  /** Session for an inbound packet to public address `pubIdx`, or -1; `how` as for findOut. */
  findIn(proto: number, pubIdx: number, pubPort: number, rem: number, remPort: number, how = LOOKUP_FIND): number {
    return look(this.inIndex, rem, portPair(pubPort, remPort), pubIdx, proto, how);
  }

  /**
   * Batch warm-up (Napt.warm) of the index entry an outbound (`fromLan`) or
   * inbound TCP/UDP packet will look up. LOOKUP_HOME: where its home slot
   * lies, as offset << 1 | inbound, for warmSlot(), reading nothing of the
   * index; LOOKUP_PEEK: the session its home slot holds. -1 when the packet
   * is to no public address, or (PEEK) its home slot holds another key.
   */
  warmLookup(how: number, fromLan: boolean, proto: number, src: number, sport: number, dst: number, dport: number): number {
    if (fromLan) {
      const r = this.findOut(proto, src, sport, dst, dport, how);
      return how === LOOKUP_HOME ? r << 1 : r;
    }
    const pubIdx = this.publicIndexOf(dst);
    if (pubIdx < 0) return NONE;
    const r = this.findIn(proto, pubIdx, dport, src, sport, how);
    return how === LOOKUP_HOME ? (r << 1) | 1 : r;
  }

  /** Batch warm-up: reads the index slot warmLookup(LOOKUP_HOME) named. */
  warmSlot(home: number): number {
    return ((home & 1) === 0 ? this.outIndex : this.inIndex).word(home >>> 1);
  }

  /** Batch warm-up, last pass: reads session `s`'s row; returns a word of it for the caller to fold. */
  warmRow(s: number): number {
    return this.hot[s * SESSION_WORDS + W_PORTS];
  }

  /** Mapping of a LAN endpoint, or -1. */
  findMapping(proto: number, lan: number, lanPort: number): number {
    return this.mapIndex.get(lan, lanPort, 0, proto);
  }

  /**
   * The mapping that owns a public port under endpoint-independent filtering
   * (exclusivePorts), or -1; with port overlapping a port has no one owner.
   */
  mappingOfPort(proto: number, pubIdx: number, pubPort: number): number {
    return this.portIndex === null ? NONE : this.portIndex.get(pubIdx, pubPort, 0, proto);
  }

  /** Whether some mapping uses this public port (an inbound packet no session takes is then filtered, not unmapped). */
  portInUse(proto: number, pubIdx: number, pubPort: number): boolean {
    const sp = this.spaces[pubIdx][protoSlot(proto)];
    return sp !== null && sp.usersOf(pubPort) !== 0;
  }

  // ---- creation ----------------------------------------------------------

  /**
   * Creates a session for an outbound packet, under the LAN endpoint's
   * mapping when it has one, else under a new one on public address `pubIdx`.
   * `synSeq` is the sequence number of a TCP SYN (without ACK), which may
   * take over a closed session's 5-tuple, or null. Returns the session,
   * TABLE_FULL, PORTS_EXHAUSTED or MAPPING_CONFLICT.
   */
  createOut(proto: number, lan: number, lanPort: number, rem: number, remPort: number, now: number, state: number, expires: number,
    pubIdx = 0, synSeq: number | null = null): number {
    if (this.sRows.count >= this.limit) return TABLE_FULL;
    let m = this.mapIndex.get(lan, lanPort, 0, proto);
    let guarded = false;
    if (m === NONE) {
      if (this.negative(proto, lan, lanPort, now)) return PORTS_EXHAUSTED;
      m = this.newMapping(proto, lan, lanPort, pubIdx, rem, remPort, synSeq, now);
      if (m < 0) {
        if (m === PORTS_EXHAUSTED) this.remember(proto, lan, lanPort, now);
        return m;
      }
      guarded = this.tookOver;
    } else if (!this.exclusivePorts) {
      // EIM: the mapping's port, so the 5-tuple there must be free.
      const o = this.inIndex.get(rem, portPair(this.mPubPort[m], remPort), this.mPubIdx[m], proto);
      if (o !== NONE) {
        if (this.expiresOf(o) <= now) {
          this.removeSession(o);
        } else {
          if (!this.closedFor(o, synSeq)) return MAPPING_CONFLICT;
          this.takeOver(o);
          guarded = true;
        }
      }
    }
    const s = this.createSession(m, rem, remPort, now, state, expires);
    if (guarded && s >= 0) this.guard(s, synSeq as number);
    return s;
  }

  /** Set by newMapping: its port came with a taken-over closed session. */
  private tookOver = false;

  /**
   * A mapping for a new LAN endpoint: the LAN port itself when unused
   * (preservation), else a random unused port of its class, else (port
   * overlapping) a random port whose 5-tuple with this remote is free or
   * held by a closed session a SYN may take over. Returns it, TABLE_FULL
   * or PORTS_EXHAUSTED.
   */
  private newMapping(proto: number, lan: number, lanPort: number, pubIdx: number, rem: number, remPort: number,
    synSeq: number | null, now: number): number {
    this.tookOver = false;
    if (this.mFree.available === 0) return TABLE_FULL;
    const slot = protoSlot(proto);
    const sp = this.space(pubIdx, slot);
    const cls = sp.classOf(lanPort);
    let port = NONE;
    if (this.ports.preserve && sp.inClass(cls, lanPort) && sp.isUnused(lanPort)) port = lanPort;
    if (port < 0) port = sp.randomFree(cls, this.random());
    if (port < 0 && !this.exclusivePorts) {
      const key = (pubIdx << 2) | cls;
      if (this.remoteSaturated(proto, key, rem, remPort, now)) return PORTS_EXHAUSTED;
      port = this.sharePort(sp, cls, pubIdx, proto, lanPort, rem, remPort, synSeq, now);
      if (port < 0) this.rememberRemote(proto, key, rem, remPort, now);
    }
    if (port < 0) return PORTS_EXHAUSTED;
    return this.placeMapping(proto, lan, lanPort, pubIdx, port);
  }

  /** Port overlapping: a used port of class `cls` whose 5-tuple with (rem, remPort) is free, or -1. */
  private sharePort(sp: PortSpace, cls: number, pubIdx: number, proto: number, lanPort: number, rem: number, remPort: number,
    synSeq: number | null, now: number): number {
    const lo = sp.low(cls);
    const size = sp.size(cls);
    let closed = NONE;
    for (let i = 0; i <= SHARE_PROBES; i++) {
      // The LAN port first (preservation), then random ones.
      const port = i === 0 ? (this.ports.preserve && sp.inClass(cls, lanPort) ? lanPort : -1) : lo + Math.floor(this.random() * size);
      if (port < 0 || !sp.canShare(port)) continue;
      const o = this.inIndex.get(rem, portPair(port, remPort), pubIdx, proto);
      if (o === NONE) return port;
      if (this.expiresOf(o) <= now) {
        this.removeSession(o);
        return sp.canShare(port) ? port : NONE;
      }
      if (closed === NONE && this.closedFor(o, synSeq)) closed = o;
    }
    if (closed === NONE) return NONE;
    const port = this.pubPortOf(closed);
    this.takeOver(closed);
    this.tookOver = true;
    return sp.canShare(port) ? port : NONE;
  }

  /** Whether a SYN with sequence number `synSeq` may take over session `o`: TCP, closed, and the new sequence beyond the old. */
  private closedFor(o: number, synSeq: number | null): boolean {
    return synSeq !== null && this.protoOf(o) === PROTO_TCP && tcpIsClosed(this.stateOf(o)) &&
      ((synSeq - this.hot[o * SESSION_WORDS + W_SND_END]) | 0) > 0;
  }

  private takeOver(o: number): void {
    this.removeSession(o);
    this.takeovers++;
  }

  private guard(s: number, isn: number): void {
    this.setFlags(s, this.flagsOf(s) | SF_GUARDED);
    this.sIsn[s] = isn;
    this.hot[s * SESSION_WORDS + W_SND_END] = (isn + 1) | 0;
  }

  private placeMapping(proto: number, lan: number, lanPort: number, pubIdx: number, port: number): number {
    const m = this.mFree.take();
    this.space(pubIdx, protoSlot(proto)).take(port);
    this.mProto[m] = proto;
    this.mLan[m] = lan;
    this.mLanPort[m] = lanPort;
    this.mPubPort[m] = port;
    this.mPubIdx[m] = pubIdx;
    this.mRefs[m] = 0;
    this.mapIndex.set(lan, lanPort, 0, proto, m);
    if (this.portIndex !== null) this.portIndex.set(pubIdx, port, 0, proto, m);
    this.mappingCount++;
    return m;
  }

  /**
   * Creates the mapping LAN endpoint -> fixed public port (a forward, a
   * restored row). With exclusive ports the port must be unused; with
   * overlapping it must take another sharer. Returns the mapping, TABLE_FULL
   * or PORTS_EXHAUSTED.
   */
  createMapping(proto: number, lan: number, lanPort: number, pubIdx: number, pubPort: number): number {
    if (this.mFree.available === 0) return TABLE_FULL;
    const sp = this.space(pubIdx, protoSlot(proto));
    if (this.exclusivePorts ? sp.usersOf(pubPort) !== 0 : !sp.canTake(pubPort)) return PORTS_EXHAUSTED;
    return this.placeMapping(proto, lan, lanPort, pubIdx, pubPort);
  }

  /** Creates a session under an existing mapping. Returns TABLE_FULL when the table is full. */
  createSession(m: number, rem: number, remPort: number, now: number, state: number, expires: number): number {
    const s = this.initSession(m, rem, remPort, now, state, expires, this.serials.next);
    if (s < 0) return s;
    this.serials.next++;
    if (this.journal !== null) this.journal.push(EV_NEW, TABLE_SESSIONS, s, this.sSerial[s]);
    return s;
  }

  /**
   * Re-creates a persisted session at start (not the packet path): the
   * mapping keeps its public address and port and the session its serial; no
   * journal event, the row is already stored. Returns the session,
   * TABLE_FULL, PORTS_EXHAUSTED (the public port is taken, or the LAN
   * endpoint already mapped elsewhere) or MAPPING_CONFLICT (the 5-tuple is
   * taken).
   */
  restoreSession(proto: number, lan: number, lanPort: number, pubIdx: number, pubPort: number, rem: number, remPort: number,
    created: number, state: number, expires: number, serial: number): number {
    if (this.sRows.count >= this.limit) return TABLE_FULL;
    let m = this.mapIndex.get(lan, lanPort, 0, proto);
    if (m !== NONE && (this.mPubPort[m] !== pubPort || this.mPubIdx[m] !== pubIdx)) return PORTS_EXHAUSTED;
    if (this.inIndex.get(rem, portPair(pubPort, remPort), pubIdx, proto) !== NONE) return MAPPING_CONFLICT;
    if (m === NONE) {
      m = this.createMapping(proto, lan, lanPort, pubIdx, pubPort);
      if (m < 0) return m;
    }
    const s = this.initSession(m, rem, remPort, created, state, expires, serial);
    if (s < 0) return s;
    this.serials.seen(serial);
    // Its host keeps the address it had (paired pooling across restarts) and counts it.
    const h = this.hosts.record(lan, created, pubIdx);
    if (h >= 0) {
      this.hosts.restored(h);
      this.setFlags(s, SF_HOST);
    }
    return s;
  }

  /** The public address a LAN host's traffic uses (int32): its record's, else the one it would get. */
  addressOfHost(lan: number): number {
    return this.pub[this.hosts.addressOf(lan)];
  }

  private initSession(m: number, rem: number, remPort: number, now: number, state: number, expires: number, serial: number): number {
    const s = this.sRows.count < this.limit ? this.sRows.take(serial) : -1;
    if (s < 0) {
      if (this.mRefs[m] === 0) this.freeMapping(m);
      return TABLE_FULL;
    }
    const proto = this.mProto[m];
    const pubIdx = this.mPubIdx[m];
    const pubPort = this.mPubPort[m];
    const lan = this.mLan[m];
    const lanPort = this.mLanPort[m];
    const h = this.hot;
    const o = s * SESSION_WORDS;
    h[o + W_MAP] = m;
    h[o + W_REM] = rem;
    h[o + W_PORTS] = remPort | (state << 16);
    h[o + W_PUB] = (pubIdx << 16) | pubPort;
    h[o + W_LAN] = lan;
    h[o + W_LANPORT] = lanPort | (proto << 16);
    this.hotF[s * 8 + F_EXPIRES] = expires;
    h[o + W_SND_END] = 0;
    h[o + W_SEEN] = (now / 1000) >>> 0;
    h.fill(0, o + W_PKTS_OUT, o + SESSION_WORDS);
    this.sCreated[s] = now;
    this.outIndex.set(lan, rem, portPair(lanPort, remPort), proto, s);
    this.inIndex.set(rem, portPair(pubPort, remPort), pubIdx, proto, s);
    this.mRefs[m]++;
    this.countBySlot[protoSlot(proto)]++;
    return s;
  }

  // ---- negative cache --------------------------------------------------------

  private negSlot(proto: number, lan: number, lanPort: number): number {
    const h = Math.imul(lan ^ Math.imul((lanPort << 8) | proto, 0x9e3779b1), 0x85ebca6b);
    return (h ^ (h >>> 15)) & (NEGATIVE_SLOTS - 1);
  }

  /** This LAN endpoint found no public port within the last NEGATIVE_MS. */
  private negative(proto: number, lan: number, lanPort: number, now: number): boolean {
    const i = this.negSlot(proto, lan, lanPort);
    return this.negUntil[i] > now && this.negKey[2 * i] === lan && this.negKey[2 * i + 1] === ((lanPort << 8) | proto);
  }

  private remember(proto: number, lan: number, lanPort: number, now: number): void {
    const i = this.negSlot(proto, lan, lanPort);
    this.negKey[2 * i] = lan;
    this.negKey[2 * i + 1] = (lanPort << 8) | proto;
    this.negUntil[i] = now + NEGATIVE_MS;
  }

  private remSlot(proto: number, key: number, rem: number, remPort: number): number {
    let h = Math.imul(rem ^ Math.imul((remPort << 8) | proto, 0x9e3779b1), 0x85ebca6b);
    h = Math.imul(h ^ (h >>> 15) ^ key, 0xc2b2ae35);
    return (h ^ (h >>> 13)) & (NEGATIVE_SLOTS - 1);
  }

  /** A share towards (rem, remPort) from public address and class `key` found no 5-tuple within REMOTE_NEGATIVE_MS. */
  private remoteSaturated(proto: number, key: number, rem: number, remPort: number, now: number): boolean {
    const i = this.remSlot(proto, key, rem, remPort);
    const k = this.remNegKey;
    return this.remNegUntil[i] > now && k[3 * i] === rem && k[3 * i + 1] === ((remPort << 8) | proto) && k[3 * i + 2] === key;
  }

  private rememberRemote(proto: number, key: number, rem: number, remPort: number, now: number): void {
    const i = this.remSlot(proto, key, rem, remPort);
    const k = this.remNegKey;
    k[3 * i] = rem;
    k[3 * i + 1] = (remPort << 8) | proto;
    k[3 * i + 2] = key;
    this.remNegUntil[i] = now + REMOTE_NEGATIVE_MS;
  }

  /** Session `s` changed a state operators see (an UPDATE event for `conns watch`; the store's flush picks up the values). */
  updated(s: number): void {
    if (this.journal !== null) this.journal.push(EV_UPDATE, TABLE_SESSIONS, s, this.sSerial[s]);
  }

  // ---- removal -----------------------------------------------------------

  removeSession(s: number): void {
    if (this.sInUse[s] === 0) return;
    if (this.listener !== null) this.listener.sessionRemoved(s);
    const h = this.hot;
    const o = s * SESSION_WORDS;
    const m = h[o + W_MAP];
    const proto = h[o + W_LANPORT] >>> 16;
    const rem = h[o + W_REM];
    const remPort = h[o + W_PORTS] & 0xffff;
    if (this.journal !== null) this.journal.push(EV_DESTROY, TABLE_SESSIONS, s, this.sSerial[s]);
    const flags = h[o + W_PORTS] >>> 24;
    if (flags & SF_HOST) this.hosts.removed(h[o + W_LAN]);
    if (flags & SF_UNANSWERED) this.inbound.released(rem);
    this.outIndex.deleteIf(h[o + W_LAN], rem, portPair(h[o + W_LANPORT] & 0xffff, remPort), proto, s);
    this.inIndex.deleteIf(rem, portPair(h[o + W_PUB] & 0xffff, remPort), h[o + W_PUB] >>> 16, proto, s);
    this.sRows.give(s);
    this.countBySlot[protoSlot(proto)]--;
    if (--this.mRefs[m] === 0) this.freeMapping(m);
  }

  private freeMapping(m: number): void {
    const proto = this.mProto[m];
    this.mapIndex.deleteIf(this.mLan[m], this.mLanPort[m], 0, proto, m);
    if (this.portIndex !== null) this.portIndex.deleteIf(this.mPubIdx[m], this.mPubPort[m], 0, proto, m);
    this.space(this.mPubIdx[m], protoSlot(proto)).release(this.mPubPort[m]);
    this.mFree.give(m);
    this.mappingCount--;
  }

  /**
   * Expires at most `budget` session slots, continuing where the previous
   * call stopped, so a sweep never stalls the packet loop. Returns the number
   * removed.
   */
  sweep(now: number, budget: number): number {
    let removed = 0;
    const cap = this.capacity;
    let i = this.sweepCursor;
    for (let n = 0; n < budget && n < cap; n++) {
      if (this.sInUse[i] === 1 && this.hotF[i * 8 + F_EXPIRES] <= now) {
        this.removeSession(i);
        removed++;
      }
      i = i + 1 === cap ? 0 : i + 1;
    }
    this.sweepCursor = i;
    return removed;
  }

  /** Calls fn for every live session (not for the packet path). */
  forEachSession(fn: (s: number) => void): void {
    for (let s = 0; s < this.capacity; s++) if (this.sInUse[s] === 1) fn(s);
  }

  /**
   * Removes the sessions with these ids (`vpnmasq conns delete`; not the
   * packet path) with their lookup entries, and a mapping with its last
   * session: the next outbound packet creates a new one, an inbound one is
   * dropped as unmapped. Returns how many.
   */
  deleteSerials(ids: ReadonlySet<number>): number {
    return this.sRows.removeRows(ids, this.removeRow);
  }

  /**
   * Removes the sessions of TCP and UDP mappings whose public port `keep`
   * rejects (shared mode after ports.range changed: the box takes those
   * ports back); returns how many. Not the packet path.
   */
  removeUnless(keep: (slot: number, pubPort: number) => boolean): number {
    let n = 0;
    for (let s = 0; s < this.capacity; s++) {
      if (this.sInUse[s] === 0) continue;
      const slot = protoSlot(this.protoOf(s));
      if (slot !== SLOT_ICMP && !keep(slot, this.pubPortOf(s))) {
        this.removeSession(s);
        n++;
      }
    }
    return n;
  }

  /** Removes every session (a WAN address change under wan.onAddressChange "drop"); returns how many. */
  removeAll(): number {
    return this.sRows.removeRows(null, this.removeRow);
  }

  /** Bytes the table holds (typed arrays), for `stats` and the benchmark. */
  get bytes(): number {
    let n = this.hot.byteLength + this.sCreated.byteLength + this.sIsn.byteLength + this.sSerial.byteLength + this.sInUse.byteLength +
      this.capacity * 4 * 2 + this.outIndex.bytes + this.inIndex.bytes + this.mapIndex.bytes + (this.portIndex?.bytes ?? 0) +
      this.capacity * (1 + 4 + 2 + 2 + 2 + 4);
    for (const per of this.spaces) for (const sp of per) if (sp !== null) n += sp.bytes;
    return n;
  }
}
