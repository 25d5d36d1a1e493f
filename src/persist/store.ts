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
 * start is renamed to `<path>.corrupt-<timestamp>` and the router starts empty.
 *
 * ---- Adding a table ----------------------------------------------------
 * 1. Declare its column spec in tables.ts (columns.ts says what a column
 *    declares); the current schema's CREATE statement comes from it. Add a
 *    schema version whose migration creates the table (schema.ts).
 * 2. Push EV_NEW / EV_DESTROY (src/core/journal.ts) with the spec's journal
 *    table id and the entry's index and serial, exactly like SessionTable does.
 * 3. `store.registerTable(new TableCodec(SPEC, liveTable))` in the daemon
 *    before `store.restore(...)`, after the tables its rows refer to (tables
 *    restore in registration order).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { EV_DESTROY, EV_NEW, EV_UPDATE, JournalListener } from '../core/journal';
import { RestoreContext, TableCodec } from './columns';
import { classify, DbHealth, describeError, Fault } from './health';
import type { StoreConfig } from './options';
import { CREATE_STATEMENTS, MIGRATIONS, SCHEMA_VERSION } from './schema';

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
/** Rows read per query at restore. */
const RESTORE_PAGE = 10000;

/** A stored row that failed its column checks. */
interface InvalidRow {
  r: Registered;
  serial: unknown;
  column: string;
  problem: string;
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
  private movedAside: string | null = null;
  private readonly dirtyBuf = new Int32Array(UPDATE_BATCH);
  private timer: NodeJS.Timeout | null = null;
  private readonly now: () => number;
  private readonly commitQueue: () => void;

  /** Opens (or creates) the database; never throws: a fault leaves the store unhealthy and retrying. */
  constructor(private cfg: StoreConfig, private readonly log: StoreLog, opts: StoreOptions = {}) {
    this.now = opts.now ?? Date.now;
    this.commitQueue = () => this.tx(() => this.applyQueue());
    this.tryOpen(true);
  }

  get path(): string { return this.cfg.path; }

