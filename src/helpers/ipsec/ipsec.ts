/**
 * IPsec masquerade state (vpn-masquerade-spec §3, §4): ISAKMP entries keyed by
 * the full 8-byte cookies with the public port kept at 500, and ESP entries
 * paired by per-remote serialization of new SPIs. Decides where a packet
 * goes; the byte rewriting is Napt's. Struct-of-arrays plus FlowIndex, no
 * allocation and no logging on the packet path: events are counted and
 * queued in a bounded ring that the daemon drains from a timer.
 */
import { FlowIndex } from '../../core/flow-index';
import { Drop } from '../../core/verdict';
import { read32 } from '../../wire/checksum';
import { ISAKMP_ICOOKIE, ISAKMP_PORT, ISAKMP_RCOOKIE } from '../../wire/isakmp';
import { ESP_SPI_RESERVED_MAX } from '../../wire/esp';
import { int32ToIpv4 } from '../../core/ipv4-addr';
import { SlotPool } from '../../core/slot-pool';
import { Serials } from '../../nat/sessions';
import { ConnRow } from '../../query/rows';
import { NO_FORWARD } from '../../nat/forwards';
import { EV_DESTROY, EV_NEW, Journal } from '../../core/journal';

/** Journal table ids of the two tables (state store, src/persist/vpn-codecs.ts). */
export const TABLE_ISAKMP = 2;
export const TABLE_ESP = 3;

export interface IpsecOptions {
  /** Lifetime of established ESP entries and of ISAKMP entries (spec Rule I-5; never below 15 min). */
  lifetimeMs: number;
  /** Lifetime of a pending ESP entry, restarted by outbound retransmits (spec §4.1, 2 min). */
  pendingMs: number;
  /** How long a squelched entry is ignored (spec §4.1, 30 s). */
  squelchMs: number;
  /** Retransmits allowed once contention was seen before squelching (spec §4.1, 5). */
  retries: number;
  /** false: a remote with live ESP from one LAN host refuses new SPIs from others (2.2, spec §4.4). */
  parallel: boolean;
  /** Copy unmatched inbound ESP / ISAKMP to recent ISAKMP hosts (spec §4.3 step 4, Rule I-7). */
  guessing: boolean;
  guessMax: number;
  /** Entries per table (ISAKMP, ESP, remotes). */
  capacity: number;
}

export const MIN_LIFETIME_MS = 15 * 60_000;
/** ESP_CAND_MIN_TM: an ISAKMP host is a guess candidate only with more than 5 min of life left (spec §4.1). */
const GUESS_MIN_LEFT_MS = 5 * 60_000;
/** Upper bound of guessMax (config allows 1..16). */
export const GUESS_SLOTS = 16;

/** ESP entry states: a state field, so no SPI value is ever a marker (spec §9.16). */
export const ESP_FREE = 0;
export const ESP_PENDING = 1;
export const ESP_ESTABLISHED = 2;
export const ESP_SQUELCHED = 3;
const STATE_NAMES = ['free', 'pending', 'established', 'squelched'];

/** Log events of spec §10; counted always, queued for the log with their details. */
export const IpsecEvent = {
  ZERO_SPI: 0,
  RESERVED_SPI: 1,
  ZERO_COOKIE: 2,
  ESP_BLOCKED: 3,
  ESP_BLOCKED_SELF: 4,
  ESP_BLOCKED_PARALLEL: 5,
  ESP_RETRY: 6,
  ESP_SQUELCH: 7,
  ESP_ESTABLISHED: 8,
  ESP_GUESS: 9,
  ESP_NO_MAPPING: 10,
  ISAKMP_COLLISION: 11,
  ISAKMP_GUESS: 12,
  ISAKMP_NO_MAPPING: 13,
  AH_REFUSED: 14,
  ISAKMP_FORWARD: 15,
  ESP_SERVER: 16,
  ESP_FORWARD: 17,
} as const;
export const IPSEC_EVENT_NAMES: readonly string[] = Object.keys(IpsecEvent).map((k) => k.toLowerCase().replace(/_/g, '-'));
const EVENT_COUNT = IPSEC_EVENT_NAMES.length;
const RING = 256;
/** Distinct AH flows remembered so each is logged once. */
const AH_FLOWS = 1024;

const NONE = -1;

export class IpsecMasq {
  /** Where an inbound packet goes: targets[0..n) after inIsakmp / inEsp returned n. */
  readonly targets = new Int32Array(GUESS_SLOTS);
  /** Why inIsakmp / inEsp returned 0. */
  lastDrop = 0;
  readonly eventCounts = new Float64Array(EVENT_COUNT);

  // ISAKMP entries.
  readonly kLan: Int32Array;
  readonly kRem: Int32Array;
  readonly kIc0: Int32Array;
  readonly kIc1: Int32Array;
  readonly kRc0: Int32Array;
  readonly kRc1: Int32Array;
  readonly kHasRc: Uint8Array;
  readonly kInUse: Uint8Array;
  readonly kExpires: Float64Array;
  /** 1: the entry belongs to the forwarded server, created by the remote's first packet (spec §6). */
  readonly kServer: Uint8Array;
  readonly kSerial: Float64Array;
  readonly kPktsOut: Float64Array;
  readonly kPktsIn: Float64Array;
  private readonly kRemote: Int32Array;
  private readonly kOut: FlowIndex;
  private readonly kIn: FlowIndex;
  private readonly kFree: SlotPool;
  isakmpCount = 0;

