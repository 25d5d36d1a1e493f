/**
 * The LAN hosts that have outbound sessions: each host's public address
 * (paired pooling, RFC 4787 REQ-2: every mapping of a host uses the same
 * one), and its budget, so that one host scanning or flooding cannot starve
 * the others (RFC 6888 REQ-4): at most `maxSessions` sessions, and new ones
 * at most `ratePerSecond` on average with bursts of `burst` (a token
 * bucket). Refusals are counted per host; a host's first refusal since the
 * last report puts it on a short list the daemon logs from a timer, one
 * line per host at most once a minute.
 *
 * The address a host gets is the one with the highest rendezvous hash of
 * (host, address), so it is the same after a restart, and adding or
 * removing an address moves only the hosts it gains or loses; a host whose
 * mappings were restored keeps their address while it has any. A record
 * lives while its host has sessions and for a while after (its bucket
 * refills), then the sweep frees it. Struct-of-arrays, no allocation.
 */
import { TupleIndex } from '../core/tuple-index';
import { SlotPool } from '../core/slot-pool';

export interface HostLimits {
  /** Sessions one LAN host may hold. */
  maxSessions: number;
  /** New sessions per second one LAN host may open on average; 0 = unlimited. */
  ratePerSecond: number;
  /** How many it may open at once (the bucket's size). */
  burst: number;
}

/** admit() results. */
export const ADMITTED = 0;
export const HOST_SESSION_LIMIT = 1;
export const HOST_RATE_LIMIT = 2;
export const HOST_TABLE_FULL = 3;

/** A record with no session is freed once idle this long (its bucket has refilled by then). */
const IDLE_MS = 10_000;
/** Hosts waiting to be reported. */
const OFFENDER_SLOTS = 256;
/** A host is reported at most once a minute. */
const REPORT_MS = 60_000;

const NONE = -1;

export class LanHosts {
  readonly capacity: number;
  private readonly index: TupleIndex;
  private readonly free: SlotPool;
  readonly inUse: Uint8Array;
  readonly lan: Int32Array;
  readonly sessions: Int32Array;
  readonly pubIdx: Int32Array;
  private readonly tokens: Float64Array;
  private readonly stamp: Float64Array;
  /** New flows refused since the last report, by reason. */
  readonly refusedSessions: Float64Array;
  readonly refusedRate: Float64Array;
  private readonly listed: Uint8Array;
  private readonly reportedAt: Float64Array;
  private readonly offenders: Int32Array;
  private offenderCount = 0;
  /** Offenders that did not fit the list (reported as a number). */
  offendersLost = 0;
  count = 0;
  private sweepCursor = 0;

  constructor(capacity: number, private readonly publicAddrs: Int32Array, public limits: HostLimits) {
    this.capacity = capacity;
    this.index = new TupleIndex(capacity);
    this.free = new SlotPool(capacity);
    this.inUse = new Uint8Array(capacity);
    this.lan = new Int32Array(capacity);
    this.sessions = new Int32Array(capacity);
    this.pubIdx = new Int32Array(capacity);
    this.tokens = new Float64Array(capacity);
    this.stamp = new Float64Array(capacity);
    this.refusedSessions = new Float64Array(capacity);
    this.refusedRate = new Float64Array(capacity);
    this.listed = new Uint8Array(capacity);
    this.reportedAt = new Float64Array(capacity).fill(-Infinity);
    this.offenders = new Int32Array(OFFENDER_SLOTS);
  }

  /** The record of a LAN host, or -1. */
  find(lan: number): number {
    return this.index.get(lan, 0, 0, 0);
  }

  /** The record of a LAN host, made on first use with `pubIdx` (< 0: chosen by hash); -1 when the table is full. */
  record(lan: number, now: number, pubIdx = NONE): number {
    let h = this.index.get(lan, 0, 0, 0);
    if (h !== NONE) return h;
    h = this.free.take();
    if (h < 0) return NONE;
    this.index.set(lan, 0, 0, 0, h);
    this.inUse[h] = 1;
    this.lan[h] = lan;
    this.sessions[h] = 0;
    this.pubIdx[h] = pubIdx >= 0 ? pubIdx : pairedAddress(lan, this.publicAddrs);
    this.tokens[h] = this.limits.burst;
    this.stamp[h] = now;
    this.refusedSessions[h] = 0;
    this.refusedRate[h] = 0;
    this.listed[h] = 0;
    this.reportedAt[h] = -Infinity;
    this.count++;
    return h;
  }

