/**
 * The state store: persists the connection tables in SQLite (better-sqlite3,
 * WAL) so kill -9, a restart or a reboot loses no connection a peer has seen.
 *
 * Write path (the store is a JournalListener of the daemon):
 *  - NEW and DESTROY events are queued by `event` and committed by `flush`
 *    in one transaction. The daemon drains the journal after every batch that
 *    changed a table and BEFORE that batch's packets are written, so a new
 *    mapping is durable before its first packet leaves (write-ahead), and all
 *    new flows of one batch share one commit (group commit). Packets of
 *    existing flows cause no database work.
 *  - Data that may lag (last seen, counters, TCP state, expiry) is written by
 *    `tick` every state.flushIntervalMs, at most UPDATE_BATCH rows per tick,
 *    from the rows each codec reports dirty.
 *  - `synchronous`: 'normal' survives a crash of vpnmasq (kill -9) but a
 *    power loss may roll back the last commits; 'full' fsyncs every commit
 *    (about 250 µs each on a virtio disk, so fewer new flows per second);
 *    'off' leaves durability to the OS.
 *
 * Faults (busy, disk full, unwritable, deleted/replaced or corrupt file)
 * never reach the packet path: forwarding continues from memory, the store
 * turns unhealthy (log + `health()`), keeps retrying every tick, and rewrites
 * the whole live table once writes succeed again. A file that is corrupt at
 * start, or at the current version with other tables than this vpnmasq's, is
 * renamed to `<path>.corrupt-<timestamp>` (`.wrong-schema-`) and the router
 * starts empty. A file of a newer schema version is left untouched and not
 * used (the store stays unhealthy and says why) unless the daemon was told
 * to move it aside (`vpnmasq run --force-downgrade`).
 *
 * Restore never loses a row: a row that fails its checks (columns.ts,
 * tables.ts), conflicts with one restored before it or finds no room is moved
 * to the `quarantine` table with its values and the reason, in the same
 * transaction that takes it out of its table, and the count is logged at
 * error level and shown by `vpnmasq status`. The rows are read on a thread
 * of their own while the store checks the file and rebuilds the tables
 * (restore-reader.ts). If restore itself fails, the file is moved aside as
 * it is (`.unrestored-<timestamp>`) before anything is written, and the rows
 * read so far go into a new file.
 *
 * ---- Adding a table ----------------------------------------------------
 * 1. Declare its column spec in tables.ts (columns.ts says what a column
 *    declares); the current schema's CREATE statement comes from it. Add a
 *    schema version whose migration creates the table (schema.ts).
 * 2. Push EV_NEW / EV_DESTROY (src/core/journal.ts) with the spec's journal
 *    table id and the entry's index and serial, exactly like SessionTable does.
 * 3. Add the spec to TABLES (tables.ts) after the tables its rows refer to:
 *    tables restore in that order. `store.registerTable(new TableCodec(SPEC,
 *    liveTable))` in the daemon before `store.restore(...)`.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { Checkpointer } from './checkpointer';
import { IdSet } from './id-set';
import { PAGE_ROWS, PageRows, PageSource, ReadTable } from './restore-reader';
import { EV_DESTROY, EV_NEW, EV_UPDATE, JournalListener } from '../core/journal';
import { RestoreContext, TableCodec } from './columns';
import { classify, DbHealth, describeError, errorCode, Fault, SCHEMA_MISMATCH, SCHEMA_NEWER } from './health';
import type { StoreConfig } from './options';
import { CREATE_STATEMENTS, MIGRATIONS, QUARANTINE_TABLE, SCHEMA_VERSION, SIDE_TABLES } from './schema';
import { TABLES } from './tables';
import { columnNames } from './columns';

/** What the store logs through (the daemon's logger). */
export interface StoreLog {
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  /** A rate-limited event of `kind`. */
  event(kind: string, msg: string, fields?: Record<string, unknown>): void;
}

/** Busy timeout: a reader or a second writer makes us retry later, it never stalls forwarding for long. */
const BUSY_TIMEOUT_MS = 2;
/** Events held while the database is unavailable; beyond that the store rewrites everything on recovery. */
const QUEUE_MAX = 1 << 16;
/** Dirty rows written per tick, so an update flush stays short (~30 ms at 300 k rows/s). */
const UPDATE_BATCH = 10000;
/** How often the file's identity (device, inode) is checked. */
const FILE_CHECK_MS = 2000;
/** Pages freed per incremental vacuum step. */
const VACUUM_PAGES = 256;
const WAL_SIZE_LIMIT = 4 * 1024 * 1024;
/**
 * The checkpoint thread copies the WAL back, but only a writer restarts the
 * WAL from its start, and only when a checkpoint copied all of it: under
 * commits that never pause, that does not happen and the WAL grows. Beyond
 * this size the timer's tick checkpoints and truncates it on the packet
 * thread; the thread has copied most of it by then, so that costs little.
 */