  // ESP entries.
  readonly eLan: Int32Array;
  readonly eRem: Int32Array;
  readonly eOutSpi: Int32Array;
  readonly eInSpi: Int32Array;
  readonly eState: Uint8Array;
  /** The state an entry had when it was removed, for its DESTROY event (`conns watch`). */
  private readonly eEndState: Uint8Array;
  readonly eBlocking: Uint8Array;
  readonly eRetries: Int32Array;
  readonly eExpires: Float64Array;
  readonly eCreated: Float64Array;
  readonly ePktsOut: Float64Array;
  readonly ePktsIn: Float64Array;
  readonly eSerial: Float64Array;
  private readonly eRemote: Int32Array;
  private readonly eOut: FlowIndex;
  private readonly eIn: FlowIndex;
  private readonly eByOutSpi: FlowIndex;
  private readonly eFree: SlotPool;
  readonly espCountByState = new Int32Array(4);

  // Remotes: serialization slot, parallel owner, recent ISAKMP hosts.
  private readonly rIndex: FlowIndex;
  private readonly rRem: Int32Array;
  private readonly rRefs: Int32Array;
  private readonly rPending: Int32Array;
  private readonly rLive: Int32Array;
  private readonly rOwner: Int32Array;
  private readonly rRecentLan: Int32Array;
  private readonly rRecentSeen: Float64Array;
  /** The newest forwarded-server ISAKMP entry with this remote, or -1 (inbound ESP steering, spec §6). */
  private readonly rServer: Int32Array;
  private readonly rFree: SlotPool;

  // Event ring.
  private readonly evKind = new Uint8Array(RING);
  private readonly evA = new Int32Array(RING);
  private readonly evB = new Int32Array(RING);
  private readonly evC = new Int32Array(RING);
  private readonly evD = new Int32Array(RING);
  private evHead = 0;
  private evTail = 0;
  private readonly ahFlows = new FlowIndex(AH_FLOWS);

  private kCursor = 0;
  private eCursor = 0;
  /** Serials of new entries (both tables); restored entries keep theirs. The daemon hands in the session table's: one id space. */
  serials = new Serials();
  /** NEW / DESTROY of both tables for the state store; set by the daemon. */
  journal: Journal | null = null;

  constructor(readonly opts: IpsecOptions) {
    const cap = opts.capacity;
    this.kLan = new Int32Array(cap);
    this.kRem = new Int32Array(cap);
    this.kIc0 = new Int32Array(cap);
    this.kIc1 = new Int32Array(cap);
    this.kRc0 = new Int32Array(cap);
    this.kRc1 = new Int32Array(cap);
    this.kHasRc = new Uint8Array(cap);
    this.kInUse = new Uint8Array(cap);
    this.kExpires = new Float64Array(cap);
    this.kServer = new Uint8Array(cap);
    this.kSerial = new Float64Array(cap);
    this.kPktsOut = new Float64Array(cap);
    this.kPktsIn = new Float64Array(cap);
    this.kRemote = new Int32Array(cap);
    this.kOut = new FlowIndex(cap);
    this.kIn = new FlowIndex(cap);
    this.kFree = new SlotPool(cap);

    this.eLan = new Int32Array(cap);
    this.eRem = new Int32Array(cap);
    this.eOutSpi = new Int32Array(cap);
    this.eInSpi = new Int32Array(cap);
    this.eState = new Uint8Array(cap);
    this.eEndState = new Uint8Array(cap);
    this.eBlocking = new Uint8Array(cap);
    this.eRetries = new Int32Array(cap);
    this.eExpires = new Float64Array(cap);
    this.eCreated = new Float64Array(cap);
    this.ePktsOut = new Float64Array(cap);
    this.ePktsIn = new Float64Array(cap);
    this.eSerial = new Float64Array(cap);
    this.eRemote = new Int32Array(cap);
    this.eOut = new FlowIndex(cap);
    this.eIn = new FlowIndex(cap);
    this.eByOutSpi = new FlowIndex(cap);
    this.eFree = new SlotPool(cap);

    this.rIndex = new FlowIndex(cap);
    this.rRem = new Int32Array(cap);
    this.rRefs = new Int32Array(cap);
    this.rPending = new Int32Array(cap).fill(NONE);
    this.rLive = new Int32Array(cap);
    this.rOwner = new Int32Array(cap);
    this.rRecentLan = new Int32Array(cap * GUESS_SLOTS);
    this.rRecentSeen = new Float64Array(cap * GUESS_SLOTS).fill(-1);
    this.rServer = new Int32Array(cap).fill(NONE);
    this.rFree = new SlotPool(cap);
  }

  // ---- ISAKMP (spec §3) ------------------------------------------------------

  /**
   * Outbound L:500 -> R:500 with the ISAKMP header at `ike`. Returns -1 to
   * translate (source address only: the port stays 500, Rule I-1) or a drop code.
   */
  outIsakmp(lan: number, rem: number, buf: Uint8Array, ike: number, now: number): number {
    const ic0 = read32(buf, ike + ISAKMP_ICOOKIE);
    const ic1 = read32(buf, ike + ISAKMP_ICOOKIE + 4);
    const rc0 = read32(buf, ike + ISAKMP_RCOOKIE);
    const rc1 = read32(buf, ike + ISAKMP_RCOOKIE + 4);
    if ((ic0 | ic1) === 0) this.event(IpsecEvent.ZERO_COOKIE, lan, rem, 0, 0);
    // Rule I-2: one entry per (L, R, all 8 initiator cookie bytes).
    let k = this.kOut.get(lan, rem, ic0, ic1);
    if (k >= 0 && this.kExpires[k] <= now) {
      this.removeIsakmp(k);
      k = NONE;
    }
    if (k < 0) {
      // Rule I-4: while another host's exchange with this cookie awaits its responder cookie, a new one collides.
      const o = this.kIn.get(rem, ic0, ic1, 0);
      if (o >= 0) {
        if (this.kExpires[o] > now) {
          this.event(IpsecEvent.ISAKMP_COLLISION, lan, rem, ic0, this.kLan[o]);
          return Drop.ISAKMP_COLLISION;
        }
        this.removeIsakmp(o);
      }
      k = this.createIsakmp(lan, rem, ic0, ic1, this.serials.next);
      if (k < 0) return Drop.TABLE_FULL;
      this.journalNew(TABLE_ISAKMP, k, this.serials.next++);
    }
    // A LAN host answering an exchange the remote started carries the responder cookie from its first packet.
    if (this.kHasRc[k] === 0 && (rc0 | rc1) !== 0) this.learnRcookie(k, rc0, rc1);
    this.kExpires[k] = now + this.opts.lifetimeMs;
    this.kPktsOut[k]++;
    this.touchRecent(this.kRemote[k], lan, now);
    return -1;
  }

