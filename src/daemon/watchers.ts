/**
 * `vpnmasq conns watch`, the packet thread's side: table events become
 * lines once, whatever the number of watchers. The hub is one observer of
 * the daemon's feed: it queues the events (typed arrays) and works through
 * them in slices of the event loop (slices.ts), building each event's row
 * and JSON line once, and hands each round of lines (FLUSH_MS, or
 * FLUSH_BYTES of lines) to the connections' thread in one message. There
 * each watcher gets its share, and one that falls behind is cut off
 * (watch-fanout.ts).
 */
import { EV_DESTROY, EV_NEW, EV_UPDATE } from '../core/journal';
import type { JournalObserver } from '../query/journal-feed';
import type { ConnRow } from '../query/rows';
import type { WatchFeed, WatchLink } from './control';
import { pause, spent } from './slices';

const EVENT_NAMES: Record<number, string> = { [EV_NEW]: 'NEW', [EV_UPDATE]: 'UPDATE', [EV_DESTROY]: 'DESTROY' };

/** A round of lines goes to the watchers at most every this many ms... */
const FLUSH_MS = 50;
/** ... or earlier once it has this many bytes of lines. */
const FLUSH_BYTES = 16 * 1024;
/** Events queued for the watchers between rounds; beyond that every watcher misses them. */
const QUEUE_EVENTS = 1 << 16;

/** What the hub needs from the daemon. */
export interface WatchSource {
  rowOf(table: number, index: number, serial: number): ConnRow | null;
  addObserver(o: JournalObserver): void;
  removeObserver(o: JournalObserver): void;
}

export class WatchHub implements JournalObserver, WatchFeed {
  private readonly kinds = new Uint8Array(QUEUE_EVENTS);
  private readonly tables = new Uint8Array(QUEUE_EVENTS);
  private readonly indexes = new Int32Array(QUEUE_EVENTS);
  private readonly serials = new Float64Array(QUEUE_EVENTS);
  private head = 0;
  private tail = 0;
  private running = false;
  /** Watchers connected now, and where their rounds go (the connections' thread). */
  private watchers = 0;
  private link: WatchLink | null = null;
  private round: string[] = [];
  private roundBytes = 0;

  constructor(private readonly source: WatchSource, private readonly now: () => number) {}

  get count(): number { return this.watchers; }

  /** The connections' thread has `count` watchers: the hub observes the feed while there is one. */
  watching(count: number, link: WatchLink): void {
    this.link = link;
    if (count > 0 && this.watchers === 0) this.source.addObserver(this);
    if (count === 0 && this.watchers > 0) {
      this.source.removeObserver(this);
      this.tail = this.head;
    }
    this.watchers = count;
  }

  // ---- the feed (after each batch): numbers only ---------------------------------

  event(kind: number, table: number, index: number, serial: number): void {
    if (this.head - this.tail >= QUEUE_EVENTS) {
      // The watchers are this far behind as a whole: each misses the event.
      this.lost(1);
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
    if (this.watchers > 0) this.link?.lost(n);
  }

  // ---- the work, in slices ---------------------------------------------------------

  /**
   * Rounds every FLUSH_MS (or FLUSH_BYTES of lines): the queued events
   * become lines within the turn's budget, pausing in between; a round that
   * found nothing ends it.
   */
  private async run(): Promise<void> {
    do {
      await pause(FLUSH_MS);
      while (this.tail < this.head) {
        const i = this.tail & (QUEUE_EVENTS - 1);
        this.tail++;
        this.line(this.kinds[i], this.tables[i], this.indexes[i], this.serials[i]);
        if (this.roundBytes >= FLUSH_BYTES) this.flush();
        else if (spent()) await pause();
      }
      this.flush();
    } while (this.tail < this.head);
    this.running = false;
  }

  private line(kind: number, table: number, index: number, serial: number): void {
    const row = this.source.rowOf(table, index, serial) ?? { id: serial };
    const line = JSON.stringify({ event: EVENT_NAMES[kind], time: new Date(this.now()).toISOString(), conn: row }) + '\n';
    this.round.push(line);
    this.roundBytes += line.length;
  }

  private flush(): void {
    if (this.round.length > 0 && this.watchers > 0) this.link?.round(this.round);
    this.round = [];
    this.roundBytes = 0;
  }
}