  registerTable(codec: TableCodec): void {
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
   * starts); deletes the discarded rows. A corrupt file is moved aside and
   * whatever was read stays restored and is rewritten into the new file.
   */
  restore(ctx: RestoreContext): { restored: number; discarded: number } {
    const db = this.conn;
    if (db === null) return { restored: 0, discarded: 0 };
    const t0 = Date.now();
    let restored = 0;
    const discard: number[][] = [];
    const invalid: InvalidRow[] = [];
    try {
      for (const r of this.registered) {
        const gone: number[] = [];
        discard.push(gone);
        // Pages of RESTORE_PAGE rows by serial (every spec's first column): `all()` is several times faster than `iterate()` per row.
        const sel = db.prepare(`SELECT ${r.codec.columns.join(', ')} FROM ${r.codec.sqlTable} WHERE serial > ? ORDER BY serial LIMIT ${RESTORE_PAGE}`).raw();
        for (let last = -1, page = sel.all(last) as unknown[][]; page.length > 0; page = sel.all(last) as unknown[][]) {
          for (const v of page) {
            const [serial] = v;
            const why = r.codec.restore(v, ctx);
            if (why === undefined) restored++;
            else if (why.kind === 'invalid') invalid.push({ r, serial, column: why.column, problem: why.problem });
            else gone.push(serial as number);
          }
          [last] = page[page.length - 1] as number[];
        }
        r.codec.restored();
      }
      this.restoreCounters(db);
      this.tx(() => {
        this.registered.forEach((r, i) => { for (const serial of discard[i]) (r.remove as Database.Statement).run(serial); });
      });
      this.rejectInvalid(invalid);
    } catch (e) {
      this.fault('restore', e);
    }
    const discarded = discard.reduce((a, d) => a + d.length, 0) + invalid.length;
    this.rowsRestored += restored;
    this.rowsDiscarded += discarded;
    this.log.info('state restored', { path: this.cfg.path, restored, discarded, ms: Date.now() - t0 });
    return { restored, discarded };
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
   * Rows whose values cannot be right (a wrong type, a protocol or state that
   * does not exist, a port out of range): logged with the column and the
   * problem, then deleted like any discarded row.
   */
  private rejectInvalid(rows: readonly InvalidRow[]): void {
    if (rows.length === 0) return;
    const byTable: Record<string, number> = {};
    for (const x of rows) byTable[x.r.codec.sqlTable] = (byTable[x.r.codec.sqlTable] ?? 0) + 1;
    this.log.error('state database rows that cannot be restored were discarded', {
      path: this.cfg.path, rows: rows.length, byTable,
      first: rows.slice(0, 5).map((x) => `${x.r.codec.sqlTable} serial ${String(x.serial)}: ${x.column}: ${x.problem}`),
    });
    this.tx(() => {
      for (const x of rows) (x.r.remove as Database.Statement).run(x.serial);
    });
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
    if (this.timer === null) {
      this.timer = setInterval(() => this.tick(), this.cfg.flushIntervalMs);
      this.timer.unref();
    }
  }

  /** Periodic work: file identity check, recovery, update flush, vacuum step. Never throws. */
  tick(maxUpdates = UPDATE_BATCH): void {
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
        this.tx(() => this.rewriteAll());
        this.needsRewrite = false;
      } else {
        this.tx(() => {
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
  }

  health(): DbHealth {
    let pending = this.qLen;
    if (this.needsRewrite) {
      pending = 0;
      for (const r of this.registered) pending += r.codec.liveCount();
    }
    return {
      healthy: this.healthy, pendingWrites: pending, lastError: this.lastError, lastErrorAt: this.lastErrorAt,
      rowsRestored: this.rowsRestored, rowsDiscarded: this.rowsDiscarded, movedAside: this.movedAside,
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

  /** Opens the database; at start a corrupt file is moved aside. Returns whether the store is usable. */
  private tryOpen(atStart: boolean): boolean {
    try {
      this.conn = this.openDb();
    } catch (e) {
      if (classify(e) !== Fault.CORRUPT) {
        this.fault('open', e);
        if (atStart) this.needsRewrite = true;
        return false;
      }
      this.moveAside(e);
      try {
        this.conn = this.openDb();
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
    if (atStart) this.healthy = true;
    return true;
  }

  private openDb(): Database.Database {
    const file = this.cfg.path;
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o750 });
    const db = new Database(file, { timeout: BUSY_TIMEOUT_MS });
    try {
      // auto_vacuum takes effect only before the file has content (ignored otherwise), so ahead of WAL.
      db.pragma('auto_vacuum = INCREMENTAL');
      db.pragma('journal_mode = WAL');
      migrate(db);
      if (db.pragma('quick_check', { simple: true }) !== 'ok') {
        throw Object.assign(new Error('quick_check failed'), { code: 'SQLITE_CORRUPT' });
      }
      db.pragma(`synchronous = ${this.cfg.synchronous}`);
      db.pragma(`journal_size_limit = ${WAL_SIZE_LIMIT}`);
      return db;
    } catch (e) {
      db.close();
      throw e;
    }
  }

  private moveAside(cause: unknown): void {
    const file = this.cfg.path;
    const aside = `${file}.corrupt-${new Date(this.now()).toISOString().replace(/[:.]/g, '-')}`;
    try {
      fs.renameSync(file, aside);
      for (const ext of ['-wal', '-shm']) fs.rmSync(file + ext, { force: true });
      this.movedAside = aside;
      this.log.error('state database is corrupt: moved it aside, starting with an empty table', {
        path: file, movedTo: aside, error: describeError(cause),
      });
    } catch (e) {
      this.log.error('state database is corrupt and cannot be moved aside', { path: file, error: describeError(e) });
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

  private closeQuiet(): void {
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
      this.moveAside(e);
      this.needsRewrite = true;
    } else if (kind === Fault.IO && where !== 'open') {
      // Part of the state may be missing (e.g. an earlier commit was lost with the file).
      this.needsRewrite = true;
    }
  }
}

/** Creates the schema in an empty database or migrates an older one forward. */
export function migrate(db: Database.Database): void {
  const version = db.pragma('user_version', { simple: true }) as number;
  if (version === SCHEMA_VERSION) return;
  if (version > SCHEMA_VERSION) {
    throw Object.assign(new Error(`schema version ${version} is newer than this vpnmasq (${SCHEMA_VERSION})`), { code: 'SQLITE_NOTADB' });
  }
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
