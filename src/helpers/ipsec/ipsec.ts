/**
 * IPsec association tracking (vpn-masquerade-spec §3, §4): ISAKMP entries
 * keyed by the full 8-byte cookies, and ESP entries paired by per-remote
 * serialization of new SPIs. Decides where a packet goes and keeps the
 * state; the rewriting is nat.ts's. Struct-of-arrays plus FlowIndex, no
 * allocation and no logging on the packet path: events are counted and
 * queued (events.ts) for the daemon to log from a timer.
 */
import { FlowIndex } from '../../core/flow-index';
import { Drop, Verdict } from '../../core/verdict';
import { ESP_SPI_RESERVED_MAX } from '../../wire/esp';
import { columns, Serials, SoaRows } from '../../core/table';
import { Targets } from '../../core/targets';
import { NO_FORWARD } from '../../nat/forwards';
import { EV_DESTROY, EV_NEW, EV_UPDATE, Journal } from '../../core/journal';
import { IpsecEvent, IpsecEvents } from './events';

export { IpsecEvent, IPSEC_EVENT_NAMES } from './events';

/** Journal table ids of the two tables (state store, src/persist/). */
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
export const ESP_STATE_NAMES: readonly string[] = ['free', 'pending', 'established', 'squelched'];

/** LAN hosts remembered per remote as turned away (a blocked new SPI or a colliding cookie), for `vpnmasq ipsec`. */
export const TURNED_SLOTS = 4;

/** Distinct AH flows remembered so each is logged once. */
const AH_FLOWS = 1024;
/** Index word of the by-initiator-cookie key in kIn (rcookieKey words are odd, 0 is "not learnt"). */
const BY_ICOOKIE = 2;
/**
 * Crossed SPI pairs (two hosts' new SAs with one remote completed by each
 * other's first inbound SPI): watched this long after an entry is
 * established; an inbound packet within RESPONSE_MS of an outbound one
 * answers it, if no other entry sent to that remote in the ISOLATION_MS
 * before (so an answer is never credited to the wrong sender);
 * REPAIR_EVIDENCE answers in another entry's inbound SPI, and none in its
 * own, re-pair them.
 */
const REPAIR_WINDOW_MS = 120_000;
const RESPONSE_MS = 300;
const ISOLATION_MS = 300;
const REPAIR_EVIDENCE = 3;

const NONE = -1;
const TRANSLATED = Verdict.TRANSLATED;

export class IpsecMasq {
  readonly events = new IpsecEvents();

  // ISAKMP entries.
  private readonly kRows: SoaRows;
  readonly kInUse: Uint8Array;
  readonly kSerial: Float64Array;
  readonly kLan: Int32Array;
  readonly kRem: Int32Array;
  readonly kIc0: Int32Array;
  readonly kIc1: Int32Array;
  readonly kRc0: Int32Array;
  readonly kRc1: Int32Array;
  readonly kHasRc: Uint8Array;
  readonly kExpires: Float64Array;
  /** 1: the entry belongs to the forwarded server, created by the remote's first packet (spec §6). */
  readonly kServer: Uint8Array;
  readonly kPktsOut: Float64Array;
  readonly kPktsIn: Float64Array;
  /** 1 once the LAN host sent the learnt responder cookie itself: only then is it no longer re-learnt. */
  readonly kConfirmed: Uint8Array;
  private readonly kRemote: Int32Array;
  private readonly kOut: FlowIndex;
  private readonly kIn: FlowIndex;

  // ESP entries.
  private readonly eRows: SoaRows;
  readonly eInUse: Uint8Array;
  readonly eSerial: Float64Array;
  readonly eLan: Int32Array;
  readonly eRem: Int32Array;
  readonly eOutSpi: Int32Array;
  readonly eInSpi: Int32Array;
  /** ESP_PENDING / ESTABLISHED / SQUELCHED, ESP_FREE once removed. */
  readonly eState: Uint8Array;
  /** The state an entry had when it was removed, for its DESTROY event (`conns watch`). */
  readonly eEndState: Uint8Array;
  readonly eBlocking: Uint8Array;
  readonly eRetries: Int32Array;
  readonly eExpires: Float64Array;
  readonly eCreated: Float64Array;
  readonly ePktsOut: Float64Array;
  readonly ePktsIn: Float64Array;
  private readonly eRemote: Int32Array;
  // Crossed-pair watch: when the entry was established, answers in its own inbound SPI, and the entry
  // whose inbound SPI answered its outbound packets instead (with how often).
  private readonly eEstablishedAt: Float64Array;
  private readonly eAnswered: Int32Array;
  private readonly eWant: Int32Array;
  private readonly eWantCount: Int32Array;
  private readonly eOut: FlowIndex;
  private readonly eIn: FlowIndex;
  private readonly eByOutSpi: FlowIndex;
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
  /**
   * Crossed-pair watch: the young established entry that last sent to this
   * remote and when, when another entry last sent before it, and whether an
   * answer was credited since.
   */
  private readonly rLastOut: Int32Array;
  private readonly rLastOutAt: Float64Array;
  private readonly rOtherOutAt: Float64Array;
  private readonly rCredited: Uint8Array;
  private readonly rFree: SoaRows;
  /** Hosts turned away per remote (TURNED_SLOTS each): host, its SPI or cookie high word, the IpsecEvent, the host in the way, when (-1: empty). */
  private readonly rTurnLan: Int32Array;
  private readonly rTurnId: Int32Array;
  private readonly rTurnBy: Int32Array;
  private readonly rTurnWhy: Uint8Array;
  private readonly rTurnSeen: Float64Array;