const WAL_TRIM_BYTES = 64 * 1024 * 1024;
/** SQLite's automatic checkpoint (pages), used while the checkpoint thread is not. */
const AUTO_CHECKPOINT_PAGES = 1000;

/** Rows kept in the quarantine table; beyond that the oldest go. */
const QUARANTINE_MAX = 100_000;

/** A stored row that could not be restored and goes to the quarantine table. */
interface QuarantinedRow {
  table: string;
  /** The stored serial as text (exact even beyond 2^53). */
  serial: string;
  /** The stored values by column, as JSON. */
  row: string;
  reason: string;
}

interface Registered {
  codec: TableCodec;
  buf: unknown[];
  upd: unknown[];
  insert: Database.Statement | null;
  update: Database.Statement | null;
  remove: Database.Statement | null;
}

export interface StoreOptions {
  /** Wall clock in ms (tests move it). */
  now?: () => number;
  /**
   * A file of a newer schema version: 'refuse' leaves it untouched and
   * persists nothing (default); 'move-aside' renames it and starts a new file
   * (`vpnmasq run --force-downgrade`).
   */
  newerSchema?: 'refuse' | 'move-aside';
  /** The WAL size beyond which tick() truncates it (default WAL_TRIM_BYTES; tests lower it). */
  walTrimBytes?: number;
}

/** Counters kept across restarts: `values[i]` is stored under `names[i]`. */
interface Counters {
  names: readonly string[];
  values: Float64Array;
  /** The values last written (NaN: write it). */
  written: Float64Array;
}

export class Store implements JournalListener {
  private conn: Database.Database | null = null;
  private fileId = '';
  private lastFileCheck = 0;
  private readonly tables: (Registered | undefined)[] = [];
  private readonly registered: Registered[] = [];
  private readonly counters: Counters[] = [];
  private upsertCounter: Database.Statement | null = null;
  private readonly qKind = new Uint8Array(QUEUE_MAX);
  private readonly qTable = new Uint8Array(QUEUE_MAX);
  private readonly qIndex = new Int32Array(QUEUE_MAX);
  private readonly qSerial = new Float64Array(QUEUE_MAX);
  private qLen = 0;
  /** The database no longer mirrors memory: rewrite every live row on recovery. */
  private needsRewrite = false;
  private healthy = false;
  private lastError: string | null = null;
  private lastErrorAt: number | null = null;
  private rowsRestored = 0;
  private rowsDiscarded = 0;
  private rowsQuarantined = 0;
  private movedAside: string | null = null;
  private movedAsideReason: string | null = null;
  /** Set when the file is not used at all (a newer schema): nothing is written, nothing retried. */
  private refused: string | null = null;
  /** Quarantined rows not yet written (the restore transaction failed): they go first in the next write. */
  private pendingQuarantine: QuarantinedRow[] = [];
  private readonly newerSchema: 'refuse' | 'move-aside';
  private readonly walTrimBytes: number;
  private readonly dirtyBuf = new Int32Array(UPDATE_BATCH);
  private timer: NodeJS.Timeout | null = null;
  private readonly now: () => number;
  private readonly commitQueue: () => void;
  /** The restore's read, started at open so that it runs beside the quick_check (restore-reader.ts). */
  private pages: PageSource | null = null;
  /** WAL checkpoints on a thread of their own once the timer runs (checkpointer.ts). */
  private readonly checkpointer = new Checkpointer((reason) => this.checkpointsHere(reason));

  /** Opens (or creates) the database; never throws: a fault leaves the store unhealthy and retrying. */
  constructor(private cfg: StoreConfig, private readonly log: StoreLog, opts: StoreOptions = {}) {
    this.now = opts.now ?? Date.now;
    this.newerSchema = opts.newerSchema ?? 'refuse';
    this.walTrimBytes = opts.walTrimBytes ?? WAL_TRIM_BYTES;
    this.commitQueue = () => this.tx(() => this.applyQueue());
    this.tryOpen(true);
  }

  get path(): string { return this.cfg.path; }