  /**
   * Inbound R:500 -> P:500. `server` is the LAN server of a udp/500 forward
   * (Forwards.isakmpServer) or NO_FORWARD. Returns how many LAN hosts get the
   * packet (targets[0..n)), or 0 with lastDrop set.
   */
  inIsakmp(rem: number, buf: Uint8Array, ike: number, now: number, server: number): number {
    const ic0 = read32(buf, ike + ISAKMP_ICOOKIE);
    const ic1 = read32(buf, ike + ISAKMP_ICOOKIE + 4);
    const rc0 = read32(buf, ike + ISAKMP_RCOOKIE);
    const rc1 = read32(buf, ike + ISAKMP_RCOOKIE + 4);
    // Rule I-3 / I-4: both cookies once the responder cookie is known; the first reply teaches it.
    if ((rc0 | rc1) !== 0) {
      const k = this.liveIsakmp(this.kIn.get(rem, ic0, ic1, rcookieKey(rc0, rc1)), now);
      if (k >= 0 && this.kRc0[k] === rc0 && this.kRc1[k] === rc1) return this.deliverIsakmp(k, now);
    }
    const k = this.liveIsakmp(this.kIn.get(rem, ic0, ic1, 0), now);
    if (k >= 0) {
      if ((rc0 | rc1) !== 0) this.learnRcookie(k, rc0, rc1);
      return this.deliverIsakmp(k, now);
    }
    if ((ic0 | ic1) === 0) this.event(IpsecEvent.ZERO_COOKIE, rem, 0, 0, 0);
    if (server !== NO_FORWARD) return this.isakmpToServer(server, rem, ic0, ic1, rc0, rc1, now);
    // Rule I-7: an exchange the remote starts goes to the hosts that spoke ISAKMP with it most recently.
    const n = this.opts.guessing ? this.candidates(rem, now) : 0;
    if (n > 0) {
      this.event(IpsecEvent.ISAKMP_GUESS, rem, this.targets[0], ic0, n);
      return n;
    }
    this.event(IpsecEvent.ISAKMP_NO_MAPPING, rem, ic0, ic1, 0);
    this.lastDrop = Drop.ISAKMP_NO_MAPPING;
    return 0;
  }

  /**
   * Spec §6: with a udp/500 forward, every exchange the remote starts belongs
   * to the forwarded server, not to recent LAN initiators (Rule I-7). The entry
   * is made now, keyed by the remote's cookie, so the exchange's retransmits
   * stay with the server and its replies leave from public port 500 (Rule I-1).
   */
  private isakmpToServer(server: number, rem: number, ic0: number, ic1: number, rc0: number, rc1: number, now: number): number {
    // The server may hold this cookie under another responder cookie (a lost SA); it keeps the exchange.
    let k = this.liveIsakmp(this.kOut.get(server, rem, ic0, ic1), now);
    if (k < 0) {
      k = this.createIsakmp(server, rem, ic0, ic1, this.serials.next);
      if (k < 0) {
        this.lastDrop = Drop.TABLE_FULL;
        return 0;
      }
      this.journalNew(TABLE_ISAKMP, k, this.serials.next++);
      if ((rc0 | rc1) !== 0) this.learnRcookie(k, rc0, rc1);
      this.event(IpsecEvent.ISAKMP_FORWARD, rem, server, ic0, ic1);
    }
    this.kServer[k] = 1;
    this.rServer[this.kRemote[k]] = k;
    return this.deliverIsakmp(k, now);
  }

  private liveIsakmp(k: number, now: number): number {
    if (k >= 0 && this.kExpires[k] <= now) {
      this.removeIsakmp(k);
      return NONE;
    }
    return k;
  }

  private deliverIsakmp(k: number, now: number): number {
    this.kExpires[k] = now + this.opts.lifetimeMs;
    this.kPktsIn[k]++;
    this.touchRecent(this.kRemote[k], this.kLan[k], now);
    this.targets[0] = this.kLan[k];
    return 1;
  }

  private createIsakmp(lan: number, rem: number, ic0: number, ic1: number, serial: number): number {
    if (this.kFree.available === 0) return NONE;
    const r = this.remote(rem);
    if (r < 0) return NONE;
    const k = this.kFree.take();
    this.kInUse[k] = 1;
    this.kLan[k] = lan;
    this.kRem[k] = rem;
    this.kIc0[k] = ic0;
    this.kIc1[k] = ic1;
    this.kRc0[k] = 0;
    this.kRc1[k] = 0;
    this.kHasRc[k] = 0;
    this.kServer[k] = 0;
    this.kRemote[k] = r;
    this.kSerial[k] = serial;
    this.kPktsOut[k] = 0;
    this.kPktsIn[k] = 0;
    this.rRefs[r]++;
    this.kOut.set(lan, rem, ic0, ic1, k);
    this.kIn.set(rem, ic0, ic1, 0, k);
    this.isakmpCount++;
    return k;
  }