  private readonly ahFlows = new FlowIndex(AH_FLOWS);
  private readonly removeK = (k: number): void => this.removeIsakmp(k);
  private readonly removeE = (e: number): void => this.removeEsp(e);
  private kCursor = 0;
  private eCursor = 0;
  /** Serials of new entries (both tables); restored entries keep theirs. The daemon hands in the session table's: one id space. */
  serials = new Serials();
  /** NEW / UPDATE / DESTROY of both tables for the state store and `conns watch`; set by the daemon. */
  journal: Journal | null = null;

  constructor(readonly opts: IpsecOptions) {
    const cap = opts.capacity;
    this.kRows = new SoaRows(cap);
    this.kInUse = this.kRows.inUse;
    this.kSerial = this.kRows.serial;
    [this.kLan, this.kRem, this.kIc0, this.kIc1, this.kRc0, this.kRc1, this.kRemote] = columns(Int32Array, cap, 7);
    [this.kHasRc, this.kServer, this.kConfirmed] = columns(Uint8Array, cap, 3);
    [this.kExpires, this.kPktsOut, this.kPktsIn] = columns(Float64Array, cap, 3);
    this.kOut = new FlowIndex(cap);
    // Two keys an entry: by both cookies (or the initiator cookie alone until the responder cookie is
    // learnt), and by the initiator cookie alone (the newest entry with it).
    this.kIn = new FlowIndex(cap * 2);

    this.eRows = new SoaRows(cap);
    this.eInUse = this.eRows.inUse;
    this.eSerial = this.eRows.serial;
    [this.eLan, this.eRem, this.eOutSpi, this.eInSpi, this.eRetries, this.eRemote, this.eAnswered, this.eWant, this.eWantCount] =
      columns(Int32Array, cap, 9);
    [this.eState, this.eEndState, this.eBlocking] = columns(Uint8Array, cap, 3);
    [this.eExpires, this.eCreated, this.ePktsOut, this.ePktsIn, this.eEstablishedAt] = columns(Float64Array, cap, 5);
    this.eOut = new FlowIndex(cap);
    this.eIn = new FlowIndex(cap);
    this.eByOutSpi = new FlowIndex(cap);

    this.rIndex = new FlowIndex(cap);
    [this.rRem, this.rRefs] = columns(Int32Array, cap, 2);
    this.rPending = new Int32Array(cap).fill(NONE);
    this.rLive = new Int32Array(cap);
    this.rOwner = new Int32Array(cap);
    this.rRecentLan = new Int32Array(cap * GUESS_SLOTS);
    this.rRecentSeen = new Float64Array(cap * GUESS_SLOTS).fill(-1);
    this.rServer = new Int32Array(cap).fill(NONE);
    this.rLastOut = new Int32Array(cap).fill(NONE);
    this.rLastOutAt = new Float64Array(cap);
    this.rOtherOutAt = new Float64Array(cap).fill(-Infinity);
    this.rCredited = new Uint8Array(cap);
    this.rFree = new SoaRows(cap);
    [this.rTurnLan, this.rTurnId, this.rTurnBy] = columns(Int32Array, cap * TURNED_SLOTS, 3);
    this.rTurnWhy = new Uint8Array(cap * TURNED_SLOTS);
    this.rTurnSeen = new Float64Array(cap * TURNED_SLOTS).fill(-1);
  }

  /**
   * A reload's options (capacity excepted: the tables are allocated). Entries
   * that exist keep their last activity: each deadline moves by the change
   * of the lifetime its state runs on, so a shorter lifetime can expire
   * them at the next sweep. Not the packet path.
   */
  configure(next: Omit<IpsecOptions, 'capacity'>): void {
    const o = this.opts;
    const delta = [0, next.pendingMs - o.pendingMs, next.lifetimeMs - o.lifetimeMs, next.squelchMs - o.squelchMs];
    const cap = o.capacity;
    if (delta[ESP_ESTABLISHED] !== 0) for (let k = 0; k < cap; k++) if (this.kInUse[k] === 1) this.kExpires[k] += delta[ESP_ESTABLISHED];
    for (let e = 0; e < cap; e++) if (this.eInUse[e] === 1) this.eExpires[e] += delta[this.eState[e]];
    Object.assign(o, next);
  }

  get isakmpCount(): number { return this.kRows.count; }
  /** Remotes with an entry (or just looked up for one). */
  get remoteCount(): number { return this.rFree.count; }

