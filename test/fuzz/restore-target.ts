/**
 * The restore fuzz target: state files written by the store from live tables
 * (NAPT sessions, ISAKMP and ESP entries, PPTP calls with their control
 * connections), then made hostile: rows changed in place or copied with a
 * value that cannot be right (a protocol, state or role that does not
 * exist, an address outside the LAN, ports and Call IDs out of range, ids
 * that are zero, huge or taken by another table, deadlines beyond any timer,
 * text and blobs in number columns), rows that conflict with good ones,
 * expired rows; now and then the file itself is damaged (truncated, bytes
 * flipped, a newer schema version, a table dropped).
 *
 * Checked: restore never throws; every good row is restored (same id, same
 * public port, cookies, SPIs, Call IDs); no bad row is; every bad row is in
 * the quarantine table and only there, expired rows are gone; a second
 * restore of the same file restores the same rows and quarantines nothing; a
 * damaged file is restored from, or moved aside byte for byte, or (newer
 * schema) left byte for byte.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { Journal } from '../../src/core/journal';
import { Targets } from '../../src/core/targets';
import { ipv4ToInt32, prefixPairs } from '../../src/core/ipv4-addr';
import { SessionTable } from '../../src/nat/sessions';
import { NO_FORWARD } from '../../src/nat/forwards';
import { IpsecMasq } from '../../src/helpers/ipsec/ipsec';
import { PptpCalls, ROLE_PAC, ROLE_PNS } from '../../src/helpers/pptp/calls';
import type { StoreLog } from '../../src/persist/store';
import { Store } from '../../src/persist/store';
import { SCHEMA_VERSION } from '../../src/persist/schema';
import { EspCodec, GreCallCodec, IsakmpCodec, SessionCodec } from '../../src/persist/tables';
import { Rng } from './rng';

const T0 = 1_700_000_000_000;
const PUB = ipv4ToInt32('198.18.0.2');
const LAN_PREFIXES = ['10.77.0.0/24', '10.88.0.0/16'];
const PAIRS = prefixPairs(LAN_PREFIXES);
const TCP = 6, UDP = 17, ICMP = 1;
/** Restore order (store registration): a row's id may only be taken by an earlier table's row. */
const ORDER = ['sessions', 'isakmp', 'esp', 'gre_calls'] as const;
type TableName = (typeof ORDER)[number];

interface Live {
  t: SessionTable;
  m: IpsecMasq;
  g: PptpCalls;
}

function live(): Live {
  const t = new SessionTable(8192, PUB, { range: [1024, 65535], lowRange: [1, 1023], preserve: true }, new Journal());
  const m = new IpsecMasq({ lifetimeMs: 1800_000, pendingMs: 120_000, squelchMs: 30_000, retries: 5, parallel: true, guessing: false, guessMax: 5, capacity: 2048 });
  m.journal = t.journal;
  m.serials = t.serials;
  const g = new PptpCalls(1024, t.serials, t.journal);
  return { t, m, g };
}

function register(store: Store, x: Live): void {
  store.registerTable(new SessionCodec(x.t));
  store.registerTable(new IsakmpCodec(x.m, x.t));
  store.registerTable(new EspCodec(x.m, x.t));
  store.registerTable(new GreCallCodec(x.g, x.t));
}

/** A stored row: its table, its serial as text (exact), its values by column. */
interface StoredRow {
  table: TableName;
  serial: string;
  values: Record<string, unknown>;
}

const key = (table: string, serial: string): string => `${table}/${serial}`;
const sha = (file: string): string => crypto.createHash('sha256').update(new Uint8Array(fs.readFileSync(file))).digest('hex');
const lanHost = (rng: Rng): number => (rng.chance(0.7) ? ipv4ToInt32('10.77.0.10') + rng.int(200) : ipv4ToInt32('10.88.0.0') + 1 + rng.int(60000));
const remote = (rng: Rng): number => ipv4ToInt32('198.18.0.10') + rng.int(40);