  private learnRcookie(k: number, rc0: number, rc1: number): void {
    const rem = this.kRem[k];
    const ic0 = this.kIc0[k];
    const ic1 = this.kIc1[k];
    deleteIf(this.kIn, rem, ic0, ic1, 0, k);
    this.kRc0[k] = rc0;
    this.kRc1[k] = rc1;
    this.kHasRc[k] = 1;
    this.kIn.set(rem, ic0, ic1, rcookieKey(rc0, rc1), k);
  }

  private removeIsakmp(k: number): void {
    if (this.kInUse[k] === 0) return;
    if (this.journal !== null) this.journal.push(EV_DESTROY, TABLE_ISAKMP, k, this.kSerial[k]);
    const rem = this.kRem[k];
    deleteIf(this.kOut, this.kLan[k], rem, this.kIc0[k], this.kIc1[k], k);
    deleteIf(this.kIn, rem, this.kIc0[k], this.kIc1[k], this.kHasRc[k] === 1 ? rcookieKey(this.kRc0[k], this.kRc1[k]) : 0, k);
    this.kInUse[k] = 0;
    this.kFree.give(k);
    this.isakmpCount--;
    if (this.rServer[this.kRemote[k]] === k) this.rServer[this.kRemote[k]] = NONE;
    this.unref(this.kRemote[k]);
  }

  // ---- ESP (spec §4) ---------------------------------------------------------

  /** Outbound ESP L -> R with SPI `spi` (spec §4.2). Returns -1 to translate or a drop code. */
  outEsp(lan: number, rem: number, spi: number, now: number): number {
    if (spi === 0) {
      this.event(IpsecEvent.ZERO_SPI, lan, rem, 0, 0);
      return Drop.ESP_ZERO_SPI;
    }
    let e = this.eOut.get(lan, rem, spi, 0);
    if (e >= 0 && this.eExpires[e] <= now) {
      this.removeEsp(e);
      e = NONE;
    }
    if (e >= 0) {
      const st = this.eState[e];
      if (st === ESP_SQUELCHED) return Drop.ESP_SQUELCHED;
      this.ePktsOut[e]++;
      if (st === ESP_ESTABLISHED) {
        this.eExpires[e] = now + this.opts.lifetimeMs;
        return -1;
      }
      // Pending: a retransmit restarts the timer; retries only count once another flow was turned away.
      this.eExpires[e] = now + this.opts.pendingMs;
      if (this.eBlocking[e] === 1 && ++this.eRetries[e] > this.opts.retries) {
        this.setState(e, ESP_SQUELCHED);
        this.rPending[this.eRemote[e]] = NONE;
        this.eExpires[e] = now + this.opts.squelchMs;
        this.event(IpsecEvent.ESP_SQUELCH, lan, rem, spi, this.eRetries[e]);
        return Drop.ESP_SQUELCHED;
      }
      if (this.eBlocking[e] === 1) this.event(IpsecEvent.ESP_RETRY, lan, rem, spi, this.eRetries[e]);
      return -1;
    }
    let r = this.remote(rem);
    if (r < 0) return Drop.TABLE_FULL;
    let p = this.rPending[r];
    if (p >= 0 && this.eExpires[p] <= now) {
      this.removeEsp(p);
      p = NONE;
      r = this.remote(rem);
      if (r < 0) return Drop.TABLE_FULL;
    }
    if (p >= 0) {
      // One unresolved new SPI per remote at a time (spec §4.2 step 3), also for a second SA of the same host.
      this.eBlocking[p] = 1;
      this.event(this.eLan[p] === lan ? IpsecEvent.ESP_BLOCKED_SELF : IpsecEvent.ESP_BLOCKED, lan, rem, spi, this.eLan[p]);
      this.unrefIfIdle(r);
      return Drop.ESP_BLOCKED;
    }
    if (!this.opts.parallel && this.rLive[r] > 0 && this.rOwner[r] !== lan) {
      this.event(IpsecEvent.ESP_BLOCKED_PARALLEL, lan, rem, spi, this.rOwner[r]);
      this.unrefIfIdle(r);
      return Drop.ESP_BLOCKED;
    }
    e = this.createEsp(lan, rem, spi, r, now, this.serials.next);
    if (e < 0) {
      this.unrefIfIdle(r);
      return Drop.TABLE_FULL;
    }
    this.journalNew(TABLE_ESP, e, this.serials.next++);
    this.ePktsOut[e]++;
    return -1;
  }

