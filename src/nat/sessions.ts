/**
 * The NAPT table for TCP, UDP and ICMP queries, as struct-of-arrays.
 *
 * A *mapping* binds a LAN endpoint (proto, address, port) to a public port;
 * it is endpoint-independent (RFC 4787 REQ-1, RFC 5382 REQ-1): every
 * destination of that LAN endpoint shares it. A *session* is one
 * (mapping, remote address, remote port) conversation; inbound packets must
 * match a session unless filtering is endpoint-independent (REQ-8).
 *
 * Lookups:
 *  - outbound: (lan, remote, lanPort<<16|remotePort, proto) -> session
 *  - inbound:  portOwner[proto][publicPort] -> mapping, then
 *              (mapping, remote, remotePort) -> session
 * No string keys, no allocation after construction.
 */
import { FlowIndex } from '../core/flow-index';
import { EV_DESTROY, EV_NEW, EV_UPDATE, Journal } from '../core/journal';
import { PROTO_ICMP, PROTO_TCP, PROTO_UDP } from '../wire/ipv4';
import { SlotPool } from '../core/slot-pool';
import { columns, Serials, SoaRows } from '../core/table';

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

const NONE = -1;

/** Told about every session just before it is removed (expiry, replacement, `conns delete`, an address change). */
export interface SessionListener {
  sessionRemoved(s: number): void;
}

export class SessionTable {
  readonly capacity: number;
  publicAddr: number;
  readonly journal: Journal | null;

  // Mappings
  readonly mProto: Uint8Array;
  readonly mLan: Int32Array;
  readonly mLanPort: Uint16Array;
  readonly mPubPort: Uint16Array;
  readonly mRefs: Int32Array;
  private readonly mapIndex: FlowIndex;
  private readonly portOwner: Int32Array[];
  private readonly mFree: SlotPool;
  mappingCount = 0;

  // Sessions
  private readonly sRows: SoaRows;
  readonly sInUse: Uint8Array;
  readonly sMap: Int32Array;
  readonly sRem: Int32Array;
  readonly sRemPort: Uint16Array;
  readonly sState: Uint8Array;
  readonly sExpires: Float64Array;
  readonly sCreated: Float64Array;
  readonly sLastSeen: Float64Array;
  readonly sSerial: Float64Array;
  readonly sPktsOut: Float64Array;
  readonly sPktsIn: Float64Array;
  readonly sBytesOut: Float64Array;
  readonly sBytesIn: Float64Array;
  private readonly outIndex: FlowIndex;
  private readonly inIndex: FlowIndex;
  /** Called with every session about to be removed; set by the engine (its helpers keep state per session). */
  listener: SessionListener | null = null;
  private readonly removeRow = (s: number): void => this.removeSession(s);
  readonly countBySlot = new Int32Array(SLOT_COUNT);
  /** Ids of this table's sessions; the VPN tables take theirs from here too (one id space). */
  readonly serials = new Serials();
  private sweepCursor = 0;

  /** The public port policy for new mappings (a reload may replace it). */
  ports: PortPolicy;
  /**
   * Most sessions at once: `capacity` (allocated at start) or less after a
   * reload lowered limits.maxSessions; beyond it new sessions are refused as
   * TABLE_FULL while the existing ones stay until they end.
   */
  limit: number;
  private random: () => number;

  constructor(capacity: number, publicAddr: number, ports: PortPolicy, journal: Journal | null, random: () => number = Math.random) {
    this.capacity = capacity;
    this.limit = capacity;
    this.publicAddr = publicAddr | 0;
    this.ports = ports;
    this.journal = journal;
    this.random = random;
    [this.mProto] = columns(Uint8Array, capacity, 1);
    [this.mLan, this.mRefs] = columns(Int32Array, capacity, 2);
    [this.mLanPort, this.mPubPort] = columns(Uint16Array, capacity, 2);
    this.mapIndex = new FlowIndex(capacity);
    this.portOwner = [];
    for (let i = 0; i < SLOT_COUNT; i++) this.portOwner.push(new Int32Array(65536).fill(NONE));
    this.mFree = new SlotPool(capacity);

    this.sRows = new SoaRows(capacity);
    this.sInUse = this.sRows.inUse;
    this.sSerial = this.sRows.serial;
    [this.sMap, this.sRem] = columns(Int32Array, capacity, 2);
    [this.sRemPort] = columns(Uint16Array, capacity, 1);
    [this.sState] = columns(Uint8Array, capacity, 1);
    [this.sExpires, this.sCreated, this.sLastSeen, this.sPktsOut, this.sPktsIn, this.sBytesOut, this.sBytesIn] = columns(Float64Array, capacity, 7);
    this.outIndex = new FlowIndex(capacity);
    this.inIndex = new FlowIndex(capacity);
  }

