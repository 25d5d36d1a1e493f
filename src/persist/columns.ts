/**
 * Declarative column specs of the persisted tables, and the one generic codec
 * that every table's insert row, update statement and values, dirty scan,
 * restore and SQL CREATE statement are generated from (tables.ts declares
 * the four tables).
 *
 * A spec lists the columns in SQL order, `serial` first. Each column says
 * where it lives in the struct-of-arrays table (`array`, or `get` for a
 * derived value), whether the update flush rewrites it (`update`), whether a
 * change of it makes the row dirty (`watch`: the flush compares it with the
 * value last written), whether restore stores it back (`assign`), and what a
 * stored value must look like (the type check of its SQL type plus `check`,
 * which may look at the restore context: the LAN prefixes, the time). A
 * table may add a check across its columns (`rowCheck`) and name its
 * restore's conflicts (`conflicts`). Restore hands the table's `restore` a
 * record of named, checked values; a row that fails a check or conflicts is
 * quarantined by the store, with the reason these give.
 *
 * Nothing here runs per packet: the store calls it at the write-ahead point
 * (rows of new entries), from its timer (updates) and at start (restore).
 */
import type { AddressChangePolicy } from './options';

/** SQLite storage class of a column (times and counters are REAL: they exceed 2^31). */
export type SqlType = 'INTEGER' | 'REAL';

/** What the checks of a stored row may depend on besides the row. */
export interface CheckContext {
  /** Wall-clock ms at restore. */
  now: number;
  /** The configured LAN prefixes as [network, mask] int32 pairs; null skips the LAN-host check (a reader without the config). */
  lanPrefixes: ReadonlyArray<readonly [number, number]> | null;
}

/** Why a stored value cannot be restored, or undefined when it can. */
export type Check = (v: number, ctx: CheckContext) => string | undefined;

/** The struct-of-arrays storage of a column: one element per entry. */
export type ColumnArray = Float64Array | Int32Array | Uint16Array | Uint8Array;

export interface ColumnDef<T> {
  readonly type: SqlType;
  /** The live array holding this column (resolved once, when the codec is built). */
  array?(t: T): ColumnArray;
  /** Or the live value of entry `i`, when it is not one element of an array. */
  get?(t: T, i: number): number;
  /** Rewritten by the update flush (otherwise written once, when the entry is new). */
  readonly update?: boolean;
  /** A change of this value marks the row dirty for the update flush (array columns). */
  readonly watch?: boolean;
  /** Restore stores the value into the array after the table re-created the entry (values its restore call does not take). */
  readonly assign?: boolean;
  /** Or, for a column without an array, how restore stores it. */
  set?(t: T, i: number, v: number): void;
  /** What a stored value must be, beyond its SQL type. */
  readonly check?: Check;
  /** No two restored rows of any table that declares this column share a value (ids are one space across the tables). */
  readonly unique?: boolean;
  /** REAL only: ±Infinity is a valid value (a PPTP call held by its control connection never expires). */
  readonly infinite?: boolean;
  /** SQL DEFAULT, for columns a migration added to existing rows. */
  readonly default?: number;
}

/** Every persisted table has these: the id, the public address it was stored under, and its deadline. */
export type RequiredColumn = 'serial' | 'pub_addr' | 'expires';

/** A stored row after its checks passed, by column name. */
export type Row<N extends string> = Readonly<Record<N, number>>;

export interface TableSpec<T, N extends string> {
  /** SQL table name. */
  readonly sqlTable: string;
  /** Journal table id of the live table (the events the store follows). */
  readonly journalTable: number;
  /** In SQL column order, `serial` (INTEGER PRIMARY KEY) first. */
  readonly columns: { readonly [K in N | RequiredColumn]: ColumnDef<T> };
  /** CREATE INDEX statements. */
  readonly indexes?: readonly string[];
  capacity(t: T): number;
  /** Live entries. */
  count(t: T): number;
  /** Per entry: non-zero while it is in use. */
  inUse(t: T): Uint8Array;
  /** A check across columns of a row whose columns passed theirs: why it cannot be right, or undefined. */
  rowCheck?(row: Row<N | RequiredColumn>): string | undefined;
  /**
   * Re-creates a stored entry (its deadline and address already accepted);
   * returns its index, ORPHAN when the entry it belongs to was not restored
   * (it is discarded like an expired row), or another negative number when it
   * conflicts with what is already restored or cannot be placed.
   */
  restore(t: T, row: Row<N | RequiredColumn>, ctx: RestoreContext): number;
  /** What restore's negative results mean, for the quarantine and the log. */
  readonly conflicts?: Readonly<Record<number, string>>;
  /** After all of this table's rows were restored. */
  restored?(t: T): void;
}