  /**
   * Inbound ESP R -> P with SPI `spi` (spec §4.3). `forward` is the LAN
   * address of the ESP protocol forward or NO_FORWARD. Returns how many LAN
   * hosts get the packet (targets[0..n)), or 0 with lastDrop set.
   */
  inEsp(rem: number, spi: number, now: number, forward: number): number {
    if ((spi >>> 0) <= ESP_SPI_RESERVED_MAX) {
      this.event(spi === 0 ? IpsecEvent.ZERO_SPI : IpsecEvent.RESERVED_SPI, rem, 0, spi, 0);
      this.lastDrop = spi === 0 ? Drop.ESP_ZERO_SPI : Drop.ESP_RESERVED_SPI;
      return 0;
    }
    let e = this.eIn.get(rem, spi, 0, 0);
    if (e >= 0 && this.eExpires[e] <= now) {
      this.removeEsp(e);
      e = NONE;
    }
    if (e < 0) {
      const r = this.rIndex.get(rem, 0, 0, 0);
      e = r < 0 ? NONE : this.rPending[r];
      if (e >= 0 && this.eExpires[e] <= now) {
        this.removeEsp(e);
        e = NONE;
      }
      if (e >= 0) {
        // The first unknown SPI from R is assumed to answer the one pending entry; R's slot is free again.
        this.rPending[r] = NONE;
        this.eInSpi[e] = spi;
        this.setState(e, ESP_ESTABLISHED);
        this.eIn.set(rem, spi, 0, 0, e);
        this.event(IpsecEvent.ESP_ESTABLISHED, this.eLan[e], rem, this.eOutSpi[e], spi);
      }
    }
    if (e >= 0) {
      this.eExpires[e] = now + this.opts.lifetimeMs;
      this.ePktsIn[e]++;
      this.targets[0] = this.eLan[e];
      return 1;
    }
    // Spec §6, like IPVS: a new SPI from a remote that a forwarded server
    // holds an ISAKMP session with goes to that server, whose first ESP answer
    // then builds the entry (pending -> established) as for any LAN host.
    const r = this.rIndex.get(rem, 0, 0, 0);
    const k = r < 0 ? NONE : this.liveIsakmp(this.rServer[r], now);
    if (k >= 0) {
      this.event(IpsecEvent.ESP_SERVER, rem, this.kLan[k], spi, 0);
      this.targets[0] = this.kLan[k];
      return 1;
    }
    // Guessing: copies to recent ISAKMP hosts, no entry created; the right host's answer builds it.
    const n = this.opts.guessing ? this.candidates(rem, now) : 0;
    if (n > 0) {
      this.event(IpsecEvent.ESP_GUESS, rem, this.targets[0], spi, n);
      return n;
    }
    // The protocol forward is the last resort (spec §6: established -> pending -> guessing -> forward -> drop).
    if (forward !== NO_FORWARD) {
      this.event(IpsecEvent.ESP_FORWARD, rem, forward, spi, 0);
      this.targets[0] = forward;
      return 1;
    }
    this.event(IpsecEvent.ESP_NO_MAPPING, rem, 0, spi, 0);
    this.lastDrop = Drop.ESP_NO_MAPPING;
    return 0;
  }

  /** The LAN host that sent ESP with `outSpi` to `rem` (for ICMP errors quoting it, spec §9.14), or -1. */
  espByOutSpi(rem: number, outSpi: number, now: number): number {
    const e = this.eByOutSpi.get(rem, outSpi, 0, 0);
    return e >= 0 && this.eExpires[e] > now ? e : NONE;
  }

  /** AH is refused (spec §4.5); each (source, destination) flow is logged once. */
  ahRefused(src: number, dst: number): void {
    if (this.ahFlows.get(src, dst, 0, 0) >= 0) {
      this.eventCounts[IpsecEvent.AH_REFUSED]++;
      return;
    }
    if (!this.ahFlows.set(src, dst, 0, 0, 1)) {
      this.ahFlows.clear();
      this.ahFlows.set(src, dst, 0, 0, 1);
    }
    this.event(IpsecEvent.AH_REFUSED, src, dst, 0, 0);
  }

  private createEsp(lan: number, rem: number, spi: number, r: number, now: number, serial: number): number {
    if (this.eFree.available === 0) return NONE;
    const e = this.eFree.take();
    this.eLan[e] = lan;
    this.eRem[e] = rem;
    this.eOutSpi[e] = spi;
    this.eInSpi[e] = 0;
    this.eState[e] = ESP_PENDING;
    this.espCountByState[ESP_PENDING]++;
    this.eBlocking[e] = 0;
    this.eRetries[e] = 0;
    this.eExpires[e] = now + this.opts.pendingMs;
    this.eCreated[e] = now;
    this.ePktsOut[e] = 0;
    this.ePktsIn[e] = 0;
    this.eRemote[e] = r;
    this.eSerial[e] = serial;
    this.eOut.set(lan, rem, spi, 0, e);
    this.eByOutSpi.set(rem, spi, 0, 0, e);
    this.rRefs[r]++;
    if (this.rLive[r]++ === 0) this.rOwner[r] = lan;
    this.rPending[r] = e;
    return e;
  }

  private setState(e: number, st: number): void {
    this.espCountByState[this.eState[e]]--;
    this.eState[e] = st;
    this.espCountByState[st]++;
  }

  private removeEsp(e: number): void {
    const st = this.eState[e];
    if (st === ESP_FREE) return;
    if (this.journal !== null) this.journal.push(EV_DESTROY, TABLE_ESP, e, this.eSerial[e]);
    const rem = this.eRem[e];
    const r = this.eRemote[e];
    deleteIf(this.eOut, this.eLan[e], rem, this.eOutSpi[e], 0, e);
    deleteIf(this.eByOutSpi, rem, this.eOutSpi[e], 0, 0, e);
    if (st === ESP_ESTABLISHED) deleteIf(this.eIn, rem, this.eInSpi[e], 0, 0, e);
    if (this.rPending[r] === e) this.rPending[r] = NONE;
    this.eEndState[e] = st;
    this.setState(e, ESP_FREE);
    this.eFree.give(e);
    this.rLive[r]--;
    this.unref(r);
  }

  private journalNew(table: number, i: number, serial: number): void {
    if (this.journal !== null) this.journal.push(EV_NEW, table, i, serial);
  }

  // ---- restore (state store, not the packet path) ------------------------------

