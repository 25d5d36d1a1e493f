/**
 * Reads the stored rows for restore, in pages, on a thread of its own.
 *
 * Reading a million rows out of SQLite (stepping the statement and turning
 * every value into a JavaScript one) took about half of restore; the file's
 * quick_check, checking the rows and rebuilding the tables took the other
 * half. The thread (restore-worker.ts), on a read-only connection of its
 * own, starts when the store opens the file: it reads page after page while
 * the store runs the quick_check and then rebuilds the tables from the pages
 * before, so the two halves overlap on two cores. No page is used before the
 * file passed its check. The store's restore stays synchronous: it takes
 * the pages with receiveMessageOnPort and sleeps in Atomics.wait between
 * them; the thread stays at most PAGES_AHEAD pages ahead (enough for the
 * quick_check's time).
 *
 * A page carries the rows whose values are all numbers (the common case) in
 * one Float64Array, moved to the store without a copy and checked where the
 * values lie (no JavaScript array per row), and the rare others (a NULL, a
 * string, a blob, an integer beyond 2^53 whose serial comes as text) as they
 * were read (a blob arrives as a Uint8Array). Both sides read with
 * `readPages`, so a page is the same whichever read it. When the thread does
 * not open the file within 5 s, sends no page for 30 s or fails, the store
 * reads the rest on its own connection from after the last page it took:
 * only that read's failure is a failure of the file.
 */
import * as path from 'node:path';
import { receiveMessageOnPort, MessageChannel, MessagePort, Worker } from 'node:worker_threads';
import type Database from 'better-sqlite3';

/** One stored table as restore reads it. */
export interface ReadTable {
  /** The columns' values, then the serial as text where a double does not hold it exactly (else NULL), ordered by serial. */
  first: string;
  /** The same after a serial (`?`, as text). */
  next: string;
  /** Values per row: the columns and the serial text. */
  width: number;
}

/** Where a read starts: a table, and the serial (as text) of the last row already taken from it, or null. */
export interface ReadFrom {
  table: number;
  after: string | null;
}

export interface Page {
  table: number;
  rows: number;
  /** rows × width values; a row listed in `irregular` has zeros here. */
  values: Float64Array;
  /** Rows not all numbers, by their place in the page, as read. */
  irregular: Array<{ at: number; row: unknown[] }>;
}

export type WorkerReport =
  | { kind: 'page'; page: Page }
  | { kind: 'end' }
  | { kind: 'error'; message: string };

/** Shared counters: pages the thread posted, pages the store took, and whether the thread opened the file. */
export const POSTED = 0;
export const TAKEN = 1;
export const STARTED = 2;

/** Rows per page: `all()` over a page is several times faster per row than `iterate()`. */
export const PAGE_ROWS = 10000;
/** Pages the thread reads ahead of the store (each about 1.4 MB for the sessions table): about the quick_check's time of a million rows. */
export const PAGES_AHEAD = 16;

export interface PageSourceOptions {
  /** The thread's script (tests give a broken one). */
  script?: string;
  /** How long the thread may take to open the file, and to send the next page, before the store reads on its own. */
  startMs?: number;
  stallMs?: number;
}

/** The serial of row `v` (width `w`) as text, exact at any size. */
export function serialText(v: readonly unknown[], w: number): string {
  return v[w - 1] === null ? String(v[0]) : (v[w - 1] as string);
}

/** Every page of `tables` from `from` on, read on `db`. */
export function* readPages(db: Database.Database, tables: readonly ReadTable[], from: ReadFrom): Generator<Page> {
  for (let t = from.table; t < tables.length; t++) {
    const { width } = tables[t];
    const first = db.prepare(tables[t].first).raw();
    const next = db.prepare(tables[t].next).raw();
    const after = t === from.table ? from.after : null;
    for (let rows = (after === null ? first.all() : next.all(after)) as unknown[][]; rows.length > 0;
      rows = next.all(serialText(rows[rows.length - 1], width)) as unknown[][]) {
      yield pageOf(t, rows, width);
    }
  }
}

/** The serial (as text) of a page's last row. */
function lastSerial(page: Page, width: number): string {
  const last = page.rows - 1;
  const odd = page.irregular.at(-1);
  return new PageRows(page, width).serialText(last, odd?.at === last ? odd.row : null);
}

function pageOf(table: number, rows: readonly unknown[][], width: number): Page {
  const values = new Float64Array(rows.length * width);
  const irregular: Page['irregular'] = [];
  for (let r = 0; r < rows.length; r++) {
    const v = rows[r];
    let plain = v[width - 1] === null;
    for (let c = 0; plain && c < width - 1; c++) plain = typeof v[c] === 'number';
    if (!plain) {
      irregular.push({ at: r, row: v });
      continue;
    }
    for (let c = 0, o = r * width; c < width - 1; c++) values[o + c] = v[c] as number;
  }
  return { table, rows: rows.length, values, irregular };
}