/** Values that make a column wrong, whatever the rest of the row says. */
const INVALID: Record<TableName, Record<string, ReadonlyArray<string>>> = {
  sessions: {
    serial: ['0', '-7', String(2 ** 52 + 1), '4611686018427387904'],
    proto: ['99', '0', '2', "'tcp'"], lan: [String(ipv4ToInt32('8.8.8.8')), '4294967296', "X'0a'"], lan_port: ['65536', '-1', '1.5'],
    pub_port: ['0', '65536'], rem: ['2147483648', "'x'"], rem_port: ['-1', '70000'], state: ['256', '-1'], created: ["'now'"],
    expires: [String(T0 + 2 ** 32), '1e308', "'later'"], pkts_out: ['-1'], bytes_in: ["X'ff'"],
  },
  isakmp: {
    serial: ['0', String(2 ** 53)], lan: [String(ipv4ToInt32('192.0.2.1'))], icookie0: ['2147483648'], has_rcookie: ['2'], server: ['-1', '3'],
    expires: [String(T0 + 2 ** 33)],
  },
  esp: {
    serial: ['-1'], lan: [String(ipv4ToInt32('100.64.0.1'))], state: ['0', '4', '255'], out_spi: ['0', '4294967296'], retries: ['-1', '2147483648'],
    blocking: ['2'], expires: ["'x'"],
  },
  gre_calls: {
    serial: ['0'], lan: [String(ipv4ToInt32('8.8.4.4'))], role: ['0', '3'], state: ['0', '4'], pub_call_id: ['0', '65536'], lan_call_id: ['65536', '-1'],
    rem_call_id: ['-2', '65536'], ctl_serial: ['0', '-5'], expires: [String(T0 + 2 ** 40)],
  },
};

export interface RestoreFuzzOptions {
  seed: number;
  /** Rows to write over all files (good and hostile). */
  rows: number;
  progress?: (rows: number) => void;
}

export interface RestoreFuzzResult {
  files: number;
  damaged: number;
  rows: number;
  good: number;
  bad: number;
  expired: number;
  seconds: number;
  /** The first violation, with what reproduces it. */
  failure: { file: number; problem: string; hostile: string[] } | null;
}

class Violation extends Error {}