  /** Registers the live table of one of TABLES (with its columns), before restore(). */
  registerTable(codec: TableCodec): void {
    const stored = TABLES.find((spec) => spec.sqlTable === codec.sqlTable);
    if (stored === undefined || columnNames(stored).join() !== codec.columns.join()) {
      throw new Error(`${codec.sqlTable}: not a stored table with these columns`);
    }
    const r: Registered = {
      codec, buf: new Array(codec.columns.length), upd: new Array(codec.updateColumns.length + 1),
      insert: null, update: null, remove: null,
    };
    this.tables[codec.id] = r;
    this.registered.push(r);
    if (this.conn !== null) {
      try {
        this.prepare(this.conn, r);
      } catch (e) {
        this.fault('prepare', e);
      }
    }
  }

  /**
   * Monotonic counters that survive restarts (the VPN event counts): restore()
   * adds the stored totals to `values`, every tick writes the ones that moved.
   */
  registerCounters(names: readonly string[], values: Float64Array): void {
    this.counters.push({ names, values, written: new Float64Array(values.length).fill(NaN) });
  }

  // ---- restore ---------------------------------------------------------

  /**
   * Rebuilds every registered table from the database (call before the TUN
   * starts). Expired rows and rows the address policy drops are deleted;
   * rows that cannot be restored are moved to the quarantine table (nothing
   * is lost); if reading fails, the file is moved aside before anything is
   * written and what was read stays restored.
   */
  restore(ctx: RestoreContext): { restored: number; discarded: number; quarantined: number } {
    const db = this.conn;
    if (db === null) return { restored: 0, discarded: 0, quarantined: 0 };
    const t0 = Date.now();
    let restored = 0;
    /** Serials (as text) of the rows to delete, per table of TABLES. */
    const discard: string[][] = TABLES.map(() => []);
    const quarantine: QuarantinedRow[] = [];
    /** The registered codec of each stored table (TABLES order, the order they restore in), or null. */
    const codecs = TABLES.map((spec) => this.registered.find((r) => r.codec.sqlTable === spec.sqlTable)?.codec ?? null);
    /** Values of the `unique` columns restored so far (ids: one space across the tables), and which table (of TABLES) holds each. */
    const taken = new IdSet(this.registered.reduce((n, r) => n + r.codec.capacity, 0));
    const tableNames = TABLES.map((spec) => spec.sqlTable);
    /** Serials quarantined so far, by table: what belongs to them is quarantined too. */
    const held = new Map<string, Set<number>>();
    const rctx: RestoreContext = { ...ctx, quarantined: (table, serial) => held.get(table)?.has(serial) === true };
    const source = this.pages ?? new PageSource(db, this.cfg.path, TABLES.map(readTable));
    this.pages = null;
    try {
      /** Tables before this one are restored (codec.restored() called). */
      let done = 0;
      for (let page = source.next(); page !== null; page = source.next()) {
        for (; done < page.table; done++) codecs[done]?.restored();
        const ti = page.table;
        const codec = codecs[ti];
        if (codec === null) continue;
        const gone = discard[ti];
        const unique = codec.uniqueColumns;
        const width = codec.columns.length + 1;
        const rows = new PageRows(page, width);
        const values = page.values;
        for (let i = 0; i < page.rows; i++) {
          // A row of numbers is checked and restored where it lies in the page; the rare others as they were read.
          const odd = rows.irregular(i);
          const o = rows.offset(i);
          let why: string | undefined;
          for (const c of unique) {
            const id = valueOf(values, o, odd, c);
            const holder = typeof id === 'number' ? taken.holder(id) : -1;
            if (holder >= 0) {
              why = `${codec.columns[c]}: ${String(id)} is already the id of a restored ${tableNames[holder]} row`;
              break;
            }
          }
          if (why === undefined) {
            const rejected = odd === null ? codec.restoreAt(values, o, rctx) : codec.restore(odd, rctx);
            if (rejected === undefined) {
              restored++;
              for (const c of unique) {
                const id = valueOf(values, o, odd, c);
                if (typeof id === 'number') taken.add(id, ti);
              }
              continue;
            }
            if (rejected.kind !== 'invalid' && rejected.kind !== 'conflict') {
              gone.push(rows.serialText(i, odd));
              continue;
            }
            why = rejected.column === '' ? rejected.problem : `${rejected.column}: ${rejected.problem}`;
          }
          const v = rows.row(i, odd);
          quarantine.push({ table: codec.sqlTable, serial: rows.serialText(i, odd), row: rowJson(codec.columns, v), reason: why });
          if (typeof v[0] === 'number') {
            if (!held.has(codec.sqlTable)) held.set(codec.sqlTable, new Set());
            (held.get(codec.sqlTable) as Set<number>).add(v[0]);
          }
        }
      }
      const fellBack = source.close();
      for (; done < codecs.length; done++) codecs[done]?.restored();
      if (fellBack !== null) this.log.warn('state restored without its reader thread', { path: this.cfg.path, reason: fellBack });
      this.restoreCounters(db);
    } catch (e) {
      source.close();
      this.restoreFailed(e, restored);
      return { restored, discarded: 0, quarantined: 0 };
    }
    const discarded = discard.reduce((a, d) => a + d.length, 0);
    this.pendingQuarantine = quarantine;
    try {
      this.tx(() => {
        TABLES.forEach((spec, i) => {
          if (discard[i].length === 0) return;
          const remove = db.prepare(`DELETE FROM ${spec.sqlTable} WHERE serial = CAST(? AS INTEGER)`);
          for (const serial of discard[i]) remove.run(serial);
        });
        this.applyQuarantine();
      });
    } catch (e) {
      // The rows stay where they are; the quarantine is written first by the next write that succeeds.
      this.fault('restore', e);
    }
    this.rowsRestored += restored;
    this.rowsDiscarded += discarded;
    this.rowsQuarantined += quarantine.length;
    this.log.info('state restored', { path: this.cfg.path, restored, discarded, quarantined: quarantine.length, ms: Date.now() - t0 });
    if (quarantine.length > 0) this.reportQuarantine(quarantine);
    return { restored, discarded, quarantined: quarantine.length };
  }