  /** ISAKMP entries that learnt their responder cookie (REPLIED); a scan, for the metrics. */
  isakmpReplied(): number {
    let n = 0;
    for (let k = 0; k < this.opts.capacity; k++) if (this.kInUse[k] === 1 && this.kHasRc[k] === 1) n++;
    return n;
  }
  /** Counted events by name (spec §10). */
  get eventCounts(): Float64Array { return this.events.counts; }

  // ---- ISAKMP (spec §3) ------------------------------------------------------

  /**
   * Outbound L:500 -> R:500 with these cookies. Returns TRANSLATED (the
   * source address changes, the port stays 500: Rule I-1) or a drop reason.
   */
  outIsakmp(lan: number, rem: number, ic0: number, ic1: number, rc0: number, rc1: number, now: number): Verdict {
    if ((ic0 | ic1) === 0) this.events.push(IpsecEvent.ZERO_COOKIE, lan, rem, 0, 0);
    // Rule I-2: one entry per (L, R, all 8 initiator cookie bytes).
    let k = this.liveIsakmp(this.kOut.get(lan, rem, ic0, ic1), now);
    const created = k < 0;
    if (created) {
      // Rule I-4: while another host's exchange with this cookie awaits its responder cookie, a new one collides.
      const o = this.kIn.get(rem, ic0, ic1, 0);
      if (o >= 0) {
        if (this.kExpires[o] > now) {
          this.events.push(IpsecEvent.ISAKMP_COLLISION, lan, rem, ic0, this.kLan[o]);
          this.turnAway(this.kRemote[o], lan, ic0, IpsecEvent.ISAKMP_COLLISION, this.kLan[o], now);
          return Drop.ISAKMP_COLLISION;
        }
        this.removeIsakmp(o);
      }
      // Rule I-4 for an exchange the remote started and guessed to several hosts: the first to answer
      // (its responder cookie set) keeps it; a second answer with another responder cookie collides.
      if ((rc0 | rc1) !== 0) {
        const a = this.liveIsakmp(this.kIn.get(rem, ic0, ic1, BY_ICOOKIE), now);
        if (a >= 0 && this.kLan[a] !== lan) {
          this.events.push(IpsecEvent.ISAKMP_COLLISION, lan, rem, ic0, this.kLan[a]);
          return Drop.ISAKMP_COLLISION;
        }
      }
      k = this.createIsakmp(lan, rem, ic0, ic1, this.serials.next);
      if (k < 0) return Drop.TABLE_FULL;
      this.journalNew(TABLE_ISAKMP, k, this.serials.next++);
    }
    // The LAN host's own responder cookie: the one it answers, or the one it learnt and now uses. Until it
    // has used one, a new one from the remote replaces it (inIsakmp). Learnt on the creating packet, the
    // NEW event shows it; later, an UPDATE.
    if ((rc0 | rc1) !== 0 && (this.kHasRc[k] === 0 || this.kRc0[k] !== rc0 || this.kRc1[k] !== rc1)) this.learnRcookie(k, rc0, rc1, !created);
    if ((rc0 | rc1) !== 0) this.kConfirmed[k] = 1;
    this.kExpires[k] = now + this.opts.lifetimeMs;
    this.kPktsOut[k]++;
    this.touchRecent(this.kRemote[k], lan, now);
    return TRANSLATED;
  }

  /**
   * Inbound R:500 -> P:500. `server` is the LAN server of a udp/500 forward
   * (Forwards.isakmpServer) or NO_FORWARD. Returns TRANSLATED with the LAN
   * hosts in `to`, or a drop reason.
   */
  inIsakmp(rem: number, ic0: number, ic1: number, rc0: number, rc1: number, now: number, server: number, to: Targets): Verdict {
    // Rule I-3 / I-4: both cookies once the responder cookie is known; the first reply teaches it.
    if ((rc0 | rc1) !== 0) {
      const k = this.liveIsakmp(this.kIn.get(rem, ic0, ic1, rcookieKey(rc0, rc1)), now);
      if (k >= 0 && this.kRc0[k] === rc0 && this.kRc1[k] === rc1) return this.deliverIsakmp(k, now, to);
    }
    const k = this.liveIsakmp(this.kIn.get(rem, ic0, ic1, 0), now);
    if (k >= 0) {
      if ((rc0 | rc1) !== 0) this.learnRcookie(k, rc0, rc1, true);
      return this.deliverIsakmp(k, now, to);
    }
    if ((rc0 | rc1) !== 0) {
      // The same exchange answered again with a new responder cookie (an INVALID_KE or COOKIE retry)
      // before the LAN host used the first one: learn the new one.
      const a = this.liveIsakmp(this.kIn.get(rem, ic0, ic1, BY_ICOOKIE), now);
      if (a >= 0 && this.kConfirmed[a] === 0) {
        this.learnRcookie(a, rc0, rc1, true);
        return this.deliverIsakmp(a, now, to);
      }
    }
    if ((ic0 | ic1) === 0) this.events.push(IpsecEvent.ZERO_COOKIE, rem, 0, 0, 0);
    if (server !== NO_FORWARD) return this.isakmpToServer(server, rem, ic0, ic1, rc0, rc1, now, to);
    // Rule I-7: an exchange the remote starts goes to the hosts that spoke ISAKMP with it most recently.
    if (this.opts.guessing && this.candidates(rem, now, to) > 0) {
      this.events.push(IpsecEvent.ISAKMP_GUESS, rem, to.addr[0], ic0, to.count);
      return TRANSLATED;
    }
    this.events.push(IpsecEvent.ISAKMP_NO_MAPPING, rem, ic0, ic1, 0);
    return Drop.ISAKMP_NO_MAPPING;
  }

