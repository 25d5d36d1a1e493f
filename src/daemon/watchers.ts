/**
 * `vpnmasq conns watch`: table events fanned out to every watcher with
 * bounded cost. The hub is one observer of the daemon's feed, whatever the
 * number of watchers: it queues the events (typed arrays) and works through
 * them in slices of the event loop (slices.ts), building each event's row
 * and JSON line once for all watchers and writing each watcher's lines of a
 * round (FLUSH_MS) in one write, so 300 watchers cost 300 writes a round,
 * not 300 per event.
 *
 * A watcher may hold WATCH_BUFFER_BYTES of lines its socket has not taken.
 * One that falls further behind stops getting events; once it takes its
 * buffer, or after BEHIND_GRACE_MS, it gets one `events lost: N` line and is
 * disconnected, as conntrack -E stops at ENOBUFS: from then on its picture
 * of the table would be wrong. The line waits behind what the socket holds;
 * the connection closes once the client read it, or after CUT_LINGER_MS. So
 * a client that never reads costs its buffers for a while, and no work.
 */
import * as net from 'node:net';
import { EV_DESTROY, EV_NEW, EV_UPDATE } from '../core/journal';
import type { JournalObserver } from '../query/journal-feed';
import { AnyConnRow, compileFilter, ConnFilter, isEmptyFilter, Pred } from '../query/filters';
import type { ConnRow } from '../query/rows';
import { pause, spent } from './slices';

const encoder = new TextEncoder();

export const EVENT_NAMES: Record<number, string> = { [EV_NEW]: 'NEW', [EV_UPDATE]: 'UPDATE', [EV_DESTROY]: 'DESTROY' };

/** Lines a watcher may have waiting for its socket. */
export const WATCH_BUFFER_BYTES = 64 * 1024;
/** How long a watcher that fell behind has to take its buffer before it is cut off anyway. */
export const BEHIND_GRACE_MS = 1000;
/**
 * How long a watcher that was cut off may take to read what it was sent and
 * its `events lost` line before its connection is closed anyway: it holds
 * its buffers and one of the control connections meanwhile, and gets nothing more.
 */
export const CUT_LINGER_MS = 60_000;
/** Each watcher gets at most one write per this many ms: its lines of the round, together. */
const FLUSH_MS = 50;
/** ... or earlier once the round has this many bytes of lines. */
const FLUSH_BYTES = 16 * 1024;
/** Events queued for the watchers between rounds; beyond that every watcher misses them. */
const QUEUE_EVENTS = 1 << 16;

/** What the hub needs from the daemon. */
export interface WatchSource {
  rowOf(table: number, index: number, serial: number): ConnRow | null;
  addObserver(o: JournalObserver): void;
  removeObserver(o: JournalObserver): void;
}

interface Watcher {
  conn: net.Socket;
  match: Pred;
  /** Rows whose slot was reused carry only their id: they pass only an empty filter. */
  idOnly: boolean;
  /** Its lines of the round (each built once for every watcher), written together. */
  lines: string[];
  bytes: number;
  /** Events missed since it fell behind; 0 while it keeps up. */
  lost: number;
  cut: boolean;
}

export class WatchHub implements JournalObserver {
  private readonly kinds = new Uint8Array(QUEUE_EVENTS);
  private readonly tables = new Uint8Array(QUEUE_EVENTS);
  private readonly indexes = new Int32Array(QUEUE_EVENTS);
  private readonly serials = new Float64Array(QUEUE_EVENTS);
  private head = 0;
  private tail = 0;
  private running = false;
  private readonly watchers: Watcher[] = [];
  /** Every line built in the round, in order. */
  private round: string[] = [];
  private roundBytes = 0;

  constructor(private readonly source: WatchSource, private readonly now: () => number) {}

  get count(): number { return this.watchers.length; }

  /** Streams the events that pass `filter` to `conn` until it goes (or is cut off); resolves then. */
  watch(conn: net.Socket, filter: ConnFilter | undefined): Promise<void> {
    const w: Watcher = { conn, match: compileFilter(filter), idOnly: isEmptyFilter(filter), lines: [], bytes: 0, lost: 0, cut: false };
    if (this.watchers.length === 0) this.source.addObserver(this);
    this.watchers.push(w);
    conn.write(JSON.stringify({ watching: true }) + '\n');
    return new Promise((resolve) => {
      conn.once('close', () => {
        this.drop(w);
        resolve();
      });
      // The client never sends more than its one request; its end of the stream means it is gone.
      conn.once('end', () => conn.destroy());
    });
  }

  // ---- the feed (after each batch): numbers only ---------------------------------