  /** One error line for the rows that could not be restored: how many, by table, the first reasons. */
  private reportQuarantine(rows: readonly QuarantinedRow[]): void {
    const byTable: Record<string, number> = {};
    for (const x of rows) byTable[x.table] = (byTable[x.table] ?? 0) + 1;
    this.log.error(`${rows.length} state database row${rows.length === 1 ? '' : 's'} could not be restored: kept in its quarantine table`, {
      path: this.cfg.path, rows: rows.length, byTable,
      first: rows.slice(0, 5).map((x) => `${x.table} serial ${x.serial}: ${x.reason}`),
    });
  }

  /** Writes the quarantined rows and takes them out of their tables (inside a transaction); keeps at most QUARANTINE_MAX. */
  private applyQuarantine(): void {
    const rows = this.pendingQuarantine;
    if (rows.length === 0) return;
    const db = this.conn as Database.Database;
    const add = db.prepare(`INSERT INTO ${QUARANTINE_TABLE} (quarantined_at, source, serial, reason, row) VALUES (?, ?, ?, ?, ?)`);
    const at = this.now();
    for (const x of rows) {
      add.run(at, x.table, x.serial, x.reason, x.row);
      db.prepare(`DELETE FROM ${x.table} WHERE serial = CAST(? AS INTEGER)`).run(x.serial);
    }
    db.prepare(`DELETE FROM ${QUARANTINE_TABLE} WHERE id <= (SELECT MAX(id) FROM ${QUARANTINE_TABLE}) - ${QUARANTINE_MAX}`).run();
    this.pendingQuarantine = [];
  }

  /** Adds the stored totals to the registered counters (a stored value that is not a count is ignored, and logged). */
  private restoreCounters(db: Database.Database): void {
    if (this.counters.length === 0) return;
    const stored = new Map<string, unknown>();
    for (const row of db.prepare('SELECT name, value FROM counters').raw().all() as unknown[][]) stored.set(String(row[0]), row[1]);
    const bad: string[] = [];
    for (const c of this.counters) {
      c.names.forEach((name, i) => {
        const v = stored.get(name);
        if (v === undefined) return;
        if (typeof v === 'number' && Number.isFinite(v) && v >= 0) c.values[i] += v;
        else bad.push(name);
      });
    }
    if (bad.length > 0) this.log.error('state database counters that are not counts were reset', { path: this.cfg.path, counters: bad.join(', ') });
  }

  /**
   * Reading the file failed part way: nothing of it may be overwritten. It
   * is moved aside as it is (with its WAL), a new file takes what was read.
   * If it cannot be moved, nothing is written to it.
   */
  private restoreFailed(e: unknown, restored: number): void {
    this.closeQuiet();
    const reason = `restore failed after ${restored} rows (${describeError(e)}); the file is kept as it was`;
    if (!this.moveAside('unrestored', reason)) {
      this.refused = `${reason}; it could not be moved aside, so nothing is written to it`;
      this.healthy = false;
      this.lastError = describeError(e);
      this.lastErrorAt = this.now();
      return;
    }
    this.rowsRestored += restored;
    this.needsRewrite = true;
    if (!this.tryOpen(false)) return;
  }

  // ---- journal listener ------------------------------------------------