  /**
   * Spec §6: with a udp/500 forward, every exchange the remote starts belongs
   * to the forwarded server, not to recent LAN initiators (Rule I-7). The entry
   * is made now, keyed by the remote's cookie, so the exchange's retransmits
   * stay with the server and its replies leave from public port 500 (Rule I-1).
   */
  private isakmpToServer(server: number, rem: number, ic0: number, ic1: number, rc0: number, rc1: number, now: number,
    to: Targets): Verdict {
    // The server may hold this cookie under another responder cookie (a lost SA); it keeps the exchange.
    let k = this.liveIsakmp(this.kOut.get(server, rem, ic0, ic1), now);
    if (k < 0) {
      k = this.createIsakmp(server, rem, ic0, ic1, this.serials.next);
      if (k < 0) return Drop.TABLE_FULL;
      this.journalNew(TABLE_ISAKMP, k, this.serials.next++);
      if ((rc0 | rc1) !== 0) this.learnRcookie(k, rc0, rc1, false);
      this.events.push(IpsecEvent.ISAKMP_FORWARD, rem, server, ic0, ic1);
    }
    this.kServer[k] = 1;
    this.rServer[this.kRemote[k]] = k;
    return this.deliverIsakmp(k, now, to);
  }

  private liveIsakmp(k: number, now: number): number {
    if (k >= 0 && this.kExpires[k] <= now) {
      this.removeIsakmp(k);
      return NONE;
    }
    return k;
  }

  private deliverIsakmp(k: number, now: number, to: Targets): Verdict {
    this.kExpires[k] = now + this.opts.lifetimeMs;
    this.kPktsIn[k]++;
    this.touchRecent(this.kRemote[k], this.kLan[k], now);
    to.one(this.kLan[k]);
    return TRANSLATED;
  }

  private createIsakmp(lan: number, rem: number, ic0: number, ic1: number, serial: number): number {
    if (this.kRows.available === 0) return NONE;
    const r = this.remote(rem);
    if (r < 0) return NONE;
    const k = this.kRows.take(serial);
    this.kLan[k] = lan;
    this.kRem[k] = rem;
    this.kIc0[k] = ic0;
    this.kIc1[k] = ic1;
    this.kRc0[k] = 0;
    this.kRc1[k] = 0;
    this.kHasRc[k] = 0;
    this.kServer[k] = 0;
    this.kRemote[k] = r;
    this.kPktsOut[k] = 0;
    this.kPktsIn[k] = 0;
    this.kConfirmed[k] = 0;
    this.rRefs[r]++;
    this.kOut.set(lan, rem, ic0, ic1, k);
    this.kIn.set(rem, ic0, ic1, 0, k);
    this.kIn.set(rem, ic0, ic1, BY_ICOOKIE, k);
    return k;
  }

  /** The entry's responder cookie; `report`: the entry existed before this packet, so the change is an UPDATE event (UNREPLIED -> REPLIED). */
  private learnRcookie(k: number, rc0: number, rc1: number, report: boolean): void {
    const rem = this.kRem[k];
    const ic0 = this.kIc0[k];
    const ic1 = this.kIc1[k];
    deleteIf(this.kIn, rem, ic0, ic1, this.kHasRc[k] === 1 ? rcookieKey(this.kRc0[k], this.kRc1[k]) : 0, k);
    this.kRc0[k] = rc0;
    this.kRc1[k] = rc1;
    this.kHasRc[k] = 1;
    this.kIn.set(rem, ic0, ic1, rcookieKey(rc0, rc1), k);
    if (report && this.journal !== null) this.journal.push(EV_UPDATE, TABLE_ISAKMP, k, this.kSerial[k]);
  }

  private removeIsakmp(k: number): void {
    if (this.kInUse[k] === 0) return;
    if (this.journal !== null) this.journal.push(EV_DESTROY, TABLE_ISAKMP, k, this.kSerial[k]);
    const rem = this.kRem[k];
    deleteIf(this.kOut, this.kLan[k], rem, this.kIc0[k], this.kIc1[k], k);
    deleteIf(this.kIn, rem, this.kIc0[k], this.kIc1[k], this.kHasRc[k] === 1 ? rcookieKey(this.kRc0[k], this.kRc1[k]) : 0, k);
    deleteIf(this.kIn, rem, this.kIc0[k], this.kIc1[k], BY_ICOOKIE, k);
    this.kRows.give(k);
    if (this.rServer[this.kRemote[k]] === k) this.rServer[this.kRemote[k]] = NONE;
    this.unref(this.kRemote[k]);
  }

  // ---- ESP (spec §4) ---------------------------------------------------------