  /**
   * Rebuilds a persisted ISAKMP entry with its serial and cookies. The remote
   * counts as last seen at expires - lifetime (for guessing). Returns the
   * entry, or -1 when the table is full or the cookies are taken.
   */
  restoreIsakmp(lan: number, rem: number, ic0: number, ic1: number, rc0: number, rc1: number, hasRc: boolean,
    server: boolean, expires: number, serial: number): number {
    if (this.kOut.get(lan, rem, ic0, ic1) >= 0 || this.kIn.get(rem, ic0, ic1, 0) >= 0) return NONE;
    if (hasRc && this.kIn.get(rem, ic0, ic1, rcookieKey(rc0, rc1)) >= 0) return NONE;
    const k = this.createIsakmp(lan, rem, ic0, ic1, serial);
    if (k < 0) return NONE;
    if (hasRc) this.learnRcookie(k, rc0, rc1);
    if (server) {
      // Restored in serial order: the last one is the remote's newest server entry.
      this.kServer[k] = 1;
      this.rServer[this.kRemote[k]] = k;
    }
    this.kExpires[k] = expires;
    this.touchRecent(this.kRemote[k], lan, expires - this.opts.lifetimeMs);
    this.seenSerial(serial);
    return k;
  }

  /**
   * Rebuilds a persisted ESP entry (pending, established or squelched) with
   * its serial and SPI pairing. Returns the entry, or -1 when the table is
   * full, an SPI is taken, or the remote already has a pending entry.
   */
  restoreEsp(lan: number, rem: number, outSpi: number, inSpi: number, state: number, blocking: boolean, retries: number,
    created: number, expires: number, serial: number): number {
    if (state !== ESP_PENDING && state !== ESP_ESTABLISHED && state !== ESP_SQUELCHED) return NONE;
    if (this.eOut.get(lan, rem, outSpi, 0) >= 0 || this.eByOutSpi.get(rem, outSpi, 0, 0) >= 0) return NONE;
    if (state === ESP_ESTABLISHED && this.eIn.get(rem, inSpi, 0, 0) >= 0) return NONE;
    const r = this.remote(rem);
    if (r < 0) return NONE;
    const pending = this.rPending[r];
    const e = state === ESP_PENDING && pending >= 0 ? NONE : this.createEsp(lan, rem, outSpi, r, created, serial);
    if (e < 0) {
      this.unrefIfIdle(r);
      return NONE;
    }
    if (state !== ESP_PENDING) {
      // createEsp made it the remote's pending entry; only a pending one is.
      this.rPending[r] = pending;
      this.setState(e, state);
    }
    if (state === ESP_ESTABLISHED) {
      this.eInSpi[e] = inSpi;
      this.eIn.set(rem, inSpi, 0, 0, e);
    }
    this.eBlocking[e] = blocking ? 1 : 0;
    this.eRetries[e] = retries;
    this.eExpires[e] = expires;
    this.seenSerial(serial);
    return e;
  }

  private seenSerial(serial: number): void {
    this.serials.seen(serial);
  }

  // ---- remotes and guessing --------------------------------------------------

  /** The record of a remote, created on first use; -1 when the table is full. */
  private remote(rem: number): number {
    let r = this.rIndex.get(rem, 0, 0, 0);
    if (r >= 0) return r;
    if (this.rFree.available === 0) return NONE;
    r = this.rFree.take();
    this.rRem[r] = rem;
    this.rRefs[r] = 0;
    this.rPending[r] = NONE;
    this.rLive[r] = 0;
    this.rRecentSeen.fill(-1, r * GUESS_SLOTS, (r + 1) * GUESS_SLOTS);
    this.rServer[r] = NONE;
    this.rIndex.set(rem, 0, 0, 0, r);
    return r;
  }

  private unref(r: number): void {
    if (--this.rRefs[r] === 0) this.freeRemote(r);
  }

  /** A remote record made only to look at its pending slot, with no entries of its own. */
  private unrefIfIdle(r: number): void {
    if (this.rRefs[r] === 0) this.freeRemote(r);
  }

  private freeRemote(r: number): void {
    this.rIndex.delete(this.rRem[r], 0, 0, 0);
    this.rFree.give(r);
  }

  private touchRecent(r: number, lan: number, now: number): void {
    const base = r * GUESS_SLOTS;
    const seen = this.rRecentSeen;
    let slot = base;
    for (let i = base; i < base + GUESS_SLOTS; i++) {
      if (seen[i] >= 0 && this.rRecentLan[i] === lan) {
        slot = i;
        break;
      }
      if (seen[i] < seen[slot]) slot = i;
    }
    this.rRecentLan[slot] = lan;
    seen[slot] = now;
  }

  /**
   * Guess candidates for `rem` into targets, most recent ISAKMP activity
   * first: hosts whose ISAKMP entry has more than 5 min left (spec §4.3 step 4).
   */
  private candidates(rem: number, now: number): number {
    const r = this.rIndex.get(rem, 0, 0, 0);
    if (r < 0) return 0;
    const base = r * GUESS_SLOTS;
    const seen = this.rRecentSeen;
    const after = now - (this.opts.lifetimeMs - GUESS_MIN_LEFT_MS);
    const max = this.opts.guessMax;
    const t = this.targets;
    let n = 0;
    let bound = Infinity;
    // Selection by descending time: at most GUESS_SLOTS passes over GUESS_SLOTS slots.
    while (n < max) {
      let best = NONE;
      for (let i = base; i < base + GUESS_SLOTS; i++) {
        if (seen[i] >= 0 && seen[i] > after && seen[i] < bound && (best < 0 || seen[i] > seen[best])) best = i;
      }
      if (best < 0) break;
      t[n++] = this.rRecentLan[best];
      bound = seen[best];
    }
    return n;
  }

  // ---- housekeeping (off the packet path) -------------------------------------