  event(kind: number, table: number, index: number, serial: number): void {
    if (kind === EV_UPDATE || this.tables[table] === undefined) return;
    if (this.qLen === QUEUE_MAX) {
      this.needsRewrite = true;
      this.qLen = 0;
    }
    const i = this.qLen++;
    this.qKind[i] = kind;
    this.qTable[i] = table;
    this.qIndex[i] = index;
    this.qSerial[i] = serial;
  }

  /** Table events were lost before they reached the store: the next tick rewrites every live row. */
  resync(): void {
    this.needsRewrite = true;
  }

  /** Commits the queued events (write-ahead point). Skipped while unhealthy: `tick` recovers. */
  flush(): void {
    if (this.qLen === 0 || !this.healthy) return;
    try {
      this.commitQueue();
    } catch (e) {
      this.fault('commit', e);
    }
  }

  // ---- timer -----------------------------------------------------------

  /** Starts the update/health timer (every state.flushIntervalMs). */
  start(): void {
    // A restore not taken by now is not wanted: its thread's read snapshot would keep the WAL from restarting.
    this.dropPages();
    if (this.timer === null) {
      this.timer = setInterval(() => this.tick(), this.cfg.flushIntervalMs);
      this.timer.unref();
      this.attachCheckpointer();
    }
  }

  /** While the timer runs and a file is open, the checkpoint thread checkpoints it and the connection does not. */
  private attachCheckpointer(): void {
    if (this.timer === null || this.conn === null) return;
    if (this.checkpointer.attach(this.cfg.path)) this.conn.pragma('wal_autocheckpoint = 0');
  }

  /** Size of the WAL file (0 when there is none). */
  private walBytes(): number {
    return fs.statSync(`${this.cfg.path}-wal`, { throwIfNoEntry: false })?.size ?? 0;
  }

  /** The checkpoint thread stopped: commits checkpoint again (SQLite's default, every 1000 WAL pages). */
  private checkpointsHere(reason: string): void {
    try {
      this.conn?.pragma(`wal_autocheckpoint = ${AUTO_CHECKPOINT_PAGES}`);
    } catch {
      // the connection is failing: tick() reopens it, with the default
    }
    this.log.warn('state database checkpoints back on the packet thread', { path: this.cfg.path, reason });
  }

  /** Periodic work: file identity check, recovery, update flush, vacuum step. Never throws. */
  tick(maxUpdates = UPDATE_BATCH): void {
    if (this.refused !== null) return;
    const now = this.now();
    if (this.conn !== null && now - this.lastFileCheck >= FILE_CHECK_MS) {
      this.lastFileCheck = now;
      const id = this.statFile();
      if (id !== this.fileId) {
        this.fault('file check', Object.assign(new Error(id === '' ? 'database file deleted' : 'database file replaced'), { code: 'FILE_CHANGED' }));
        this.closeQuiet();
        this.needsRewrite = true;
      }
    }
    try {
      if (this.conn === null && !this.tryOpen(false)) return;
      const db = this.conn as Database.Database;
      if (this.needsRewrite) {
        this.tx(() => {
          this.applyQuarantine();
          this.rewriteAll();
        });
        this.needsRewrite = false;
      } else {
        this.tx(() => {
          this.applyQuarantine();
          this.applyQueue();
          this.applyUpdates(maxUpdates);
          this.writeCounters();
        });
      }
      if (!this.healthy) {
        this.healthy = true;
        this.log.warn('state database writes resumed', { path: this.cfg.path, after: this.lastError });
      }
      if ((db.pragma('freelist_count', { simple: true }) as number) > 0) db.pragma(`incremental_vacuum(${VACUUM_PAGES})`);
      if (this.checkpointer.running && this.walBytes() > this.walTrimBytes) db.pragma('wal_checkpoint(TRUNCATE)');
    } catch (e) {
      this.fault('tick', e);
    }
  }

  /**
   * A reload's `synchronous` and flush interval: the pragma is set on the
   * open connection (and on every reopen), the timer restarted.
   */
  configure(next: Pick<StoreConfig, 'synchronous' | 'flushIntervalMs'>): void {
    const intervalChanged = next.flushIntervalMs !== this.cfg.flushIntervalMs;
    this.cfg = { ...this.cfg, ...next };
    try {
      this.conn?.pragma(`synchronous = ${this.cfg.synchronous}`);
    } catch (e) {
      this.fault('configure', e);
    }
    if (intervalChanged && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
      this.start();
    }
  }

  /** Every live row is written again by the next update flushes (deadlines recomputed on reload). */
  markAllDirty(): void {
    for (const r of this.registered) r.codec.markAllDirty();
  }