  get sessionCount(): number { return this.sRows.count; }

  // ---- lookups -----------------------------------------------------------

  /** Session for an outbound packet, or -1. */
  findOut(proto: number, lan: number, lanPort: number, rem: number, remPort: number): number {
    return this.outIndex.get(lan, rem, (lanPort << 16) | remPort, proto);
  }

  /** Mapping of a LAN endpoint, or -1. */
  findMapping(proto: number, lan: number, lanPort: number): number {
    return this.mapIndex.get(lan, lanPort, proto, 0);
  }

  /** Mapping that owns a public port, or -1. */
  mappingOfPort(slot: number, pubPort: number): number {
    return this.portOwner[slot][pubPort];
  }

  /** Session of a mapping with a remote endpoint, or -1. */
  findIn(mapping: number, rem: number, remPort: number): number {
    return this.inIndex.get(mapping, rem, remPort, 0);
  }

  // ---- creation ----------------------------------------------------------

  /**
   * Creates a session for an outbound packet, reusing the LAN endpoint's
   * mapping when it has one. Returns the session, or -1 when the table is
   * full, or -2 when no public port is free.
   */
  createOut(proto: number, lan: number, lanPort: number, rem: number, remPort: number, now: number, state: number, expires: number): number {
    let m = this.mapIndex.get(lan, lanPort, proto, 0);
    if (m === NONE) {
      m = this.createMapping(proto, lan, lanPort, -1);
      if (m < 0) return m;
    }
    return this.createSession(m, rem, remPort, now, state, expires);
  }

  /** Creates the mapping for a LAN endpoint; `pubPort` < 0 allocates one. Returns -1 table full, -2 ports exhausted. */
  createMapping(proto: number, lan: number, lanPort: number, pubPort: number): number {
    const slot = protoSlot(proto);
    if (this.mFree.available === 0) return -1;
    const port = pubPort >= 0 ? (this.portOwner[slot][pubPort] === NONE ? pubPort : -1) : this.allocPort(slot, lanPort);
    if (port < 0) return -2;
    const m = this.mFree.take();
    this.mProto[m] = proto;
    this.mLan[m] = lan;
    this.mLanPort[m] = lanPort;
    this.mPubPort[m] = port;
    this.mRefs[m] = 0;
    this.mapIndex.set(lan, lanPort, proto, 0, m);
    this.portOwner[slot][port] = m;
    this.mappingCount++;
    return m;
  }

  /** Creates a session under an existing mapping. Returns -1 when the table is full. */
  createSession(m: number, rem: number, remPort: number, now: number, state: number, expires: number): number {
    const s = this.initSession(m, rem, remPort, now, state, expires, this.serials.next);
    if (s < 0) return s;
    this.serials.next++;
    if (this.journal !== null) this.journal.push(EV_NEW, TABLE_SESSIONS, s, this.sSerial[s]);
    return s;
  }