/**
 * The rows of a page in order: a row of numbers is read in place
 * (`page.values[offset(i) + column]`), the others as they were read.
 */
export class PageRows {
  private next = 0;

  constructor(private readonly page: Page, private readonly width: number) {}

  /** Where row i's values start in `page.values`. */
  offset(i: number): number {
    return i * this.width;
  }

  /** Row i as read when it is not all numbers, else null. Call for each row in order. */
  irregular(i: number): readonly unknown[] | null {
    const irr = this.page.irregular;
    return this.next < irr.length && irr[this.next].at === i ? irr[this.next++].row : null;
  }

  /** Row i's values in an array (a copy for a row of numbers). */
  row(i: number, irregular: readonly unknown[] | null): readonly unknown[] {
    return irregular ?? [...this.page.values.subarray(i * this.width, (i + 1) * this.width - 1), null];
  }

  /** Row i's serial as text. */
  serialText(i: number, irregular: readonly unknown[] | null): string {
    return irregular === null ? String(this.page.values[i * this.width]) : serialText(irregular, this.width);
  }
}

/** The pages of a restore: from the thread, or from the store's connection when the thread cannot. */
export class PageSource {
  private worker: Worker | null = null;
  private port: MessagePort | null = null;
  private readonly ctl = new Int32Array(new SharedArrayBuffer(12));
  private inline: Generator<Page> | null = null;
  /** Where the pages taken so far end. */
  private from: ReadFrom = { table: 0, after: null };
  /** Why the thread was given up, if it was. */
  private fellBack: string | null = null;

  private readonly startMs: number;
  private readonly stallMs: number;

  constructor(private readonly db: Database.Database, file: string, private readonly tables: readonly ReadTable[], opts: PageSourceOptions = {}) {
    this.startMs = opts.startMs ?? 5000;
    this.stallMs = opts.stallMs ?? 30000;
    const { port1, port2 } = new MessageChannel();
    try {
      this.worker = new Worker(opts.script ?? path.join(__dirname, 'restore-worker.js'), { workerData: { file, tables, ctl: this.ctl.buffer, port: port2 }, transferList: [port2] });
      this.worker.unref();
      // An error the thread could not report itself (it failed to load): the store reads on its own.
      this.worker.on('error', () => undefined);
      this.port = port1;
    } catch (e) {
      port1.close();
      this.giveUp(`the restore thread did not start: ${(e as Error).message}`);
    }
  }

  /** The next page, or null after the last. Throws what the store's own read throws. */
  next(): Page | null {
    const page = this.port === null ? this.nextInline() : this.nextFromThread();
    if (page !== null) this.from = { table: page.table, after: lastSerial(page, this.tables[page.table].width) };
    return page;
  }

  /** Ends the read; returns why the thread was given up (the store read on its own), or null. */
  close(): string | null {
    this.stopThread();
    this.inline?.return(undefined);
    this.inline = null;
    return this.fellBack;
  }

  private nextFromThread(): Page | null {
    const port = this.port as MessagePort;
    const ctl = this.ctl;
    let waitedMs = 0;
    for (;;) {
      const posted = Atomics.load(ctl, POSTED);
      const m = receiveMessageOnPort(port);
      if (m !== undefined) {
        Atomics.add(ctl, TAKEN, 1);
        Atomics.notify(ctl, TAKEN);
        const r = m.message as WorkerReport;
        if (r.kind === 'page') return r.page;
        if (r.kind === 'end') {
          this.stopThread();
          return null;
        }
        this.giveUp(`the restore thread failed: ${r.message}`);
        return this.nextInline();
      }
      const limit = Atomics.load(ctl, STARTED) === 0 ? this.startMs : this.stallMs;
      if (waitedMs >= limit) {
        this.giveUp(`the restore thread sent nothing for ${limit} ms`);
        return this.nextInline();
      }
      const t0 = Date.now();
      Atomics.wait(ctl, POSTED, posted, 100);
      waitedMs += Date.now() - t0;
    }
  }

  private nextInline(): Page | null {
    this.inline ??= readPages(this.db, this.tables, this.from);
    const r = this.inline.next();
    return r.done === true ? null : r.value;
  }

  private giveUp(reason: string): void {
    this.stopThread();
    this.fellBack = reason;
  }

  private stopThread(): void {
    const w = this.worker;
    this.worker = null;
    this.port?.close();
    this.port = null;
    void w?.terminate();
  }
}
