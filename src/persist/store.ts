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
 * ---- Adding a table (IPsec, PPTP, ...) ---------------------------------
 * 1. Add the CREATE statements to a new schema version in schema.ts (with its
 *    migration). The first column must be `serial INTEGER PRIMARY KEY`.
 * 2. Push EV_NEW / EV_DESTROY (src/nat/journal.ts) with your table id and the
 *    row's index and serial, exactly like SessionTable does.
 * 3. Implement TableCodec below (DirtyScan does the dirty scan) and call
 *    `store.registerTable(codec)` in the daemon before `store.restore(...)`,
 *    after the tables its rows refer to (codecs restore in that order).
 * The VPN tables (ISAKMP, ESP, PPTP calls) are in vpn-codecs.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import type { JournalListener } from '../core/journal';
import type { AddressChangePolicy, StateConfig } from '../daemon/config';
import type { Logger } from '../daemon/log';
import { EV_DESTROY, EV_NEW, EV_UPDATE } from '../core/journal';
import { SessionTable, TABLE_SESSIONS } from '../nat/sessions';
import { classify, DbHealth, describeError, Fault } from './health';
import { CREATE_STATEMENTS, MIGRATIONS, SCHEMA_VERSION } from './schema';

/** What restore needs to decide about a stored row. */
export interface RestoreContext {
  /** Wall-clock ms: rows whose deadline passed (also while the router was down) are discarded. */
  now: number;
  /** The configured public address (int32), and what to do with rows stored under another one. */
  publicAddr: number;
  onAddressChange: AddressChangePolicy;
}

/** Whether a row stored under `pubAddr` is kept: same address, or another one with policy 'move' (it is then rewritten). */
export function addressKept(pubAddr: number, ctx: RestoreContext): boolean {
  return pubAddr === ctx.publicAddr || ctx.onAddressChange === 'move';
}

/** How the store reads and rebuilds one in-memory table. Not called per packet. */
export interface TableCodec {
  /** Journal table id: 1 NAPT sessions, 2 ISAKMP, 3 ESP, 4 GRE calls. */
  readonly id: number;
  /** SQL table (created by schema.ts). */
  readonly sqlTable: string;
  /** Columns of an inserted row, `serial` first. */
  readonly columns: readonly string[];
  /** Columns rewritten for a dirty row (`serial` excluded). */
  readonly updateColumns: readonly string[];
  /** Fills `out` with the `columns` of the row at `index`; false when that index no longer holds `serial`. */
  row(index: number, serial: number, out: unknown[]): boolean;
  /** Fills `out` with the `updateColumns` of the live row at `index`, then its serial. */
  update(index: number, out: unknown[]): void;
  /** Writes up to `max` indexes of live rows changed since `written` into `out`, continuing where the last call stopped; at most one pass. */
  dirty(out: Int32Array, max: number): number;
  /** The row at `index` was just written with its current values. */
  written(index: number): void;
  /** Live rows (for pendingWrites). */
  liveCount(): number;
  /** Calls fn for every live row (full rewrite after a fault). */
  forEachLive(fn: (index: number, serial: number) => void): void;
  /** Rebuilds one stored row (values in `columns` order); false discards it (expired, address policy, conflict). */
  restore(values: unknown[], ctx: RestoreContext): boolean;
  /** Called once after this table's rows were restored (drop restore-only helpers). */
  restored?(): void;
}

/**
 * The round-robin scan behind `TableCodec.dirty`: continues where the last
 * call stopped and visits each slot at most once per call.
 */
export class DirtyScan {
  private cursor = 0;

  constructor(private readonly capacity: number, private readonly isDirty: (index: number) => boolean) {}

  next(out: Int32Array, max: number): number {
    const cap = this.capacity;
    let i = this.cursor;
    let n = 0;
    for (let k = 0; k < cap && n < max; k++) {
      if (this.isDirty(i)) out[n++] = i;
      i = i + 1 === cap ? 0 : i + 1;
    }
    this.cursor = i;
    return n;
  }
}

/** Codec of the NAPT sessions (TCP/UDP/ICMP), journal table TABLE_SESSIONS. */
export class SessionCodec implements TableCodec {
  readonly id = TABLE_SESSIONS;
  readonly sqlTable = 'sessions';
  readonly columns = ['serial', 'proto', 'lan', 'lan_port', 'pub_addr', 'pub_port', 'rem', 'rem_port', 'state',
    'created', 'last_seen', 'expires', 'pkts_out', 'pkts_in', 'bytes_out', 'bytes_in'] as const;
  readonly updateColumns = ['pub_addr', 'state', 'last_seen', 'expires', 'pkts_out', 'pkts_in', 'bytes_out', 'bytes_in'] as const;
  /** sLastSeen of each session when it was last written; -1 forces a rewrite. */
  private readonly writtenSeen: Float64Array;
  private readonly scan: DirtyScan;