/** Declares a table spec for live table type T (T explicit, column names inferred). */
export function defineTable<T>(): <N extends string>(spec: TableSpec<T, N>) => TableSpec<T, N> {
  return (spec) => spec;
}

// ---- checks ----------------------------------------------------------------

/** TableSpec.restore: the entry this row belongs to (a PPTP call's control connection) was not restored. */
export const ORPHAN = -1000;

export const inRange = (min: number, max: number): Check => (v) => (v >= min && v <= max ? undefined : `${v} is outside ${min}..${max}`);

export const oneOf = (allowed: Readonly<Record<string, number>>): Check => {
  const values = Object.values(allowed);
  const names = Object.entries(allowed).map(([k, v]) => `${v} (${k})`).join(', ');
  return (v) => (values.includes(v) ? undefined : `${v} is not one of ${names}`);
};

export const PORT = inRange(0, 65535);
export const UINT8 = inRange(0, 255);
export const INT32 = inRange(-0x80000000, 0x7fffffff);
export const FLAG = inRange(0, 1);
export const NON_NEGATIVE = inRange(0, Number.MAX_SAFE_INTEGER);
export const PUBLIC_PORT = inRange(1, 65535);
export const NON_NEGATIVE_INT32 = inRange(0, 0x7fffffff);
/**
 * Ids are positive, and low enough that the ids handed out after them stay
 * exact in a double: the next id is the largest restored one + 1, and 2^53
 * + 1 is 2^53 again (three sessions would share one id).
 */
export const MAX_SERIAL = 2 ** 52;
export const SERIAL = inRange(1, MAX_SERIAL);

const ipv4Text = (a: number): string => `${(a >>> 24) & 255}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}`;

/** An address inside one of the configured LAN prefixes (int32): what a mapping's or VPN entry's LAN host must be. */
export const LAN_HOST: Check = (v, ctx) => {
  const prefixes = ctx.lanPrefixes;
  if (prefixes === null) return INT32(v, ctx);
  if (v < -0x80000000 || v > 0x7fffffff) return `${v} is not an IPv4 address`;
  for (const [net, mask] of prefixes) if ((v & mask) === (net & mask)) return undefined;
  const list = prefixes.map(([net, mask]) => `${ipv4Text(net & mask)}/${mask === 0 ? 0 : 1 + Math.clz32(mask & -mask)}`);
  return `${ipv4Text(v)} is not inside a LAN prefix (${list.join(', ')})`;
};

/**
 * The longest a stored deadline can lie ahead: every timer is at most
 * 2^31 - 1 ms (the config's limit, Node's setTimeout), counted from when
 * the row was written, which is before now.
 */
export const MAX_DEADLINE_AHEAD_MS = 2 ** 31;

/** A deadline no timer could have set: too far ahead of now. */
export const DEADLINE: Check = (v, ctx) => (v === Infinity || v <= ctx.now + MAX_DEADLINE_AHEAD_MS ? undefined
  : `${new Date(Math.min(v, 8.64e15)).toISOString()} is further ahead than any timer reaches`);

/** Why `v` is not a value of column `c`'s SQL type, or undefined. */
function typeProblem(c: ColumnDef<never>, v: unknown): string | undefined {
  if (typeof v !== 'number') return `expected a number, found ${v === null ? 'NULL' : typeof v}`;
  if (c.type === 'INTEGER') return Number.isSafeInteger(v) ? undefined : `expected an integer, found ${v}`;
  if (Number.isNaN(v) || (!Number.isFinite(v) && !c.infinite)) return `expected a finite number, found ${v}`;
  return undefined;
}

// ---- SQL -------------------------------------------------------------------

export function columnNames(spec: TableSpec<unknown, string>): string[] {
  return Object.keys(spec.columns);
}