  /** Outbound ESP L -> R with SPI `spi` (spec §4.2). Returns TRANSLATED or a drop reason. */
  outEsp(lan: number, rem: number, spi: number, now: number): Verdict {
    if (spi === 0) {
      this.events.push(IpsecEvent.ZERO_SPI, lan, rem, 0, 0);
      return Drop.ESP_ZERO_SPI;
    }
    let e = this.liveEsp(this.eOut.get(lan, rem, spi, 0), now);
    if (e >= 0) {
      const st = this.eState[e];
      if (st === ESP_SQUELCHED) return Drop.ESP_SQUELCHED;
      this.ePktsOut[e]++;
      if (st === ESP_ESTABLISHED) {
        this.eExpires[e] = now + this.opts.lifetimeMs;
        if (now - this.eEstablishedAt[e] < REPAIR_WINDOW_MS) this.sent(e, now);
        return TRANSLATED;
      }
      // Pending: a retransmit restarts the timer; retries only count once another flow was turned away.
      this.eExpires[e] = now + this.opts.pendingMs;
      if (this.eBlocking[e] === 1 && ++this.eRetries[e] > this.opts.retries) {
        this.setState(e, ESP_SQUELCHED);
        this.rPending[this.eRemote[e]] = NONE;
        this.eExpires[e] = now + this.opts.squelchMs;
        this.events.push(IpsecEvent.ESP_SQUELCH, lan, rem, spi, this.eRetries[e]);
        return Drop.ESP_SQUELCHED;
      }
      if (this.eBlocking[e] === 1) this.events.push(IpsecEvent.ESP_RETRY, lan, rem, spi, this.eRetries[e]);
      return TRANSLATED;
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
      const why = this.eLan[p] === lan ? IpsecEvent.ESP_BLOCKED_SELF : IpsecEvent.ESP_BLOCKED;
      this.events.push(why, lan, rem, spi, this.eLan[p]);
      this.turnAway(r, lan, spi, why, this.eLan[p], now);
      this.unrefIfIdle(r);
      return Drop.ESP_BLOCKED;
    }
    if (!this.opts.parallel && this.rLive[r] > 0 && this.rOwner[r] !== lan) {
      this.events.push(IpsecEvent.ESP_BLOCKED_PARALLEL, lan, rem, spi, this.rOwner[r]);
      this.turnAway(r, lan, spi, IpsecEvent.ESP_BLOCKED_PARALLEL, this.rOwner[r], now);
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
    return TRANSLATED;
  }

  /**
   * Inbound ESP R -> P with SPI `spi` (spec §4.3). `forward` is the LAN
   * address of the ESP protocol forward or NO_FORWARD. Returns TRANSLATED
   * with the LAN hosts in `to`, or a drop reason.
   */
  inEsp(rem: number, spi: number, now: number, forward: number, to: Targets): Verdict {
    if ((spi >>> 0) <= ESP_SPI_RESERVED_MAX) {
      this.events.push(spi === 0 ? IpsecEvent.ZERO_SPI : IpsecEvent.RESERVED_SPI, rem, 0, spi, 0);
      return spi === 0 ? Drop.ESP_ZERO_SPI : Drop.ESP_RESERVED_SPI;
    }
    let e = this.liveEsp(this.eIn.get(rem, spi, 0, 0), now);
    if (e < 0) {
      const r = this.rIndex.get(rem, 0, 0, 0);
      e = r < 0 ? NONE : this.liveEsp(this.rPending[r], now);
      if (e >= 0) {
        // The first unknown SPI from R is assumed to answer the one pending entry; R's slot is free again.
        this.rPending[r] = NONE;
        this.eInSpi[e] = spi;
        this.eIn.set(rem, spi, 0, 0, e);
        this.eEstablishedAt[e] = now;
        this.eAnswered[e] = 0;
        this.eWant[e] = NONE;
        this.eWantCount[e] = 0;
        this.setState(e, ESP_ESTABLISHED);
        this.events.push(IpsecEvent.ESP_ESTABLISHED, this.eLan[e], rem, this.eOutSpi[e], spi);
      }
    }
    if (e >= 0) {
      if (now - this.eEstablishedAt[e] < REPAIR_WINDOW_MS) e = this.answer(e, now);
      this.eExpires[e] = now + this.opts.lifetimeMs;
      this.ePktsIn[e]++;
      to.one(this.eLan[e]);
      return TRANSLATED;
    }
    // Spec §6, like IPVS: a new SPI from a remote that a forwarded server
    // holds an ISAKMP session with goes to that server, whose first ESP answer
    // then builds the entry (pending -> established) as for any LAN host.
    const r = this.rIndex.get(rem, 0, 0, 0);
    const k = r < 0 ? NONE : this.liveIsakmp(this.rServer[r], now);
    if (k >= 0) {
      this.events.push(IpsecEvent.ESP_SERVER, rem, this.kLan[k], spi, 0);
      to.one(this.kLan[k]);
      return TRANSLATED;
    }
    // Guessing: copies to recent ISAKMP hosts, no entry created; the right host's answer builds it.
    if (this.opts.guessing && this.candidates(rem, now, to) > 0) {
      this.events.push(IpsecEvent.ESP_GUESS, rem, to.addr[0], spi, to.count);
      return TRANSLATED;
    }
    // The protocol forward is the last resort (spec §6: established -> pending -> guessing -> forward -> drop).
    if (forward !== NO_FORWARD) {
      this.events.push(IpsecEvent.ESP_FORWARD, rem, forward, spi, 0);
      to.one(forward);
      return TRANSLATED;
    }
    this.events.push(IpsecEvent.ESP_NO_MAPPING, rem, 0, spi, 0);
    return Drop.ESP_NO_MAPPING;
  }

  /**
   * Crossed SPI pairs: when two LAN hosts set up new SAs with one remote at
   * once, the first unknown inbound SPI can complete the wrong pending entry
   * (spec §4.4, "new SPI arrives inbound first"), and each host then gets the
   * other's traffic. Seen from here: an entry's outbound packets are answered
   * in another entry's inbound SPI, never in its own. An inbound packet soon
   * after a young entry's outbound one counts as its answer; a few answers in
   * another young entry's SPI, and none in its own, re-pair the two. Returns
   * the entry the inbound packet belongs to now.
   */
  private answer(x: number, now: number): number {
    const r = this.eRemote[x];
    const o = this.rLastOut[r];
    if (o < 0 || this.rCredited[r] === 1 || now - this.rLastOutAt[r] > RESPONSE_MS ||
      this.rLastOutAt[r] - this.rOtherOutAt[r] < ISOLATION_MS) return x;
    this.rCredited[r] = 1;
    if (o === x) {
      this.eAnswered[x]++;
      return x;
    }
    if (this.eAnswered[o] > 0 || this.eInUse[o] === 0 || this.eState[o] !== ESP_ESTABLISHED || now - this.eEstablishedAt[o] >= REPAIR_WINDOW_MS) return x;
    if (this.eWant[o] === x) this.eWantCount[o]++;
    else {
      this.eWant[o] = x;
      this.eWantCount[o] = 1;
    }
    if (this.eWantCount[o] < REPAIR_EVIDENCE) return x;
    // Swap the inbound SPIs: o gets the one that answers it; x gets o's, which may be its own.
    const rem = this.eRem[o];
    const a = this.eInSpi[o];
    const b = this.eInSpi[x];
    this.eInSpi[o] = b;
    this.eInSpi[x] = a;
    this.eIn.set(rem, b, 0, 0, o);
    this.eIn.set(rem, a, 0, 0, x);
    this.eAnswered[o] = 1;
    this.eWant[o] = NONE;
    this.eWantCount[o] = 0;
    this.eWant[x] = NONE;
    this.eWantCount[x] = 0;
    if (this.journal !== null) {
      this.journal.push(EV_UPDATE, TABLE_ESP, o, this.eSerial[o]);
      this.journal.push(EV_UPDATE, TABLE_ESP, x, this.eSerial[x]);
    }
    this.events.push(IpsecEvent.ESP_REPAIRED, this.eLan[o], rem, b, this.eLan[x]);
    return o;
  }

  /** A young established entry sent to its remote: the next answer may be its. */
  private sent(e: number, now: number): void {
    const r = this.eRemote[e];
    if (this.rLastOut[r] !== e) {
      if (this.rLastOut[r] >= 0) this.rOtherOutAt[r] = this.rLastOutAt[r];
      this.rLastOut[r] = e;
    }
    this.rLastOutAt[r] = now;
    this.rCredited[r] = 0;
  }

  // ---- ICMP errors about IPsec traffic (spec §9.14) ------------------------------

  /**
   * The LAN host of the ISAKMP exchange an error from outside quotes (P:500 ->
   * R:500): by its cookies when quoted, else the host that spoke IKE with R
   * most recently. -1 when none.
   */
  isakmpHostOf(rem: number, ic0: number, ic1: number, rc0: number, rc1: number, quoted: boolean, now: number, to: Targets): number {
    if (quoted) {
      let k = (rc0 | rc1) !== 0 ? this.liveIsakmp(this.kIn.get(rem, ic0, ic1, rcookieKey(rc0, rc1)), now) : NONE;
      if (k < 0) k = this.liveIsakmp(this.kIn.get(rem, ic0, ic1, 0), now);
      if (k < 0) k = this.liveIsakmp(this.kIn.get(rem, ic0, ic1, BY_ICOOKIE), now);
      return k < 0 ? NONE : this.kLan[k];
    }
    return this.candidates(rem, now, to) > 0 ? to.addr[0] : NONE;
  }

  /** True when `lan` has the ISAKMP exchange an error it sends quotes (R:500 -> L:500), by cookies when quoted. */
  isakmpIsHost(lan: number, rem: number, ic0: number, ic1: number, quoted: boolean, now: number, to: Targets): boolean {
    if (quoted) return this.liveIsakmp(this.kOut.get(lan, rem, ic0, ic1), now) >= 0;
    const n = this.candidates(rem, now, to);
    for (let i = 0; i < n; i++) if (to.addr[i] === lan) return true;
    return false;
  }

  /** True when `lan` receives ESP from `rem` with inbound SPI `spi` (an error it sends about that ESP). */
  espIsHost(lan: number, rem: number, spi: number, now: number): boolean {
    const e = this.eIn.get(rem, spi, 0, 0);
    return e >= 0 && this.eExpires[e] > now && this.eLan[e] === lan;
  }

  /** The LAN host that sent ESP with `outSpi` to `rem` (for ICMP errors quoting it, spec §9.14), or -1. */
  espByOutSpi(rem: number, outSpi: number, now: number): number {
    const e = this.eByOutSpi.get(rem, outSpi, 0, 0);
    return e >= 0 && this.eExpires[e] > now ? e : NONE;
  }

  /** AH is refused (spec §4.5); each (source, destination) flow is logged once. */
  ahRefused(src: number, dst: number): void {
    if (this.ahFlows.get(src, dst, 0, 0) >= 0) {
      this.events.count(IpsecEvent.AH_REFUSED);
      return;
    }
    if (!this.ahFlows.set(src, dst, 0, 0, 1)) {
      this.ahFlows.clear();
      this.ahFlows.set(src, dst, 0, 0, 1);
    }
    this.events.push(IpsecEvent.AH_REFUSED, src, dst, 0, 0);
  }

  private liveEsp(e: number, now: number): number {
    if (e >= 0 && this.eExpires[e] <= now) {
      this.removeEsp(e);
      return NONE;
    }
    return e;
  }

  private createEsp(lan: number, rem: number, spi: number, r: number, now: number, serial: number): number {
    const e = this.eRows.take(serial);
    if (e < 0) return NONE;
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
    this.eOut.set(lan, rem, spi, 0, e);
    this.eByOutSpi.set(rem, spi, 0, 0, e);
    this.rRefs[r]++;
    if (this.rLive[r]++ === 0) this.rOwner[r] = lan;
    this.rPending[r] = e;
    return e;
  }

  /**
   * Changes an entry's state; a live entry's change is an UPDATE event (the
   * store, `conns watch`). A squelched entry no longer makes its host the
   * remote's owner for ipsec.parallel false: the next host in line gets the
   * pending slot.
   */
  private setState(e: number, st: number): void {
    const was = this.eState[e];
    if ((was === ESP_PENDING || was === ESP_ESTABLISHED) && st !== ESP_PENDING && st !== ESP_ESTABLISHED) this.rLive[this.eRemote[e]]--;
    this.espCountByState[was]--;
    this.eState[e] = st;
    this.espCountByState[st]++;
    if (st !== ESP_FREE && this.journal !== null) this.journal.push(EV_UPDATE, TABLE_ESP, e, this.eSerial[e]);
  }

  private removeEsp(e: number): void {
    if (this.eInUse[e] === 0) return;
    const st = this.eState[e];
    if (this.journal !== null) this.journal.push(EV_DESTROY, TABLE_ESP, e, this.eSerial[e]);
    const rem = this.eRem[e];
    const r = this.eRemote[e];
    deleteIf(this.eOut, this.eLan[e], rem, this.eOutSpi[e], 0, e);
    deleteIf(this.eByOutSpi, rem, this.eOutSpi[e], 0, 0, e);
    if (st === ESP_ESTABLISHED) deleteIf(this.eIn, rem, this.eInSpi[e], 0, 0, e);
    if (this.rPending[r] === e) this.rPending[r] = NONE;
    this.eEndState[e] = st;
    this.setState(e, ESP_FREE);
    this.eRows.give(e);
    if (this.rLastOut[r] === e) this.rLastOut[r] = NONE;
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
    if (hasRc) this.learnRcookie(k, rc0, rc1, false);
    // A stored responder cookie belongs to an exchange that went on: not re-learnt.
    this.kConfirmed[k] = hasRc ? 1 : 0;
    if (server) {
      // Restored in serial order: the last one is the remote's newest server entry.
      this.kServer[k] = 1;
      this.rServer[this.kRemote[k]] = k;
    }
    this.kExpires[k] = expires;
    this.touchRecent(this.kRemote[k], lan, expires - this.opts.lifetimeMs);
    this.serials.seen(serial);
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
    const journal = this.journal;
    // The restored row is already stored: no events.
    this.journal = null;
    if (state !== ESP_PENDING) {
      // createEsp made it the remote's pending entry; only a pending one is.
      this.rPending[r] = pending;
      this.setState(e, state);
    }
    this.journal = journal;
    if (state === ESP_ESTABLISHED) {
      this.eInSpi[e] = inSpi;
      this.eIn.set(rem, inSpi, 0, 0, e);
    }
    this.eBlocking[e] = blocking ? 1 : 0;
    this.eRetries[e] = retries;
    this.eExpires[e] = expires;
    this.serials.seen(serial);
    return e;
  }

  // ---- remotes and guessing --------------------------------------------------

  /** The record of a remote, created on first use; -1 when the table is full. */
  private remote(rem: number): number {
    let r = this.rIndex.get(rem, 0, 0, 0);
    if (r >= 0) return r;
    r = this.rFree.take(0);
    if (r < 0) return NONE;
    this.rRem[r] = rem;
    this.rRefs[r] = 0;
    this.rPending[r] = NONE;
    this.rLive[r] = 0;
    this.rRecentSeen.fill(-1, r * GUESS_SLOTS, (r + 1) * GUESS_SLOTS);
    this.rServer[r] = NONE;
    this.rLastOut[r] = NONE;
    this.rOtherOutAt[r] = -Infinity;
    this.rTurnSeen.fill(-1, r * TURNED_SLOTS, (r + 1) * TURNED_SLOTS);
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

  /** Remembers a host turned away by remote record `r`: its slot, else the oldest (no allocation). */
  private turnAway(r: number, lan: number, id: number, why: number, by: number, now: number): void {
    const base = r * TURNED_SLOTS;
    const seen = this.rTurnSeen;
    let slot = base;
    for (let i = base; i < base + TURNED_SLOTS; i++) {
      if (seen[i] >= 0 && this.rTurnLan[i] === lan) {
        slot = i;
        break;
      }
      if (seen[i] < seen[slot]) slot = i;
    }
    this.rTurnLan[slot] = lan;
    this.rTurnId[slot] = id;
    this.rTurnBy[slot] = by;
    this.rTurnWhy[slot] = why;
    seen[slot] = now;
  }

  /**
   * Guess candidates for `rem` into `to`, most recent ISAKMP activity
   * first: hosts whose ISAKMP entry has more than 5 min left (spec §4.3
   * step 4). Returns how many.
   */
  private candidates(rem: number, now: number, to: Targets): number {
    to.count = 0;
    const r = this.rIndex.get(rem, 0, 0, 0);
    if (r < 0) return 0;
    const base = r * GUESS_SLOTS;
    const seen = this.rRecentSeen;
    const after = now - (this.opts.lifetimeMs - GUESS_MIN_LEFT_MS);
    const max = this.opts.guessMax;
    let boundSeen = Infinity;
    let boundSlot = base + GUESS_SLOTS;
    // Selection by descending (time, slot): hosts with equal times (one clock reading per batch) all count.
    // At most GUESS_SLOTS passes over GUESS_SLOTS slots.
    while (to.count < max) {
      let best = NONE;
      for (let i = base; i < base + GUESS_SLOTS; i++) {
        const t = seen[i];
        if (t < 0 || t <= after || t > boundSeen || (t === boundSeen && i >= boundSlot)) continue;
        if (best < 0 || t > seen[best] || (t === seen[best] && i > best)) best = i;
      }
      if (best < 0) break;
      to.add(this.rRecentLan[best]);
      boundSeen = seen[best];
      boundSlot = best;
    }
    return to.count;
  }

  // ---- per-remote view (`vpnmasq ipsec`, off the packet path) -------------------

  /** The remote's pending ESP entry (the one new SPI it may have unresolved, spec §4.2 step 3), or -1. */
  pendingOf(rem: number): number {
    const r = this.rIndex.get(rem, 0, 0, 0);
    return r < 0 ? NONE : this.rPending[r];
  }

  /** The hosts an unmatched inbound SPI or cookie from `rem` would be copied to now (empty when guessing is off). */
  guessCandidates(rem: number, now: number, to: Targets): number {
    to.count = 0;
    return this.opts.guessing ? this.candidates(rem, now, to) : 0;
  }

  /**
   * The hosts `rem` turned away since `since` (a blocked new SPI or a
   * colliding cookie), each once with its latest refusal: host, SPI or
   * initiator cookie high word, IpsecEvent, the host in the way, when.
   */
  turnedAway(rem: number, since: number, fn: (lan: number, id: number, why: number, by: number, at: number) => void): void {
    const r = this.rIndex.get(rem, 0, 0, 0);
    if (r < 0) return;
    for (let i = r * TURNED_SLOTS; i < (r + 1) * TURNED_SLOTS; i++) {
      if (this.rTurnSeen[i] >= 0 && this.rTurnSeen[i] >= since) fn(this.rTurnLan[i], this.rTurnId[i], this.rTurnWhy[i], this.rTurnBy[i], this.rTurnSeen[i]);
    }
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
      if (this.eInUse[e] === 1 && this.eExpires[e] <= now) {
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

  /** Counters and table sizes for `stats`. */
  stats(): Record<string, unknown> {
    const c = this.espCountByState;
    return {
      isakmp: this.isakmpCount,
      esp: { pending: c[ESP_PENDING], established: c[ESP_ESTABLISHED], squelched: c[ESP_SQUELCHED] },
      events: this.events.byName(),
    };
  }

  /**
   * Removes the ISAKMP and ESP entries with these ids (`vpnmasq conns
   * delete`) as their expiry does: the next outbound packet makes a new
   * entry, an inbound one no longer finds the LAN host. Returns how many.
   */
  deleteSerials(ids: ReadonlySet<number>): number {
    return this.kRows.removeRows(ids, this.removeK) + this.eRows.removeRows(ids, this.removeE);
  }

  /** Removes every entry (a WAN address change under wan.onAddressChange "drop"); returns how many. */
  removeAll(): number {
    return this.kRows.removeRows(null, this.removeK) + this.eRows.removeRows(null, this.removeE);
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
