/**
 * Table events for observers (`conns watch`, the id index): queued while the
 * batch that caused them runs and delivered after it was written to the TUN,
 * so no observer (and no JSON.stringify) runs inside a batch. Inside the
 * batch the feed only copies four numbers per event into a ring of typed
 * arrays; the ring is bounded, and an observer that missed events is told
 * how many.
 */
import { Journal, JournalListener } from '../core/journal';

export interface JournalObserver {
  /** One table event, in order, after the batch that caused it was written. */
  event(kind: number, table: number, index: number, serial: number): void;
  /** `n` events were not delivered (the queue was full): what the observer built from them is incomplete. */
  lost(n: number): void;
}

/** Events held between two deliveries; beyond that they are counted as lost. */
const FEED_EVENTS = 1 << 16;

export class JournalFeed implements JournalListener {
  /** The events between two deliveries: the journal's ring, which counts what it overwrites. */
  private readonly queue: Journal;
  private lostCount = 0;
  private scheduled = false;
  private readonly observers: JournalObserver[] = [];

  /** `schedule` runs the delivery after the current batch (setImmediate: after the TUN write, before the next poll). */
  constructor(capacityPow2 = FEED_EVENTS, private readonly schedule: (fn: () => void) => void = setImmediate) {
    this.queue = new Journal(capacityPow2);
  }

  add(o: JournalObserver): void {
    this.observers.push(o);
  }

  remove(o: JournalObserver): void {
    const i = this.observers.indexOf(o);
    if (i >= 0) this.observers.splice(i, 1);
  }

  /** Queues one event (inside the batch: typed-array stores only). */
  event(kind: number, table: number, index: number, serial: number): void {
    if (this.observers.length > 0) this.queue.push(kind, table, index, serial);
  }

  /** Events were lost before they reached the feed (the journal ring overflowed). */
  lose(n: number): void {
    if (this.observers.length > 0) this.lostCount += n;
  }

  /** End of a drain: delivery is scheduled for after the batch. */
  flush(): void {
    if (this.scheduled || (this.queue.length === 0 && this.lostCount === 0 && this.queue.lost === 0)) return;
    this.scheduled = true;
    this.schedule(() => {
      this.scheduled = false;
      this.deliver();
    });
  }

  /** Hands every queued event to every observer now (also before a lookup that must see them). */
  deliver(): void {
    const observers = this.observers.slice();
    this.queue.drain((kind, table, index, serial) => {
      for (const o of observers) o.event(kind, table, index, serial);
    });
    const lost = this.lostCount + this.queue.lost;
    this.lostCount = 0;
    this.queue.lost = 0;
    if (lost > 0) for (const o of observers) o.lost(lost);
  }
}