  /** Removes expired entries, at most `budget` slots of each table per call; returns how many. */
  sweep(now: number, budget: number): number {
    const cap = this.opts.capacity;
    let removed = 0;
    let k = this.kCursor;
    let e = this.eCursor;
    for (let n = 0; n < budget && n < cap; n++) {
      if (this.kInUse[k] === 1 && this.kExpires[k] <= now) {
        this.removeIsakmp(k);
        removed++;
      }
      if (this.eState[e] !== ESP_FREE && this.eExpires[e] <= now) {
        this.removeEsp(e);
        removed++;
      }
      k = k + 1 === cap ? 0 : k + 1;
      e = e + 1 === cap ? 0 : e + 1;
    }
    this.kCursor = k;
    this.eCursor = e;
    return removed;
  }

  private event(kind: number, a: number, b: number, c: number, d: number): void {
    this.eventCounts[kind]++;
    const h = this.evHead;
    if (h - this.evTail >= RING) return;
    const i = h & (RING - 1);
    this.evKind[i] = kind;
    this.evA[i] = a;
    this.evB[i] = b;
    this.evC[i] = c;
    this.evD[i] = d;
    this.evHead = h + 1;
  }

  /** Hands every queued event to `fn` as a log line (for a timer; the caller rate-limits). */
  drainEvents(fn: (kind: string, msg: string, fields: Record<string, unknown>) => void): void {
    while (this.evTail < this.evHead) {
      const i = this.evTail & (RING - 1);
      this.evTail++;
      const kind = this.evKind[i];
      const [msg, fields] = describe(kind, this.evA[i], this.evB[i], this.evC[i], this.evD[i]);
      fn(`ipsec-${IPSEC_EVENT_NAMES[kind]}`, msg, fields);
    }
  }

  /** Counters and table sizes for `stats`. */
  stats(): Record<string, unknown> {
    const events: Record<string, number> = {};
    for (let i = 0; i < EVENT_COUNT; i++) events[IPSEC_EVENT_NAMES[i]] = this.eventCounts[i];
    const c = this.espCountByState;
    return {
      isakmp: this.isakmpCount,
      esp: { pending: c[ESP_PENDING], established: c[ESP_ESTABLISHED], squelched: c[ESP_SQUELCHED] },
      events,
    };
  }

  /**
   * Every ISAKMP and ESP entry as a connection-listing row (admin view, spec
   * §10; not for the packet path). ISAKMP keeps port 500 on every side (Rule
   * I-1), ESP has no ports; the cookies and SPIs are in `vpn`. Bytes are not
   * counted for these tables. Idle time is derived from the timer, which every
   * packet restarts: lifetime (or the pending time) minus what is left.
   */
  *rows(now: number, publicAddr: number): Generator<ConnRow> {
    const pub = int32ToIpv4(publicAddr);
    const cap = this.opts.capacity;
    for (let k = 0; k < cap; k++) if (this.kInUse[k] === 1) yield this.isakmpRow(k, now, pub);
    for (let e = 0; e < cap; e++) if (this.eState[e] !== ESP_FREE) yield this.espRow(e, now, pub);
  }

  /** The row of one entry of `table` (TABLE_ISAKMP or TABLE_ESP) if it still has this serial (`conns watch`). */
  rowOf(table: number, index: number, serial: number, now: number, publicAddr: number): ConnRow | null {
    if (table === TABLE_ISAKMP) return this.kSerial[index] === serial ? this.isakmpRow(index, now, int32ToIpv4(publicAddr)) : null;
    if (table === TABLE_ESP) return this.eSerial[index] === serial ? this.espRow(index, now, int32ToIpv4(publicAddr)) : null;
    return null;
  }

  private isakmpRow(k: number, now: number, pub: string): ConnRow {
    const has = this.kHasRc[k] === 1;
    return {
      id: this.kSerial[k], proto: 'isakmp',
      lan: { addr: int32ToIpv4(this.kLan[k]), port: ISAKMP_PORT }, public: { addr: pub, port: ISAKMP_PORT },
      remote: { addr: int32ToIpv4(this.kRem[k]), port: ISAKMP_PORT },
      state: has ? 'REPLIED' : 'UNREPLIED',
      ...timing(now, this.kExpires[k], this.opts.lifetimeMs),
      packets: { out: this.kPktsOut[k], in: this.kPktsIn[k] }, bytes: { out: 0, in: 0 },
      vpn: { icookie: hex64(this.kIc0[k], this.kIc1[k]), rcookie: has ? hex64(this.kRc0[k], this.kRc1[k]) : null },
    };
  }

  private espRow(e: number, now: number, pub: string): ConnRow {
    const st = this.eState[e] === ESP_FREE ? this.eEndState[e] : this.eState[e];
    const o = this.opts;
    return {
      id: this.eSerial[e], proto: 'esp',
      lan: { addr: int32ToIpv4(this.eLan[e]), port: 0 }, public: { addr: pub, port: 0 },
      remote: { addr: int32ToIpv4(this.eRem[e]), port: 0 },
      state: STATE_NAMES[st].toUpperCase(),
      ...timing(now, this.eExpires[e], st === ESP_ESTABLISHED ? o.lifetimeMs : st === ESP_PENDING ? o.pendingMs : o.squelchMs),
      packets: { out: this.ePktsOut[e], in: this.ePktsIn[e] }, bytes: { out: 0, in: 0 },
      vpn: { spiOut: `0x${hex32(this.eOutSpi[e])}`, spiIn: st === ESP_ESTABLISHED ? `0x${hex32(this.eInSpi[e])}` : null, state: STATE_NAMES[st] },
    };
  }