/** CREATE TABLE (and CREATE INDEX) statements of a spec. */
export function createStatements(spec: TableSpec<never, string>): string[] {
  if (columnNames(spec)[0] !== 'serial') throw new Error(`${spec.sqlTable}: the first column must be serial`);
  const cols = Object.entries(spec.columns as Record<string, ColumnDef<never>>).map(([name, c], i) =>
    i === 0 ? `${name} ${c.type} PRIMARY KEY` : `${name} ${c.type} NOT NULL${c.default === undefined ? '' : ` DEFAULT ${c.default}`}`);
  return [`CREATE TABLE ${spec.sqlTable} (${cols.join(', ')})`, ...(spec.indexes ?? [])];
}

// ---- the codec -------------------------------------------------------------

/**
 * Why a stored row was not restored: expired, under another public address
 * (policy drop) or an orphan are discarded; a row that fails a check
 * (`column` names the column, '' the row) or conflicts is quarantined.
 */
export type Rejection =
  | { kind: 'expired' | 'address' | 'orphan' }
  | { kind: 'invalid' | 'conflict'; column: string; problem: string };

const EXPIRED: Rejection = { kind: 'expired' };
const ADDRESS: Rejection = { kind: 'address' };
const ORPHANED: Rejection = { kind: 'orphan' };

/** What restore needs to decide about a stored row. */
export interface RestoreContext extends CheckContext {
  /** Wall-clock ms: rows whose deadline passed (also while the router was down) are discarded. */
  now: number;
  /** Whether a stored public address (int32) is one of the configured ones, and what to do with rows stored under another. */
  isPublic(addr: number): boolean;
  onAddressChange: AddressChangePolicy;
  /** Whether a row of `table` with this serial was quarantined by this restore (an entry that belongs to it goes too). */
  quarantined?(table: string, serial: number): boolean;
}

/**
 * Checks stored rows of one table (values in the spec's column order) and
 * decodes them into `record`: a view with one property per column, read by
 * the table's restore. Laid out for a loop over a million rows: the values
 * land in one Float64Array (exact for every INTEGER column: they are safe
 * integers) and the record's properties read from it.
 */
export class RowDecoder<N extends string = string> {
  readonly record: Row<N | RequiredColumn>;
  private readonly names: readonly string[];
  private readonly defs: readonly ColumnDef<never>[];
  private readonly real: Uint8Array;
  private readonly checks: readonly (Check | undefined)[];
  private readonly rowCheck: ((row: Row<N | RequiredColumn>) => string | undefined) | undefined;
  /** The decoded values, in column order (what `record` reads). */
  readonly values: Float64Array;
  /** A row's leading numbers, for decode(). */
  private readonly scratch: Float64Array;

  constructor(spec: TableSpec<never, N>) {
    this.rowCheck = spec.rowCheck === undefined ? undefined : (row) => (spec.rowCheck as (r: typeof row) => string | undefined)(row);
    const cols = spec.columns as Record<string, ColumnDef<never>>;
    this.names = Object.keys(cols);
    this.defs = this.names.map((n) => cols[n]);
    this.real = Uint8Array.from(this.defs, (c) => (c.type === 'REAL' ? 1 : 0));
    this.checks = this.defs.map((c) => c.check);
    const values = new Float64Array(this.names.length);
    this.scratch = new Float64Array(this.names.length);
    const view: Record<string, PropertyDescriptor> = {};
    this.names.forEach((name, i) => { view[name] = { get: () => values[i], enumerable: true }; });
    this.record = Object.defineProperties({}, view) as Row<N | RequiredColumn>;
    this.values = values;
  }

  /** Decodes one row as read (its first values, in column order) into `record`; a rejection naming the first wrong column (or the row), or undefined. */
  decode(row: readonly unknown[], ctx: CheckContext): Rejection | undefined {
    const out = this.values;
    let n = 0;
    while (n < out.length && typeof row[n] === 'number') n++;
    for (let i = 0; i < n; i++) this.scratch[i] = row[i] as number;
    const bad = this.decodeColumns(this.scratch, 0, n, ctx);
    if (bad !== undefined || n === out.length) return bad;
    return { kind: 'invalid', column: this.names[n], problem: typeProblem(this.defs[n], row[n]) as string };
  }

  /** decode() of a row whose values are all numbers: `values[at + column]`. */
  decodeAt(values: Float64Array, at: number, ctx: CheckContext): Rejection | undefined {
    return this.decodeColumns(values, at, this.values.length, ctx);
  }

