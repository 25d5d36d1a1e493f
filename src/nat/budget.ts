/**
 * Budgets for sessions the outside creates (issue: a SYN flood at a
 * forward filled the whole table for four minutes). A session made by an
 * inbound packet (a forward, or a mapping under endpoint-independent
 * filtering) is *unanswered* until the LAN host sends on it; while
 * unanswered it lives `unansweredMs` at most, each remote address may hold
 * `perRemote` of them, and each forward (and all endpoint-independent
 * mappings together) `perTarget`. A target over its budget gives up its
 * oldest unanswered session for the new one, in the spirit of a SYN
 * cookie: a flood churns through the budget, a real client's SYN still gets
 * in and is answered by the server within a round trip, which takes the
 * session out of the budget. Every refusal and eviction is counted.
 *
 * Per target, a ring of (session, serial) in arrival order: answered or
 * removed sessions leave stale entries that are skipped when they come
 * round, so every operation is O(1) amortized. Rings are made when forwards
 * are set, not on the packet path.
 */
import { TupleIndex } from '../core/tuple-index';
import { SlotPool } from '../core/slot-pool';

export interface InboundLimits {
  /** Unanswered sessions per forward (and for all endpoint-independent mappings together). */
  perTarget: number;
  /** Unanswered sessions per remote address. */
  perRemote: number;
  /** How long an unanswered session lives. */
  unansweredMs: number;
}

/** The target key of sessions endpoint-independent filtering creates. */
export const EIF_TARGET = 0x20000;

/** Target key of a TCP (slot 0) or UDP (slot 1) port forward. */
export function forwardTarget(slot: number, port: number): number {
  return (slot << 16) | port;
}

/** What admit() says. */
export const BUDGET_OK = 0;
export const BUDGET_REMOTE = 1;

class Ring {
  readonly session: Int32Array;
  readonly serial: Float64Array;
  head = 0;
  count = 0;

  constructor(readonly size: number) {
    this.session = new Int32Array(size);
    this.serial = new Float64Array(size);
  }
}

/** What the budget needs of the session table. */
export interface BudgetSessions {
  /** True while record `s` holds the session with this serial and it is still unanswered. */
  unansweredHolds(s: number, serial: number): boolean;
  removeSession(s: number): void;
}

export class InboundBudget {
  private readonly rings: Array<Ring | null> = [];
  private readonly ringOf = new Int32Array(EIF_TARGET + 1).fill(-1);
  private readonly remIndex: TupleIndex;
  private readonly remFree: SlotPool;
  private readonly remAddr: Int32Array;
  private readonly remCount: Int32Array;
  /** Refused because their remote holds its budget. */
  refusedRemote = 0;
  /** Oldest unanswered sessions given up for new ones. */
  evicted = 0;
  /** Refused because no remote record was free (as many remotes as the table holds sessions). */
  refusedFull = 0;

  constructor(private readonly sessions: BudgetSessions, capacity: number, public limits: InboundLimits) {
    this.remIndex = new TupleIndex(capacity);
    this.remFree = new SlotPool(capacity);
    this.remAddr = new Int32Array(capacity);
    this.remCount = new Int32Array(capacity);
  }

  /** Makes the ring of a target (forwards set, not the packet path). */
  prepare(target: number): void {
    if (this.ringOf[target] >= 0) return;
    this.ringOf[target] = this.rings.length;
    this.rings.push(new Ring(this.limits.perTarget));
  }

  /**
   * May `rem` open one more unanswered session at `target`? Makes room in
   * the target's ring by evicting its oldest unanswered session when full.
   * Returns BUDGET_OK or BUDGET_REMOTE.
   */
  admit(target: number, rem: number): number {
    const r = this.remIndex.get(rem, 0, 0, 0);
    if (r >= 0 && this.remCount[r] >= this.limits.perRemote) {
      this.refusedRemote++;
      return BUDGET_REMOTE;
    }
    if (r < 0 && this.remFree.available === 0) {
      this.refusedFull++;
      return BUDGET_REMOTE;
    }
    const i = this.ringOf[target];
    if (i < 0) return BUDGET_OK;
    const ring = this.rings[i] as Ring;
    while (ring.count === ring.size) {
      const at = ring.head;
      ring.head = at + 1 === ring.size ? 0 : at + 1;
      ring.count--;
      const s = ring.session[at];
      if (this.sessions.unansweredHolds(s, ring.serial[at])) {
        this.evicted++;
        this.sessions.removeSession(s);
      }
    }
    return BUDGET_OK;
  }

  /** Session `s` (serial `serial`) from `rem` is now unanswered at `target` (after admit()). */
  added(target: number, rem: number, s: number, serial: number): void {
    let r = this.remIndex.get(rem, 0, 0, 0);
    if (r < 0) {
      r = this.remFree.take();
      this.remIndex.set(rem, 0, 0, 0, r);
      this.remAddr[r] = rem;
      this.remCount[r] = 0;
    }
    this.remCount[r]++;
    const i = this.ringOf[target];
    if (i < 0) return;
    const ring = this.rings[i] as Ring;
    const at = (ring.head + ring.count) % ring.size;
    ring.session[at] = s;
    ring.serial[at] = serial;
    ring.count++;
  }

  /** An unanswered session from `rem` was answered or removed. */
  released(rem: number): void {
    const r = this.remIndex.get(rem, 0, 0, 0);
    if (r < 0) return;
    if (--this.remCount[r] === 0) {
      this.remIndex.delete(rem, 0, 0, 0);
      this.remFree.give(r);
    }
  }

  /** Unanswered sessions a remote holds (tests, `stats`). */
  heldBy(rem: number): number {
    const r = this.remIndex.get(rem, 0, 0, 0);
    return r < 0 ? 0 : this.remCount[r];
  }
}