  /**
   * Re-creates a persisted session at start (not the packet path): the
   * mapping keeps its public port and the session its serial; no journal
   * event, the row is already stored. Returns the session, -1 table full,
   * -2 public port owned by another mapping (or the LAN endpoint already
   * mapped to another port), -3 duplicate session.
   */
  restoreSession(proto: number, lan: number, lanPort: number, pubPort: number, rem: number, remPort: number,
    created: number, state: number, expires: number, serial: number): number {
    let m = this.mapIndex.get(lan, lanPort, proto, 0);
    if (m === NONE) {
      m = this.createMapping(proto, lan, lanPort, pubPort);
      if (m < 0) return m;
    } else if (this.mPubPort[m] !== pubPort) {
      return -2;
    }
    if (this.inIndex.get(m, rem, remPort, 0) !== NONE) return -3;
    const s = this.initSession(m, rem, remPort, created, state, expires, serial);
    if (s >= 0) this.serials.seen(serial);
    return s;
  }

  private initSession(m: number, rem: number, remPort: number, now: number, state: number, expires: number, serial: number): number {
    const s = this.sRows.count < this.limit ? this.sRows.take(serial) : -1;
    if (s < 0) {
      if (this.mRefs[m] === 0) this.freeMapping(m);
      return -1;
    }
    const proto = this.mProto[m];
    this.sMap[s] = m;
    this.sRem[s] = rem;
    this.sRemPort[s] = remPort;
    this.sState[s] = state;
    this.sExpires[s] = expires;
    this.sCreated[s] = now;
    this.sLastSeen[s] = now;
    this.sPktsOut[s] = 0;
    this.sPktsIn[s] = 0;
    this.sBytesOut[s] = 0;
    this.sBytesIn[s] = 0;
    this.outIndex.set(this.mLan[m], rem, (this.mLanPort[m] << 16) | remPort, proto, s);
    this.inIndex.set(m, rem, remPort, 0, s);
    this.mRefs[m]++;
    this.countBySlot[protoSlot(proto)]++;
    return s;
  }

  /** Picks a public port: the LAN port itself when free (preservation), else a random free one of the same class. */
  private allocPort(slot: number, lanPort: number): number {
    const owner = this.portOwner[slot];
    const p = this.ports;
    const range = lanPort < 1024 && p.lowRange !== null && slot !== SLOT_ICMP ? p.lowRange : p.range;
    const lo = range[0];
    const hi = range[1];
    if (p.preserve && lanPort >= lo && lanPort <= hi && owner[lanPort] === NONE) return lanPort;
    const span = hi - lo + 1;
    // Random start, then linear scan (RFC 6056 §3.3.1-style): unpredictable but bounded.
    let port = lo + Math.floor(this.random() * span);
    for (let i = 0; i < span; i++) {
      if (owner[port] === NONE) return port;
      port = port === hi ? lo : port + 1;
    }
    return -1;
  }

  /** Session `s` changed a state operators see (an UPDATE event for `conns watch`; the store's flush picks up the values). */
  updated(s: number): void {
    if (this.journal !== null) this.journal.push(EV_UPDATE, TABLE_SESSIONS, s, this.sSerial[s]);
  }

  // ---- removal -----------------------------------------------------------

  removeSession(s: number): void {
    if (this.sInUse[s] === 0) return;
    if (this.listener !== null) this.listener.sessionRemoved(s);
    const m = this.sMap[s];
    const proto = this.mProto[m];
    if (this.journal !== null) this.journal.push(EV_DESTROY, TABLE_SESSIONS, s, this.sSerial[s]);
    this.outIndex.delete(this.mLan[m], this.sRem[s], (this.mLanPort[m] << 16) | this.sRemPort[s], proto);
    this.inIndex.delete(m, this.sRem[s], this.sRemPort[s], 0);
    this.sRows.give(s);
    this.countBySlot[protoSlot(proto)]--;
    if (--this.mRefs[m] === 0) this.freeMapping(m);
  }

  private freeMapping(m: number): void {
    const proto = this.mProto[m];
    this.mapIndex.delete(this.mLan[m], this.mLanPort[m], proto, 0);
    this.portOwner[protoSlot(proto)][this.mPubPort[m]] = NONE;
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
      if (this.sInUse[i] === 1 && this.sExpires[i] <= now) {
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
      const m = this.sMap[s];
      const slot = protoSlot(this.mProto[m]);
      if (slot !== SLOT_ICMP && !keep(slot, this.mPubPort[m])) {
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
}