  /** Final flush of everything and close. */
  close(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    if (this.conn !== null) {
      this.tick(Number.MAX_SAFE_INTEGER);
      this.closeQuiet();
    }
    this.checkpointer.close();
  }

  health(): DbHealth {
    let pending = this.qLen;
    if (this.needsRewrite) {
      pending = 0;
      for (const r of this.registered) pending += r.codec.liveCount();
    }
    return {
      healthy: this.healthy, pendingWrites: pending + this.pendingQuarantine.length, lastError: this.lastError, lastErrorAt: this.lastErrorAt,
      rowsRestored: this.rowsRestored, rowsDiscarded: this.rowsDiscarded, rowsQuarantined: this.rowsQuarantined,
      movedAside: this.movedAside, movedAsideReason: this.movedAsideReason, refused: this.refused,
      checkpointThread: this.checkpointer.running,
    };
  }

  // ---- internals -------------------------------------------------------

  private tx(fn: () => void): void {
    const db = this.conn as Database.Database;
    db.transaction(fn).immediate();
  }

  private applyQueue(): void {
    const n = this.qLen;
    for (let i = 0; i < n; i++) {
      const r = this.tables[this.qTable[i]] as Registered;
      const index = this.qIndex[i];
      if (this.qKind[i] === EV_NEW) {
        if (r.codec.row(index, this.qSerial[i], r.buf)) {
          (r.insert as Database.Statement).run(r.buf);
          r.codec.written(index);
        }
      } else if (this.qKind[i] === EV_DESTROY) {
        (r.remove as Database.Statement).run(this.qSerial[i]);
      }
    }
    this.qLen = 0;
  }

  private applyUpdates(max: number): void {
    const buf = this.dirtyBuf;
    for (const r of this.registered) {
      let left = max;
      while (left > 0) {
        const n = r.codec.dirty(buf, Math.min(left, buf.length));
        for (let i = 0; i < n; i++) {
          r.codec.update(buf[i], r.upd);
          (r.update as Database.Statement).run(r.upd);
          r.codec.written(buf[i]);
        }
        left -= n;
        if (n < buf.length) break;
      }
    }
  }

  /** The counters that moved since they were written. */
  private writeCounters(): void {
    const upsert = this.upsertCounter as Database.Statement;
    for (const c of this.counters) {
      for (let i = 0; i < c.values.length; i++) {
        if (c.values[i] === c.written[i]) continue;
        upsert.run(c.names[i], c.values[i]);
        c.written[i] = c.values[i];
      }
    }
  }

  private rewriteAll(): void {
    for (const c of this.counters) c.written.fill(NaN);
    this.writeCounters();
    const db = this.conn as Database.Database;
    for (const r of this.registered) {
      db.prepare(`DELETE FROM ${r.codec.sqlTable}`).run();
      r.codec.forEachLive((index, serial) => {
        if (r.codec.row(index, serial, r.buf)) {
          (r.insert as Database.Statement).run(r.buf);
          r.codec.written(index);
        }
      });
    }
    this.qLen = 0;
  }

  private prepare(db: Database.Database, r: Registered): void {
    const c = r.codec;
    r.insert = db.prepare(`INSERT OR REPLACE INTO ${c.sqlTable} (${c.columns.join(', ')}) VALUES (${c.columns.map(() => '?').join(', ')})`);
    r.update = db.prepare(`UPDATE ${c.sqlTable} SET ${c.updateColumns.map((col) => `${col} = ?`).join(', ')} WHERE serial = ?`);
    r.remove = db.prepare(`DELETE FROM ${c.sqlTable} WHERE serial = ?`);
  }

  /**
   * Opens the database; at start a corrupt or foreign file is moved aside.
   * A newer schema is refused (or moved aside when the daemon was told to).
   * Returns whether the store is usable.
   */
  private tryOpen(atStart: boolean): boolean {
    if (this.refused !== null) return false;
    try {
      this.conn = this.openDb(atStart);
    } catch (e) {
      const newer = errorCode(e) === SCHEMA_NEWER;
      if (newer && this.newerSchema === 'refuse') {
        this.refuse(e);
        return false;
      }
      if (!newer && classify(e) !== Fault.CORRUPT) {
        this.fault('open', e);
        if (atStart) this.needsRewrite = true;
        return false;
      }
      const kind = newer ? 'newer' : errorCode(e) === SCHEMA_MISMATCH ? 'wrong-schema' : 'corrupt';
      if (!this.moveAside(kind, newer ? `${(e as Error).message}; moved aside as asked (--force-downgrade)` : describeError(e))) {
        this.fault('open', e);
        return false;
      }
      try {
        this.conn = this.openDb(false);
      } catch (e2) {
        this.fault('open', e2);
        this.needsRewrite = true;
        return false;
      }
    }
    this.fileId = this.statFile();
    this.lastFileCheck = this.now();
    for (const r of this.registered) this.prepare(this.conn, r);
    this.upsertCounter = this.conn.prepare('INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value');
    this.attachCheckpointer();
    if (atStart) this.healthy = true;
    return true;
  }