export function fuzzRestore(opts: RestoreFuzzOptions): RestoreFuzzResult {
  const rng = new Rng(opts.seed ^ 0x5eed5eed);
  const started = Date.now();
  const res: RestoreFuzzResult = { files: 0, damaged: 0, rows: 0, good: 0, bad: 0, expired: 0, seconds: 0, failure: null };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vpnmasq-fuzz-restore-'));
  try {
    while (res.rows < opts.rows) {
      const file = path.join(dir, `state-${res.files}.db`);
      const hostile: string[] = [];
      try {
        if (rng.chance(0.12)) {
          res.damaged++;
          res.rows += damagedFile(rng.fork(), file, hostile);
        } else {
          const n = hostileFile(rng.fork(), file, hostile);
          res.rows += n.rows;
          res.good += n.good;
          res.bad += n.bad;
          res.expired += n.expired;
        }
      } catch (e) {
        res.failure = { file: res.files, problem: e instanceof Violation ? e.message : `threw: ${(e as Error).stack ?? String(e)}`, hostile };
        break;
      }
      res.files++;
      for (const f of fs.readdirSync(dir)) fs.rmSync(path.join(dir, f), { force: true });
      opts.progress?.(res.rows);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    res.seconds = (Date.now() - started) / 1000;
  }
  return res;
}

const quiet = (): StoreLog & { errors: string[] } => {
  const errors: string[] = [];
  return { errors, info: () => undefined, warn: () => undefined, event: () => undefined, error: (msg, f) => { errors.push(`${msg} ${JSON.stringify(f ?? {})}`); } };
};

function openStore(file: string, x: Live, newerSchema: 'refuse' | 'move-aside' = 'refuse'): Store {
  const store = new Store({ path: file, synchronous: 'off', flushIntervalMs: 1000 }, quiet(), { now: () => T0, newerSchema });
  register(store, x);
  return store;
}

const restoreCtx = (x: Live) => ({ now: T0, isPublic: (a: number) => x.t.publicIndexOf(a) >= 0, onAddressChange: 'move' as const, lanPrefixes: PAIRS });

/** Writes a file as the daemon would: live entries of every table, through the store. */
function goodFile(rng: Rng, file: string): void {
  const x = live();
  const store = openStore(file, x);
  const to = new Targets();
  const sessions = rng.range(5, 150);
  for (let i = 0; i < sessions; i++) {
    const proto = rng.pick([TCP, UDP, UDP, ICMP]);
    x.t.createOut(proto, lanHost(rng), rng.chance(0.1) ? rng.range(1, 1023) : rng.range(1024, 65535), remote(rng), proto === ICMP ? 0 : rng.pick([53, 80, 443, 7000]),
      T0 - 1000, proto === TCP ? rng.range(0, 10) : 0, T0 + rng.pick([-5000, 60_000, 3_600_000]));
  }
  for (let i = rng.int(20); i > 0; i--) {
    const rem = remote(rng);
    const ic0 = rng.u32() | 0;
    const ic1 = rng.u32() | 0;
    x.m.outIsakmp(lanHost(rng), rem, ic0, ic1, 0, 0, T0 - 1000);
    if (rng.chance(0.6)) x.m.inIsakmp(rem, ic0, ic1, rng.u32() | 1, rng.u32() | 0, T0 - 900, NO_FORWARD, to);
  }
  for (let i = rng.int(20); i > 0; i--) {
    const rem = remote(rng);
    if (x.m.outEsp(lanHost(rng), rem, (rng.u32() | 0x1000) | 0, T0 - 1000) === -1 && rng.chance(0.6)) x.m.inEsp(rem, (rng.u32() | 0x1000) | 0, T0 - 900, NO_FORWARD, to);
  }
  for (let i = rng.int(10); i > 0; i--) {
    const lan = lanHost(rng);
    const rem = remote(rng);
    const ctl = x.t.createOut(TCP, lan, rng.range(1024, 65535), rem, 1723, T0 - 1000, 3, T0 + 3_600_000);
    if (ctl < 0) continue;
    for (let k = rng.range(1, 3); k > 0; k--) {
      const c = x.g.create(lan, rem, rng.int(65536), rng.chance(0.8) ? ROLE_PNS : ROLE_PAC, ctl, x.t.sSerial[ctl], T0 - 1000);
      if (c >= 0 && rng.chance(0.7)) x.g.confirm(c, rng.int(65536));
    }
  }
  (x.t.journal as Journal).drain((k, tb, i, s) => store.event(k, tb, i, s));
  store.flush();
  store.tick();
  store.close();
}

function readRows(file: string, table: string): StoredRow[] {
  const db = new Database(file, { readonly: true });
  try {
    return (db.prepare(`SELECT *, CAST(serial AS TEXT) AS serial_text FROM ${table} ORDER BY serial`).all() as Array<Record<string, unknown>>).map((r) => {
      const { serial_text: s, ...values } = r;
      return { table: table as TableName, serial: String(s), values };
    });
  } finally {
    db.close();
  }
}

const sqlValue = (v: unknown): string => (typeof v === 'number' ? (Number.isFinite(v) ? String(v) : v > 0 ? '9e999' : '-9e999') : `'${String(v)}'`);

/** A file of good rows made hostile; checks restore on it. Returns what it wrote. */
function hostileFile(rng: Rng, file: string, hostile: string[]): { rows: number; good: number; bad: number; expired: number } {
  goodFile(rng, file);
  const good = new Map<string, StoredRow>();
  for (const t of ORDER) for (const r of readRows(file, t)) good.set(key(t, r.serial), r);
  const bad = new Set<string>();
  /** Good rows that a conflicting or id-sharing bad row depends on staying good. */
  const anchors = new Set<string>();
  const expired = new Map<string, StoredRow>();
  for (const [k, r] of good) if (Number(r.values.expires) <= T0) { expired.set(k, r); good.delete(k); }
  const db = new Database(file);
  let nextSerial = 1_000_000;
  const used = new Set<string>();
  for (const g of good.values()) for (const u of keysOf(g)) used.add(u);
  for (const g of expired.values()) for (const u of keysOf(g)) used.add(u);
  const all = (): StoredRow[] => [...good.values()];
  const run = (sql: string): boolean => {
    try {
      db.exec(sql);
      hostile.push(sql);
      return true;
    } catch {
      return false; // a constraint the schema enforces itself (NOT NULL, an integer primary key)
    }
  };
  const insert = (table: string, values: Record<string, unknown>, over: Record<string, string>): boolean => {
    const cols = Object.keys(values);
    return run(`INSERT INTO ${table} (${cols.join(', ')}) VALUES (${cols.map((c) => over[c] ?? sqlValue(values[c])).join(', ')})`);
  };
  /** Good calls whose control connection is this session: they go to quarantine with it. */
  const dependents = (sessionSerial: string): string[] => [...good.entries()]
    .filter(([, r]) => r.table === 'gre_calls' && String(r.values.ctl_serial) === sessionSerial && r.values.state !== 3).map(([k]) => k);
  for (let n = rng.range(1, 25); n > 0 && good.size > 0; n--) {
    const r = rng.pick(all());
    const cols = INVALID[r.table];
    const col = rng.pick(Object.keys(cols));
    const value = rng.pick(cols[col]);
    switch (rng.weighted([40, 30, 20, 10])) {
      case 0: {
        // The row itself becomes bad (not one a conflicting copy depends on: that copy would then be restored).
        if (col === 'serial' || anchors.has(key(r.table, r.serial))) break;
        if (run(`UPDATE ${r.table} SET ${col} = ${value} WHERE serial = ${r.serial}`)) {
          const k = key(r.table, r.serial);
          good.delete(k);
          bad.add(k);
          if (r.table === 'sessions') for (const d of dependents(r.serial)) { good.delete(d); bad.add(d); }
        }
        break;
      }
      case 1: {
        // A copy under a new id (or a bad one) with keys of its own: only the bad value keeps it out.
        const serial = col === 'serial' ? value : String(nextSerial++);
        if (insert(r.table, r.values, { ...freshKeys(rng, r, used), serial, [col]: value })) bad.add(key(r.table, readBack(db, r.table, serial)));
        break;
      }
      case 2: {
        // A copy under a higher id that conflicts with the good row (same endpoint, cookies, SPI or Call ID).
        const serial = String(nextSerial++);
        const over: Record<string, string> = { serial };
        if (r.table === 'sessions' && rng.chance(0.5)) over.pub_port = String(((Number(r.values.pub_port) + 1 + rng.int(100)) % 65535) + 1);
        if (r.table === 'sessions' && !over.pub_port) over.lan_port = String((Number(r.values.lan_port) + 1 + rng.int(100)) % 65536);
        if (over.lan_port === String(r.values.lan_port)) break;
        if (insert(r.table, r.values, over)) {
          bad.add(key(r.table, serial));
          anchors.add(key(r.table, r.serial));
        }
        break;
      }
      default: {
        // An id a row of an earlier table holds.
        const later = ORDER.indexOf(r.table);
        const earlier = all().filter((x) => ORDER.indexOf(x.table) < later);
        if (earlier.length === 0) break;
        const e = rng.pick(earlier);
        const other = all().filter((x) => x.table === r.table);
        const src = rng.pick(other);
        if (insert(r.table, src.values, { serial: e.serial })) {
          bad.add(key(r.table, e.serial));
          anchors.add(key(e.table, e.serial));
          anchors.add(key(src.table, src.serial));
        }
      }
    }
  }
  db.close();
  const rows = good.size + bad.size + expired.size;

  const x = live();
  const store = openStore(file, x);
  const r = store.restore(restoreCtx(x));
  const h = store.health();
  const expect = (ok: boolean, what: string): void => { if (!ok) throw new Violation(what); };
  expect(h.movedAside === null && h.refused === null, `a hostile file was moved aside or refused: ${h.movedAsideReason ?? h.refused}`);
  expect(r.restored === good.size, `restored ${r.restored} rows, ${good.size} were good`);
  expect(r.quarantined === bad.size, `quarantined ${r.quarantined} rows, ${bad.size} were bad`);
  expect(r.discarded === expired.size, `discarded ${r.discarded} rows, ${expired.size} had expired`);
  for (const g of good.values()) expect(isLive(x, g), `good ${g.table} row ${g.serial} ${JSON.stringify(g.values)} is not live after restore`);
  store.tick();
  store.close();
  const after = new Map<string, StoredRow>();
  for (const t of ORDER) for (const row of readRows(file, t)) after.set(key(t, row.serial), row);
  for (const k of good.keys()) expect(after.has(k), `good row ${k} is gone from the file`);
  for (const k of after.keys()) expect(good.has(k), `row ${k} is still in its table (bad or expired)`);
  const q = new Database(file, { readonly: true });
  const quarantined = new Set((q.prepare('SELECT source, serial FROM quarantine').all() as Array<{ source: string; serial: string }>).map((y) => key(y.source, String(y.serial))));
  q.close();
  for (const k of bad) expect(quarantined.has(k), `bad row ${k} is not in the quarantine table`);
  for (const k of quarantined) expect(bad.has(k), `${k} was quarantined but was good`);

  const y = live();
  const again = openStore(file, y);
  const r2 = again.restore(restoreCtx(y));
  again.close();
  expect(r2.restored === good.size && r2.quarantined === 0 && r2.discarded === 0, `second restore: ${JSON.stringify(r2)}, expected ${good.size} restored`);
  return { rows, good: good.size, bad: bad.size, expired: expired.size };
}

/** What a row claims that no other row may: a LAN endpoint and public port, cookies, an SPI, Call IDs. */
function keysOf(r: StoredRow): string[] {
  const v = r.values as Record<string, number>;
  if (r.table === 'sessions') return [`lan/${v.proto}/${v.lan}/${v.lan_port}`, `pub/${v.proto}/${v.pub_port}`];
  if (r.table === 'isakmp') return [`ic/${v.rem}/${v.icookie0}/${v.icookie1}`];
  if (r.table === 'esp') return [`spi/${v.rem}/${v.out_spi}`, `in/${v.rem}/${v.in_spi}`];
  return [`lanid/${v.lan}/${v.rem}/${v.lan_call_id}`, `pubid/${v.rem}/${v.pub_call_id}`, `remid/${v.rem}/${v.rem_call_id}`];
}

/** Column values that give a copy of `r` keys no row has (so only a bad value can keep it out); recorded in `used`. */
function freshKeys(rng: Rng, r: StoredRow, used: Set<string>): Record<string, string> {
  const v = r.values as Record<string, number>;
  const free = (make: () => [string, string[]]): string => {
    for (;;) {
      const [value, claims] = make();
      if (claims.every((c) => !used.has(c))) {
        for (const c of claims) used.add(c);
        return value;
      }
    }
  };
  if (r.table === 'sessions') {
    const port = free(() => {
      const p = rng.range(1024, 65535);
      return [String(p), [`lan/${v.proto}/${v.lan}/${p}`, `pub/${v.proto}/${p}`]];
    });
    return { lan_port: port, pub_port: port };
  }
  if (r.table === 'isakmp') return { icookie0: free(() => { const c = rng.u32() | 0; return [String(c), [`ic/${v.rem}/${c}/${v.icookie1}`]]; }) };
  if (r.table === 'esp') {
    // Established: a remote holds one pending entry at a time.
    const out = free(() => { const x = (rng.u32() | 0x1000) | 0; return [String(x), [`spi/${v.rem}/${x}`]]; });
    const inSpi = free(() => { const x = (rng.u32() | 0x1000) | 0; return [String(x), [`in/${v.rem}/${x}`]]; });
    return { out_spi: out, in_spi: inSpi, state: '2' };
  }
  const lanId = free(() => { const x = rng.int(65536); return [String(x), [`lanid/${v.lan}/${v.rem}/${x}`]]; });
  const pubId = free(() => { const x = rng.range(1, 65535); return [String(x), [`pubid/${v.rem}/${x}`]]; });
  const remId = free(() => { const x = rng.int(65536); return [String(x), [`remid/${v.rem}/${x}`]]; });
  return { lan_call_id: lanId, pub_call_id: pubId, rem_call_id: remId };
}

/** The serial a row was stored under, as text (a huge one exactly). */
function readBack(db: Database.Database, table: string, serial: string): string {
  const row = db.prepare(`SELECT CAST(serial AS TEXT) AS s FROM ${table} WHERE serial = CAST(? AS INTEGER)`).get(serial) as { s: string } | undefined;
  return row?.s ?? serial;
}

/** Whether a good stored row is an entry of the live tables with the same id and key fields. */
function isLive(x: Live, g: StoredRow): boolean {
  const v = g.values as Record<string, number>;
  const serial = Number(g.serial);
  if (g.table === 'sessions') {
    const s = x.t.findOut(v.proto, v.lan, v.lan_port, v.rem, v.rem_port);
    return s >= 0 && x.t.sSerial[s] === serial && x.t.pubPortOf(s) === v.pub_port;
  }
  if (g.table === 'isakmp') {
    for (let k = 0; k < x.m.opts.capacity; k++) if (x.m.kInUse[k] === 1 && x.m.kSerial[k] === serial) return x.m.kIc0[k] === v.icookie0 && x.m.kIc1[k] === v.icookie1 && x.m.kLan[k] === v.lan;
    return false;
  }
  if (g.table === 'esp') {
    for (let e = 0; e < x.m.opts.capacity; e++) if (x.m.eInUse[e] === 1 && x.m.eSerial[e] === serial) return x.m.eOutSpi[e] === v.out_spi && x.m.eState[e] === v.state;
    return false;
  }
  const c = x.g.findPub(v.rem, v.pub_call_id);
  return c >= 0 && x.g.serial[c] === serial && x.g.lanId[c] === v.lan_call_id;
}

/** A file damaged as a whole; restore must not throw and must keep the file (moved aside, or untouched when refused). */
function damagedFile(rng: Rng, file: string, hostile: string[]): number {
  goodFile(rng, file);
  const rows = ORDER.reduce((n, t) => n + readRows(file, t).length, 0);
  const how = rng.int(4);
  if (how === 0) {
    const size = fs.statSync(file).size;
    fs.truncateSync(file, rng.range(1, size - 1));
    hostile.push(`truncated to ${fs.statSync(file).size} of ${size} bytes`);
  } else if (how === 1) {
    const b = new Uint8Array(fs.readFileSync(file));
    for (let i = rng.range(1, 40); i > 0; i--) b[rng.range(100, b.length - 1)] ^= 1 << rng.int(8);
    fs.writeFileSync(file, b);
    hostile.push('bytes flipped');
  } else if (how === 2) {
    const db = new Database(file);
    db.pragma(`user_version = ${SCHEMA_VERSION + 1 + rng.int(5)}`);
    db.close();
    hostile.push('newer schema version');
  } else {
    const db = new Database(file);
    db.exec(rng.chance(0.5) ? `DROP TABLE ${rng.pick(ORDER)}` : 'ALTER TABLE esp DROP COLUMN retries');
    db.close();
    hostile.push('a table or column dropped');
  }
  const before = sha(file);
  const x = live();
  const store = openStore(file, x);
  store.restore(restoreCtx(x));
  store.tick();
  const h = store.health();
  store.close();
  const check = (ok: boolean, what: string): void => { if (!ok) throw new Violation(`${hostile.join(', ')}: ${what}`); };
  if (how === 2) {
    check(h.refused !== null && h.movedAside === null, 'a newer file was not refused');
    check(sha(file) === before, 'a refused file was changed');
  } else if (h.movedAside !== null) {
    check(sha(h.movedAside) === before, `the file moved aside (${h.movedAsideReason}) is not the file as it was`);
  } else {
    check(how === 1, `a ${hostile[0]} file was used as it was`);
  }
  return rows;
}