  constructor(private readonly t: SessionTable) {
    this.writtenSeen = new Float64Array(t.capacity);
    this.scan = new DirtyScan(t.capacity, (s) => t.sInUse[s] === 1 && t.lastSeenOf(s) > this.writtenSeen[s]);
  }

  row(s: number, serial: number, out: unknown[]): boolean {
    const t = this.t;
    if (t.sInUse[s] === 0 || t.sSerial[s] !== serial) return false;
    out[0] = serial;
    out[1] = t.protoOf(s);
    out[2] = t.lanOf(s);
    out[3] = t.lanPortOf(s);
    out[4] = t.pubAddrOf(s);
    out[5] = t.pubPortOf(s);
    out[6] = t.remOf(s);
    out[7] = t.remPortOf(s);
    out[8] = t.stateOf(s);
    out[9] = t.sCreated[s];
    out[10] = t.lastSeenOf(s);
    out[11] = t.expiresOf(s);
    out[12] = t.pktsOut(s);
    out[13] = t.pktsIn(s);
    out[14] = t.bytesOut(s);
    out[15] = t.bytesIn(s);
    return true;
  }

  update(s: number, out: unknown[]): void {
    const t = this.t;
    out[0] = t.pubAddrOf(s);
    out[1] = t.stateOf(s);
    out[2] = t.lastSeenOf(s);
    out[3] = t.expiresOf(s);
    out[4] = t.pktsOut(s);
    out[5] = t.pktsIn(s);
    out[6] = t.bytesOut(s);
    out[7] = t.bytesIn(s);
    out[8] = t.sSerial[s];
  }

  dirty(out: Int32Array, max: number): number {
    return this.scan.next(out, max);
  }

  written(s: number): void {
    this.writtenSeen[s] = this.t.lastSeenOf(s);
  }

  liveCount(): number {
    return this.t.sessionCount;
  }

  forEachLive(fn: (index: number, serial: number) => void): void {
    const t = this.t;
    t.forEachSession((s) => fn(s, t.sSerial[s]));
  }

  restore(v: unknown[], ctx: RestoreContext): boolean {
    const t = this.t;
    const expires = v[11] as number;
    const pubAddr = v[4] as number;
    if (expires <= ctx.now || !addressKept(pubAddr, ctx)) return false;
    const moved = pubAddr !== ctx.publicAddr;
    const pubIdx = Math.max(0, t.publicIndexOf(pubAddr));
    const s = t.restoreSession(v[1] as number, v[2] as number, v[3] as number, pubIdx, v[5] as number, v[6] as number, v[7] as number,
      v[9] as number, v[8] as number, expires, v[0] as number);
    if (s < 0) return false;
    t.setLastSeen(s, v[10] as number);
    t.setCounters(s, v[12] as number, v[13] as number, v[14] as number, v[15] as number);
    // A moved row is rewritten with the new address on the next update flush.
    this.writtenSeen[s] = moved ? -1 : t.lastSeenOf(s);
    return true;
  }
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

export class Store implements JournalListener {
  private conn: Database.Database | null = null;
  private fileId = '';
  private lastFileCheck = 0;
  private readonly tables: (Registered | undefined)[] = [];
  private readonly registered: Registered[] = [];
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
  constructor(private readonly cfg: StateConfig, private readonly log: Logger, opts: StoreOptions = {}) {
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
    try {
      for (const r of this.registered) {
        const gone: number[] = [];
        discard.push(gone);
        // Pages of RESTORE_PAGE rows by serial: `all()` is several times faster than `iterate()` per row.
        const sel = db.prepare(`SELECT ${r.codec.columns.join(', ')} FROM ${r.codec.sqlTable} WHERE serial > ? ORDER BY serial LIMIT ${RESTORE_PAGE}`).raw();
        for (let last = -1, page = sel.all(last) as unknown[][]; page.length > 0; page = sel.all(last) as unknown[][]) {
          for (const v of page) {
            if (r.codec.restore(v, ctx)) restored++;
            else gone.push(v[0] as number);
          }
          last = page[page.length - 1][0] as number;
        }
        r.codec.restored?.();
      }
      this.tx(() => {
        this.registered.forEach((r, i) => { for (const serial of discard[i]) (r.remove as Database.Statement).run(serial); });
      });
    } catch (e) {
      this.fault('restore', e);
    }
    const discarded = discard.reduce((a, d) => a + d.length, 0);
    this.rowsRestored += restored;
    this.rowsDiscarded += discarded;
    this.log.info('state restored', { path: this.cfg.path, restored, discarded, ms: Date.now() - t0 });
    return { restored, discarded };
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

  private rewriteAll(): void {
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