  /** A newer vpnmasq's file: left exactly as it is, nothing written, not retried. */
  private refuse(e: unknown): void {
    this.refused = `${(e as Error).message}: the file is left untouched and nothing is persisted. ` +
      'Start the newer vpnmasq again, or move the file away (vpnmasq run --force-downgrade does that) to start with an empty table';
    this.healthy = false;
    this.lastError = describeError(e);
    this.lastErrorAt = this.now();
    this.log.error('state database not used: it was written by a newer vpnmasq', { path: this.cfg.path, reason: this.refused });
  }

  /** Opens, migrates and checks the file; `read`: starts the restore's read of its rows too. */
  private openDb(read: boolean): Database.Database {
    const file = this.cfg.path;
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o750 });
    const db = new Database(file, { timeout: BUSY_TIMEOUT_MS });
    try {
      // Read the version before anything writes to the file: a newer vpnmasq's file is not touched.
      const version = db.pragma('user_version', { simple: true }) as number;
      if (version > SCHEMA_VERSION) throw newerSchema(version);
      // auto_vacuum takes effect only before the file has content, so ahead of WAL; on a file with content it would only rewrite the header.
      if ((db.pragma('page_count', { simple: true }) as number) === 0) db.pragma('auto_vacuum = INCREMENTAL');
      db.pragma('journal_mode = WAL');
      migrate(db);
      checkTables(db);
      // The rows are read on a thread while this connection checks the file; restore() takes them only if it is sound.
      if (read) this.pages = new PageSource(db, file, TABLES.map(readTable));
      if (db.pragma('quick_check', { simple: true }) !== 'ok') {
        throw Object.assign(new Error('quick_check failed'), { code: 'SQLITE_CORRUPT' });
      }
      for (const sql of SIDE_TABLES) db.exec(sql);
      db.pragma(`synchronous = ${this.cfg.synchronous}`);
      db.pragma(`journal_size_limit = ${WAL_SIZE_LIMIT}`);
      return db;
    } catch (e) {
      this.dropPages();
      db.close();
      throw e;
    }
  }

  /**
   * Renames the file (and its WAL and shared-memory files, which hold
   * committed rows) to `<path>.<kind>-<timestamp>`; logs why. Returns
   * whether it was moved.
   */
  private moveAside(kind: string, reason: string): boolean {
    const file = this.cfg.path;
    const aside = `${file}.${kind}-${new Date(this.now()).toISOString().replace(/[:.]/g, '-')}`;
    try {
      fs.renameSync(file, aside);
      for (const ext of ['-wal', '-shm']) {
        if (fs.existsSync(file + ext)) fs.renameSync(file + ext, aside + ext);
      }
      this.movedAside = aside;
      this.movedAsideReason = reason;
      this.log.error(`state database moved aside (${kind}), starting with a new file`, { path: file, movedTo: aside, reason });
      return true;
    } catch (e) {
      this.log.error(`state database (${kind}) cannot be moved aside`, { path: file, reason, error: describeError(e) });
      return false;
    }
  }

  private statFile(): string {
    try {
      const st = fs.statSync(this.cfg.path);
      return `${st.dev}:${st.ino}`;
    } catch {
      return '';
    }
  }

  private dropPages(): void {
    this.pages?.close();
    this.pages = null;
  }

  private closeQuiet(): void {
    this.dropPages();
    this.checkpointer.detach();
    try {
      this.conn?.close();
    } catch {
      // closing a connection to a deleted file may fail; the handle is gone either way
    }
    this.conn = null;
  }

  /** Records a fault loudly; a corrupt file while running is moved aside and rewritten. */
  private fault(where: string, e: unknown): void {
    const msg = describeError(e);
    const kind = classify(e);
    const first = this.healthy || this.lastError !== msg;
    this.healthy = false;
    this.lastError = msg;
    this.lastErrorAt = this.now();
    if (first) {
      this.log.error('state database fault: forwarding continues from memory, writes retried', {
        path: this.cfg.path, where, error: msg, pending: this.qLen,
      });
    } else {
      this.log.event('state-db-fault', 'state database still failing', { path: this.cfg.path, where, error: msg });
    }
    if (this.qLen === QUEUE_MAX) this.needsRewrite = true;
    if (kind === Fault.CORRUPT && this.conn !== null) {
      this.closeQuiet();
      this.moveAside('corrupt', msg);
      this.needsRewrite = true;
    } else if (kind === Fault.IO && where !== 'open') {
      // Part of the state may be missing (e.g. an earlier commit was lost with the file).
      this.needsRewrite = true;
    }
  }
}