  /** Checks and decodes columns 0..n-1 from `values[at + column]`; the row's own check once all columns are there. */
  private decodeColumns(values: Float64Array, at: number, n: number, ctx: CheckContext): Rejection | undefined {
    const out = this.values;
    for (let i = 0; i < n; i++) {
      const v = values[at + i];
      const check = this.checks[i];
      if ((this.real[i] === 1 ? Number.isFinite(v) : Number.isSafeInteger(v)) && (check === undefined || check(v, ctx) === undefined)) {
        out[i] = v;
        continue;
      }
      // The slow path says what is wrong (or accepts an infinite REAL where the column allows it).
      const problem = typeProblem(this.defs[i], v) ?? check?.(v, ctx);
      if (problem !== undefined) return { kind: 'invalid', column: this.names[i], problem };
      out[i] = v;
    }
    if (n < out.length) return undefined;
    const problem = this.rowCheck?.(this.record);
    return problem === undefined ? undefined : { kind: 'invalid', column: '', problem };
  }

  /** A copy of `record` as a plain object. */
  copy(): Row<N | RequiredColumn> {
    return { ...this.record };
  }
}

type Getter = (i: number) => number;
type Setter = (i: number, v: number) => void;

/** A getter of one array's elements; one closure per array type keeps each element load monomorphic. */
function elementOf(a: ColumnArray): Getter {
  if (a instanceof Float64Array) return (i) => a[i];
  if (a instanceof Int32Array) return (i) => a[i];
  if (a instanceof Uint16Array) return (i) => a[i];
  return (i) => a[i];
}

/**
 * A spec bound to its live table: what the store calls. The columns' arrays
 * are resolved once and row buffers are reused, so writing a row allocates
 * nothing.
 */
export class TableCodec<T = unknown, N extends string = string> {
  readonly id: number;
  readonly sqlTable: string;
  /** Columns of an inserted row, `serial` first. */
  readonly columns: readonly string[];
  /** Columns rewritten for a dirty row (`serial` excluded). */
  readonly updateColumns: readonly string[];
  /** Columns whose values must be unique across every table (`unique`): their positions in `columns`. */
  readonly uniqueColumns: readonly number[];
  private readonly decoder: RowDecoder<N>;
  private readonly getters: readonly Getter[];
  private readonly updateGetters: readonly Getter[];
  private readonly serialOf: Getter;
  private readonly inUse: Uint8Array;
  /** Restore stores these columns back: how, and their column numbers. */
  private readonly assigners: readonly Setter[];
  private readonly assignedColumns: Int32Array;
  private readonly expiresColumn: number;
  private readonly pubAddrColumn: number;
  /** Watched columns: their live values, and the values last written (NaN forces a rewrite). */
  private readonly watched: readonly Getter[];
  private readonly lastWritten: readonly Float64Array[];
  /** Entries the live table holds at most. */
  readonly capacity: number;
  private cursor = 0;

  constructor(readonly spec: TableSpec<T, N>, readonly table: T) {
    const cols = Object.entries(spec.columns as Record<string, ColumnDef<T>>);
    const setter = (name: string, c: ColumnDef<T>): Setter => {
      if (c.array !== undefined) {
        const a = c.array(table);
        return (i, v) => { a[i] = v; };
      }
      if (c.set === undefined) throw new Error(`${spec.sqlTable}.${name}: an assigned column needs an array or a setter`);
      const set = c.set;
      return (i, v) => set(table, i, v);
    };
    const getter = (name: string, c: ColumnDef<T>): Getter => {
      if (c.array !== undefined) return elementOf(c.array(table));
      if (c.get === undefined) throw new Error(`${spec.sqlTable}.${name}: a column needs an array or a getter`);
      const get = c.get;
      return (i) => get(table, i);
    };
    this.id = spec.journalTable;
    this.sqlTable = spec.sqlTable;
    this.capacity = spec.capacity(table);
    this.inUse = spec.inUse(table);
    this.decoder = new RowDecoder(spec as unknown as TableSpec<never, N>);
    this.columns = cols.map(([name]) => name);
    this.uniqueColumns = cols.flatMap(([, c], i) => (c.unique ? [i] : []));
    this.getters = cols.map(([name, c]) => getter(name, c));
    const upd = cols.filter(([, c]) => c.update);
    this.updateColumns = upd.map(([name]) => name);
    this.updateGetters = upd.map(([name, c]) => getter(name, c));
    this.serialOf = this.getters[0];
    const assigned = cols.filter(([, c]) => c.assign);
    this.assigners = assigned.map(([name, c]) => setter(name, c));
    this.assignedColumns = Int32Array.from(assigned, ([name]) => this.columns.indexOf(name));
    this.expiresColumn = this.columns.indexOf('expires');
    this.pubAddrColumn = this.columns.indexOf('pub_addr');
    const watched = cols.filter(([, c]) => c.watch);
    this.watched = watched.map(([name, c]) => getter(name, c));
    this.lastWritten = watched.map(() => new Float64Array(this.capacity));
  }