  event(kind: number, table: number, index: number, serial: number): void {
    if (this.head - this.tail >= QUEUE_EVENTS) {
      // The watchers are this far behind as a whole: each misses the event.
      for (const w of this.watchers) this.behind(w, 1);
      return;
    }
    const i = this.head & (QUEUE_EVENTS - 1);
    this.kinds[i] = kind;
    this.tables[i] = table;
    this.indexes[i] = index;
    this.serials[i] = serial;
    this.head++;
    if (!this.running) {
      this.running = true;
      setImmediate(() => void this.run());
    }
  }

  /** Events the feed could not deliver: every watcher missed them. */
  lost(n: number): void {
    for (const w of this.watchers) this.behind(w, n);
  }

  // ---- the work, in slices ---------------------------------------------------------

  /**
   * Rounds of at most one write per watcher every FLUSH_MS (or FLUSH_BYTES of
   * lines): the queued events become each watcher's lines, then the lines are
   * written, both within the turn's budget, pausing in between; a round that
   * found nothing ends it.
   */
  private async run(): Promise<void> {
    do {
      await pause(FLUSH_MS);
      while (this.tail < this.head) {
        const i = this.tail & (QUEUE_EVENTS - 1);
        this.tail++;
        this.fanOut(this.kinds[i], this.tables[i], this.indexes[i], this.serials[i]);
        if (this.roundBytes >= FLUSH_BYTES) await this.flushAll();
        else if (spent()) await pause();
      }
      await this.flushAll();
    } while (this.tail < this.head);
    this.running = false;
  }

  private fanOut(kind: number, table: number, index: number, serial: number): void {
    let row: AnyConnRow | { id: number } | undefined;
    let line: string | undefined;
    for (const w of this.watchers) {
      if (w.lost > 0) {
        w.lost++;
        continue;
      }
      row ??= (this.source.rowOf(table, index, serial) as AnyConnRow | null) ?? { id: serial };
      if ('proto' in row ? !w.match(row) : !w.idOnly) continue;
      if (line === undefined) {
        line = JSON.stringify({ event: EVENT_NAMES[kind], time: new Date(this.now()).toISOString(), conn: row }) + '\n';
        this.round.push(line);
        this.roundBytes += line.length;
      }
      if (w.conn.writableLength + w.bytes + line.length > WATCH_BUFFER_BYTES) {
        this.behind(w, 1);
        continue;
      }
      w.lines.push(line);
      w.bytes += line.length;
    }
  }

  /**
   * Writes every watcher's lines of the round, one write each; the watchers
   * that took every line of the round (no filter, or one every event passed)
   * share one encoded buffer.
   */
  private async flushAll(): Promise<void> {
    let shared: Uint8Array | undefined;
    const all = this.round.length;
    // A snapshot: a watcher that goes during a pause is skipped (its socket is destroyed).
    for (const w of this.watchers.slice()) {
      if (w.lines.length > 0 && !w.cut && !w.conn.destroyed) {
        if (w.lines.length === all) w.conn.write(shared ??= encoder.encode(this.round.join('')));
        else w.conn.write(w.lines.join(''));
      }
      w.lines = [];
      w.bytes = 0;
      if (w.lost > 0 && !w.cut && w.conn.writableLength === 0) this.cut(w);
      if (spent()) await pause();
    }
    this.round = [];
    this.roundBytes = 0;
  }

  /** `w` missed `n` events: it gets no more, and is cut off once it took its buffer or after the grace time. */
  private behind(w: Watcher, n: number): void {
    const first = w.lost === 0;
    w.lost += n;
    if (!first || w.cut) return;
    const timer = setTimeout(() => this.cut(w), BEHIND_GRACE_MS);
    timer.unref();
    w.conn.once('drain', () => { clearTimeout(timer); this.cut(w); });
    w.conn.once('close', () => clearTimeout(timer));
  }

  /** One `events lost: N` line (conntrack -E's ENOBUFS), then the connection ends; a client that does not read is dropped. */
  private cut(w: Watcher): void {
    if (w.cut) return;
    w.cut = true;
    const lost = w.lost;
    w.conn.end(JSON.stringify({
      event: 'LOST', time: new Date(this.now()).toISOString(), lost,
      error: `events lost: ${lost} (the watcher fell behind; watch again for a consistent picture)`,
    }) + '\n');
    // It is no watcher any more; its connection stays until it has read the line (or CUT_LINGER_MS).
    this.drop(w);
    setTimeout(() => w.conn.destroy(), CUT_LINGER_MS).unref();
  }

  private drop(w: Watcher): void {
    const i = this.watchers.indexOf(w);
    if (i < 0) return;
    this.watchers.splice(i, 1);
    if (this.watchers.length === 0) {
      this.source.removeObserver(this);
      this.tail = this.head;
    }
  }
}