/** A file written by a newer vpnmasq (code SCHEMA_NEWER). */
function newerSchema(version: number): Error {
  return Object.assign(new Error(`schema version ${version} is newer than this vpnmasq's (${SCHEMA_VERSION})`), { code: SCHEMA_NEWER });
}

/** Creates the schema in an empty database or migrates an older one forward. */
export function migrate(db: Database.Database): void {
  const version = db.pragma('user_version', { simple: true }) as number;
  if (version === SCHEMA_VERSION) return;
  if (version > SCHEMA_VERSION) throw newerSchema(version);
  if (version === 0) {
    db.transaction(() => {
      for (const sql of CREATE_STATEMENTS) db.exec(sql);
      db.pragma(`user_version = ${SCHEMA_VERSION}`);
    }).immediate();
    return;
  }
  for (let v = version; v < SCHEMA_VERSION; v++) {
    db.transaction(() => {
      for (const sql of MIGRATIONS[v - 1]) db.exec(sql);
      db.pragma(`user_version = ${v + 1}`);
    }).immediate();
  }
}

/**
 * A file at the current version must have this vpnmasq's tables with their
 * columns (another program's database, or one edited by hand, may not):
 * throws SCHEMA_MISMATCH saying what differs.
 */
export function checkTables(db: Database.Database): void {
  const problems: string[] = [];
  for (const spec of TABLES) {
    const have = (db.prepare(`PRAGMA table_info(${spec.sqlTable})`).all() as Array<{ name: string }>).map((c) => c.name);
    const want = columnNames(spec);
    if (have.length === 0) { problems.push(`table ${spec.sqlTable} is missing`); continue; }
    const missing = want.filter((c) => !have.includes(c));
    const extra = have.filter((c) => !want.includes(c));
    if (missing.length > 0) problems.push(`table ${spec.sqlTable} lacks column${missing.length > 1 ? 's' : ''} ${missing.join(', ')}`);
    if (extra.length > 0) problems.push(`table ${spec.sqlTable} has unknown column${extra.length > 1 ? 's' : ''} ${extra.join(', ')}`);
  }
  if (problems.length > 0) {
    throw Object.assign(new Error(`schema version ${SCHEMA_VERSION} but not this vpnmasq's tables: ${problems.join('; ')}`), { code: SCHEMA_MISMATCH });
  }
}

/**
 * How restore reads a table: by serial (every spec's first column), which is
 * v[0] where a double holds it exactly and also comes as text where it does
 * not (a hostile 2^63 - 1, a real or a string): text for every row would
 * cost a third of the read.
 */
function readTable(spec: (typeof TABLES)[number]): ReadTable {
  const columns = columnNames(spec);
  const select = `SELECT ${columns.join(', ')}, CASE WHEN typeof(serial) = 'integer' AND serial BETWEEN ${-Number.MAX_SAFE_INTEGER} ` +
    `AND ${Number.MAX_SAFE_INTEGER} THEN NULL ELSE CAST(serial AS TEXT) END FROM ${spec.sqlTable}`;
  return {
    first: `${select} ORDER BY serial LIMIT ${PAGE_ROWS}`,
    next: `${select} WHERE serial > CAST(? AS INTEGER) ORDER BY serial LIMIT ${PAGE_ROWS}`,
    width: columns.length + 1,
  };
}

/** Column c of a page's row: in place at offset o of the page's values, or of the row as read when it is not all numbers. */
function valueOf(values: Float64Array, o: number, odd: readonly unknown[] | null, c: number): unknown {
  return odd === null ? values[o + c] : odd[c];
}

/** The stored values of a row by column, as JSON (blobs as hex, big integers as strings). */
function rowJson(columns: readonly string[], v: readonly unknown[]): string {
  const o: Record<string, unknown> = {};
  columns.forEach((c, i) => {
    const x = v[i];
    o[c] = x instanceof Uint8Array ? { blob: Buffer.from(x).toString('hex') } : typeof x === 'bigint' ? x.toString()
      : typeof x === 'number' && !Number.isFinite(x) ? String(x) : x;
  });
  return JSON.stringify(o);
}
