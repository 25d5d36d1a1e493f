/**
 * Where each id lives: serial -> (journal table, record), so `conns show ID`
 * and `conns delete ID` find their entry directly instead of building a row
 * for every entry. Kept from the table events (a JournalObserver, fed after
 * the batch); rebuilt from the tables after restore or when events were lost.
 * Ids are one space across the tables (src/core/journal.ts).
 */
import { EV_DESTROY, EV_NEW } from '../core/journal';
import { FlowIndex } from '../core/flow-index';
import type { JournalObserver } from './journal-feed';

/** One table's records: which are in use and their serials. */
export interface IdSource {
  /** Journal table id (1..7). */
  readonly table: number;
  readonly capacity: number;
  /** Non-zero while a record is in use. */
  readonly inUse: Uint8Array;
  readonly serial: Float64Array;
}

export interface EntryRef {
  table: number;
  index: number;
}

const TWO_32 = 4294967296;
/** A value packs the record and the table: index * 8 + table. */
const TABLE_BITS = 8;

export class IdIndex implements JournalObserver {
  private readonly index: FlowIndex;
  /** Events were lost: rebuild before the next lookup. */
  private stale = false;

  /** Built while the tables are empty; after that every entry arrives as an event or through rebuild(). */
  constructor(private readonly sources: () => readonly IdSource[]) {
    const entries = sources().reduce((n, s) => n + s.capacity, 0);
    this.index = new FlowIndex(entries);
  }

  event(kind: number, table: number, index: number, serial: number): void {
    if (this.stale) return;
    if (kind === EV_NEW) {
      this.index.set(serial % TWO_32 | 0, Math.floor(serial / TWO_32), 0, 0, index * TABLE_BITS + table);
    } else if (kind === EV_DESTROY) {
      this.index.delete(serial % TWO_32 | 0, Math.floor(serial / TWO_32), 0, 0);
    }
  }

  /** Events were lost, or entries came without them (a restore): rebuilt at the next lookup. */
  lost(): void {
    this.stale = true;
  }


  /** Where the entry with this id is, or null. The caller checks the record still holds it. */
  find(serial: number): EntryRef | null {
    if (this.stale) this.rebuild();
    const v = this.index.get(serial % TWO_32 | 0, Math.floor(serial / TWO_32), 0, 0);
    return v < 0 ? null : { table: v % TABLE_BITS, index: Math.floor(v / TABLE_BITS) };
  }

  /** Reads every table's records (after restore, which makes no events, or when events were lost). */
  rebuild(): void {
    const idx = this.index;
    idx.clear();
    for (const s of this.sources()) {
      for (let i = 0; i < s.capacity; i++) {
        if (s.inUse[i] === 0) continue;
        const serial = s.serial[i];
        idx.set(serial % TWO_32 | 0, Math.floor(serial / TWO_32), 0, 0, i * TABLE_BITS + s.table);
      }
    }
    this.stale = false;
  }
}