  /** Fills `out` with the columns of the entry at `index`; false when that index no longer holds `serial`. */
  row(index: number, serial: number, out: unknown[]): boolean {
    if (this.inUse[index] === 0 || this.serialOf(index) !== serial) return false;
    const g = this.getters;
    for (let c = 0; c < g.length; c++) out[c] = g[c](index);
    return true;
  }

  /** Fills `out` with the update columns of the live entry at `index`, then its serial. */
  update(index: number, out: unknown[]): void {
    const g = this.updateGetters;
    for (let c = 0; c < g.length; c++) out[c] = g[c](index);
    out[g.length] = this.serialOf(index);
  }

  /**
   * Writes up to `max` indexes of live entries changed since they were
   * written into `out`, continuing where the last call stopped; visits each
   * index at most once per call.
   */
  dirty(out: Int32Array, max: number): number {
    const cap = this.capacity;
    const inUse = this.inUse;
    const live = this.watched;
    const written = this.lastWritten;
    const w = live.length;
    let i = this.cursor;
    let n = 0;
    for (let k = 0; k < cap && n < max; k++) {
      if (inUse[i] !== 0) {
        for (let c = 0; c < w; c++) {
          if (live[c](i) !== written[c][i]) { out[n++] = i; break; }
        }
      }
      i = i + 1 === cap ? 0 : i + 1;
    }
    this.cursor = i;
    return n;
  }

  /** The entry at `index` was just written with its current values. */
  written(index: number): void {
    for (let c = 0; c < this.watched.length; c++) this.lastWritten[c][index] = this.watched[c](index);
  }

  /** Every live entry counts as changed until it is written again. */
  markAllDirty(): void {
    for (const w of this.lastWritten) w.fill(NaN);
  }

  liveCount(): number {
    return this.spec.count(this.table);
  }

  /** Calls fn for every live entry (full rewrite after a fault). */
  forEachLive(fn: (index: number, serial: number) => void): void {
    for (let i = 0; i < this.capacity; i++) if (this.inUse[i] !== 0) fn(i, this.serialOf(i));
  }

  /**
   * Rebuilds one stored row (values in `columns` order): checks it, applies
   * the deadline and the address policy, re-creates the entry and assigns
   * the remaining columns. Returns why it was not restored, or undefined.
   */
  restore(values: readonly unknown[], ctx: RestoreContext): Rejection | undefined {
    return this.restoreDecoded(this.decoder.decode(values, ctx), ctx);
  }

  /** restore() of a row whose values are all numbers: `values[at + column]` (a page of the restore reader). */
  restoreAt(values: Float64Array, at: number, ctx: RestoreContext): Rejection | undefined {
    return this.restoreDecoded(this.decoder.decodeAt(values, at, ctx), ctx);
  }

  private restoreDecoded(bad: Rejection | undefined, ctx: RestoreContext): Rejection | undefined {
    if (bad !== undefined) return bad;
    const v = this.decoder.values;
    if (v[this.expiresColumn] <= ctx.now) return EXPIRED;
    const moved = !ctx.isPublic(v[this.pubAddrColumn]);
    if (moved && ctx.onAddressChange !== 'move') return ADDRESS;
    const i = this.spec.restore(this.table, this.decoder.record, ctx);
    if (i === ORPHAN) return ORPHANED;
    if (i < 0) {
      return { kind: 'conflict', column: '', problem: this.spec.conflicts?.[i] ?? 'conflicts with an entry already restored, or the table is full' };
    }
    for (let c = 0; c < this.assigners.length; c++) this.assigners[c](i, v[this.assignedColumns[c]]);
    if (moved) {
      // Rewritten with the new address by the next update flush.
      for (let c = 0; c < this.lastWritten.length; c++) this.lastWritten[c][i] = NaN;
    } else {
      this.written(i);
    }
    return undefined;
  }

  /** This table's rows are all restored. */
  restored(): void {
    this.spec.restored?.(this.table);
  }
}