  /**
   * Removes the ISAKMP and ESP entries with these ids (`vpnmasq conns
   * delete`) as their expiry does: the next outbound packet makes a new
   * entry, an inbound one no longer finds the LAN host. Returns how many.
   */
  deleteSerials(ids: ReadonlySet<number>): number {
    let n = 0;
    for (let i = 0; i < this.opts.capacity; i++) {
      if (this.kInUse[i] === 1 && ids.has(this.kSerial[i])) { this.removeIsakmp(i); n++; }
      if (this.eState[i] !== ESP_FREE && ids.has(this.eSerial[i])) { this.removeEsp(i); n++; }
    }
    return n;
  }
}


/** Index word for a known responder cookie; never 0, which marks "not learnt yet". */
function rcookieKey(rc0: number, rc1: number): number {
  return (rc0 ^ Math.imul(rc1, 0x9e3779b1)) | 1;
}

/** Deletes an index key only if it still points at `value` (another entry may have taken the key). */
function deleteIf(index: FlowIndex, k0: number, k1: number, k2: number, k3: number, value: number): void {
  if (index.get(k0, k1, k2, k3) === value) index.delete(k0, k1, k2, k3);
}

const hex32 = (v: number): string => (v >>> 0).toString(16).padStart(8, '0');

/** Idle and remaining seconds of an entry whose timer every packet restarts to `ttlMs`. */
function timing(now: number, expires: number, ttlMs: number): { idleSeconds: number; expiresInSeconds: number } {
  const left = Math.max(0, expires - now);
  return { idleSeconds: Math.max(0, Math.round((ttlMs - left) / 1000)), expiresInSeconds: Math.round(left / 1000) };
}
const hex64 = (a: number, b: number): string => hex32(a) + hex32(b);

/** Log line for an event, in the words of the 2.0 patch where it had some (spec §10). */
function describe(kind: number, a: number, b: number, c: number, d: number): [string, Record<string, unknown>] {
  const ip = int32ToIpv4;
  switch (kind) {
    case IpsecEvent.ZERO_SPI:
      return ['ESP with zero SPI dropped', { from: ip(a), to: b === 0 ? undefined : ip(b) }];
    case IpsecEvent.RESERVED_SPI:
      return ['inbound ESP with reserved SPI dropped', { remote: ip(a), spi: hex32(c) }];
    case IpsecEvent.ZERO_COOKIE:
      return ['ISAKMP with zero initiator cookie', { from: ip(a), to: b === 0 ? undefined : ip(b) }];
    case IpsecEvent.ESP_BLOCKED:
      return [`ESP from ${ip(a)} temporarily blocked by pending ${ip(d)} init`, { lan: ip(a), remote: ip(b), spi: hex32(c), pendingLan: ip(d) }];
    case IpsecEvent.ESP_BLOCKED_SELF:
      return [`ESP from ${ip(a)} SPI ${hex32(c)} temporarily blocked by its own pending init`, { lan: ip(a), remote: ip(b), spi: hex32(c) }];
    case IpsecEvent.ESP_BLOCKED_PARALLEL:
      return [`ESP from ${ip(a)} refused: ${ip(b)} is in use by ${ip(d)} (parallel sessions off)`, { lan: ip(a), remote: ip(b), spi: hex32(c), owner: ip(d) }];
    case IpsecEvent.ESP_RETRY:
      return ['pending ESP init retransmitted while others wait', { lan: ip(a), remote: ip(b), spi: hex32(c), retries: d }];
    case IpsecEvent.ESP_SQUELCH:
      return [`ESP from ${ip(a)} SPI ${hex32(c)}: no response after ${d} tries, unblocking & squelching`, { lan: ip(a), remote: ip(b), spi: hex32(c), retries: d }];
    case IpsecEvent.ESP_ESTABLISHED:
      return ['ESP association established', { lan: ip(a), remote: ip(b), outSpi: hex32(c), inSpi: hex32(d) }];
    case IpsecEvent.ESP_GUESS:
      return [`inbound ESP from ${ip(a)} SPI ${hex32(c)} guessed to ${d} candidate(s)`, { remote: ip(a), spi: hex32(c), first: ip(b), candidates: d }];
    case IpsecEvent.ESP_NO_MAPPING:
      return [`inbound ESP from ${ip(a)} SPI ${hex32(c)} has no masq table entry`, { remote: ip(a), spi: hex32(c) }];
    case IpsecEvent.ISAKMP_COLLISION:
      return [`ISAKMP from ${ip(a)} collides with the outstanding exchange of ${ip(d)}`, { lan: ip(a), remote: ip(b), icookieHigh: hex32(c), pendingLan: ip(d) }];
    case IpsecEvent.ISAKMP_GUESS:
      return [`ISAKMP from ${ip(a)} with unknown cookie sent to ${d} recent host(s)`, { remote: ip(a), icookieHigh: hex32(c), first: ip(b), candidates: d }];
    case IpsecEvent.ISAKMP_NO_MAPPING:
      return [`inbound ISAKMP from ${ip(a)} has no masq table entry`, { remote: ip(a), icookie: hex64(b, c) }];
    case IpsecEvent.ISAKMP_FORWARD:
      return [`ISAKMP from ${ip(a)} starts an exchange with the forwarded server ${ip(b)}`, { remote: ip(a), server: ip(b), icookie: hex64(c, d) }];
    case IpsecEvent.ESP_SERVER:
      return [`inbound ESP from ${ip(a)} SPI ${hex32(c)} sent to ${ip(b)}, its ISAKMP server`, { remote: ip(a), server: ip(b), spi: hex32(c) }];
    case IpsecEvent.ESP_FORWARD:
      return [`inbound ESP from ${ip(a)} SPI ${hex32(c)} forwarded to ${ip(b)}`, { remote: ip(a), lan: ip(b), spi: hex32(c) }];
    default:
      return ['AH refused: it signs the addresses a NAT must change', { from: ip(a), to: ip(b) }];
  }
}