  /** The public address index of a LAN host: its record's, else the one it would get. */
  addressOf(lan: number): number {
    const h = this.index.get(lan, 0, 0, 0);
    return h !== NONE ? this.pubIdx[h] : pairedAddress(lan, this.publicAddrs);
  }

  /**
   * May host `h` open one more session now? Refills its bucket; counts the
   * refusal when it may not. Returns ADMITTED (added() then takes the
   * token) or the limit it hit.
   */
  admit(h: number, now: number): number {
    const lim = this.limits;
    if (this.sessions[h] >= lim.maxSessions) {
      this.refusedSessions[h]++;
      this.offend(h);
      return HOST_SESSION_LIMIT;
    }
    if (lim.ratePerSecond > 0) {
      let t = this.tokens[h] + ((now - this.stamp[h]) * lim.ratePerSecond) / 1000;
      if (t > lim.burst) t = lim.burst;
      this.stamp[h] = now;
      this.tokens[h] = t;
      if (t < 1) {
        this.refusedRate[h]++;
        this.offend(h);
        return HOST_RATE_LIMIT;
      }
    }
    return ADMITTED;
  }

  /** Host `h` opened a session (after admit()). */
  added(h: number): void {
    this.sessions[h]++;
    this.tokens[h]--;
  }

  /** One of host `h`'s sessions was restored at start (it takes no token). */
  restored(h: number): void {
    this.sessions[h]++;
  }

  /** One of the sessions a LAN host was counted for is gone. */
  removed(lan: number): void {
    const h = this.index.get(lan, 0, 0, 0);
    if (h !== NONE) this.sessions[h]--;
  }

  private offend(h: number): void {
    if (this.listed[h] === 1) return;
    if (this.offenderCount === OFFENDER_SLOTS) {
      this.offendersLost++;
      return;
    }
    this.listed[h] = 1;
    this.offenders[this.offenderCount++] = h;
  }

  /**
   * Calls fn for each host refused something since it was last reported,
   * once a minute at most per host (the daemon logs one line each), and
   * clears its counts; hosts reported less than a minute ago wait.
   */
  drainOffenders(now: number, fn: (lan: number, sessions: number, refusedSessions: number, refusedRate: number) => void): void {
    let kept = 0;
    for (let i = 0; i < this.offenderCount; i++) {
      const h = this.offenders[i];
      if (this.reportedAt[h] > now - REPORT_MS) {
        this.offenders[kept++] = h;
        continue;
      }
      this.listed[h] = 0;
      this.reportedAt[h] = now;
      fn(this.lan[h], this.sessions[h], this.refusedSessions[h], this.refusedRate[h]);
      this.refusedSessions[h] = 0;
      this.refusedRate[h] = 0;
    }
    this.offenderCount = kept;
  }

  /** Frees at most `budget` records whose host has had no session for a while (off the packet path). */
  sweep(now: number, budget: number): void {
    const cap = this.capacity;
    let i = this.sweepCursor;
    for (let n = 0; n < budget && n < cap; n++) {
      if (this.inUse[i] === 1 && this.sessions[i] <= 0 && this.listed[i] === 0 && now - this.stamp[i] >= IDLE_MS) {
        this.index.delete(this.lan[i], 0, 0, 0);
        this.inUse[i] = 0;
        this.free.give(i);
        this.count--;
      }
      i = i + 1 === cap ? 0 : i + 1;
    }
    this.sweepCursor = i;
  }
}

/**
 * Rendezvous (highest random weight) hashing: the address whose hash with
 * the host is highest, so the choice depends on the host and the address
 * list only.
 */
export function pairedAddress(lan: number, addrs: Int32Array): number {
  if (addrs.length === 1) return 0;
  let best = 0;
  let bestScore = -1;
  for (let i = 0; i < addrs.length; i++) {
    let h = Math.imul(lan ^ 0x5bd1e995, 0x85ebca6b) ^ addrs[i];
    h = Math.imul(h ^ (h >>> 16), 0xc2b2ae35);
    h = Math.imul(h ^ (h >>> 13), 0x27d4eb2f);
    const score = (h ^ (h >>> 16)) >>> 0;
    if (score > bestScore) { bestScore = score; best = i; }
  }
  return best;
}
