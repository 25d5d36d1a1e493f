/**
 * Restore never loses data: hostile and damaged state files. Good rows are
 * restored, rows that cannot be right are quarantined with their reason
 * (never deleted), a newer schema is refused untouched, a foreign schema at
 * the current version is moved aside with a plain reason, and a restore that
 * fails part way leaves the file as it was.
 */
import { afterEach, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { Journal } from '../../src/core/journal';
import { ipv4ToInt32, prefixPairs } from '../../src/core/ipv4-addr';
import { SessionTable } from '../../src/nat/sessions';
import { IpsecMasq } from '../../src/helpers/ipsec/ipsec';
import { PptpCalls } from '../../src/helpers/pptp/calls';
import { TableCodec } from '../../src/persist/columns';
import { SCHEMA_VERSION } from '../../src/persist/schema';
import { Store, StoreOptions } from '../../src/persist/store';
import { EspCodec, GreCallCodec, IsakmpCodec, SESSIONS, SessionCodec } from '../../src/persist/tables';
import { Logged, recordingLogger as logger } from './recording-logger';
import { PROTO_UDP } from '../../src/wire/ipv4';

const PUB = ipv4ToInt32('198.18.0.2');
const LAN = ipv4ToInt32('10.77.0.11');
const REM = ipv4ToInt32('198.18.0.11');
const T0 = 1_700_000_000_000;
const LAN_PREFIXES = prefixPairs(['10.77.0.0/24']);


const newTable = (): SessionTable => new SessionTable(1024, PUB, { range: [1024, 65535], lowRange: null, preserve: true }, new Journal());

function tables() {
  const t = newTable();
  const m = new IpsecMasq({ lifetimeMs: 1800_000, pendingMs: 120_000, squelchMs: 30_000, retries: 5, parallel: true, guessing: false, guessMax: 5, capacity: 256 });
  m.journal = t.journal;
  m.serials = t.serials;
  const g = new PptpCalls(64, t.serials, t.journal);
  return { t, m, g };
}

const sha = (file: string): string => crypto.createHash('sha256').update(new Uint8Array(fs.readFileSync(file))).digest('hex');

function query(file: string, sql: string): Array<Record<string, unknown>> {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare(sql).all() as Array<Record<string, unknown>>;
  } finally {
    db.close();
  }
}

describe('restore of a hostile or damaged state file', () => {
  let dir: string;
  let file: string;
  let lines: Logged[];
  const stores: Store[] = [];

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vpnmasq-restore-'));
    file = path.join(dir, 'state.db');
    lines = [];
  });

  afterEach(() => {
    for (const s of stores.splice(0)) s.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  function open(x: ReturnType<typeof tables>, opts: StoreOptions = {}): Store {
    const store = new Store({ path: file, synchronous: 'normal', flushIntervalMs: 1000 }, logger(lines), { now: () => T0, ...opts });
    store.registerTable(new SessionCodec(x.t));
    store.registerTable(new IsakmpCodec(x.m, x.t));
    store.registerTable(new EspCodec(x.m, x.t));
    store.registerTable(new GreCallCodec(x.g, x.t));
    stores.push(store);
    return store;
  }

  const restore = (store: Store, x: ReturnType<typeof tables>) =>
    store.restore({ now: T0, isPublic: (a: number) => x.t.publicIndexOf(a) >= 0, onAddressChange: 'move', lanPrefixes: LAN_PREFIXES });

  /** A state file with `n` good UDP sessions (serials 1..n), written by the store. */
  function goodFile(n: number): void {
    const x = tables();
    const store = open(x);
    for (let i = 0; i < n; i++) x.t.createOut(PROTO_UDP, LAN, 20000 + i, REM, 7000, T0, 0, T0 + 300_000);
    (x.t.journal as Journal).drain((k, tb, i, s) => store.event(k, tb, i, s));
    store.flush();
    store.close();
    stores.splice(stores.indexOf(store), 1);
  }

  function exec(sql: string): void {
    const db = new Database(file);
    db.exec(sql);
    db.close();
  }

  /** A session row as the store writes it, with some columns replaced. */
  function sessionRow(serial: string, over: Record<string, string> = {}): string {
    const v: Record<string, string> = {
      serial, proto: String(PROTO_UDP), lan: String(LAN), lan_port: '30000', pub_addr: String(PUB), pub_port: '30000', rem: String(REM),
      rem_port: '7000', state: '0', created: String(T0), last_seen: String(T0), expires: String(T0 + 300_000),
      pkts_out: '0', pkts_in: '0', bytes_out: '0', bytes_in: '0', ...over,
    };
    return `INSERT INTO sessions (${Object.keys(v).join(', ')}) VALUES (${Object.values(v).join(', ')})`;
  }

  it('a bad row among 100 good ones: 100 restored, 1 quarantined, and the next writes keep all 101', () => {
    goodFile(100);
    exec(sessionRow('500', { proto: '99', lan_port: '30500', pub_port: '30500' }));
    const x = tables();
    const store = open(x);
    assert.deepEqual(restore(store, x), { restored: 100, discarded: 0, quarantined: 1 });
    assert.equal(x.t.sessionCount, 100);
    const err = lines.filter((l) => l.level === 'error');
    assert.deepEqual(err.map((l) => l.msg), ['1 state database row could not be restored: kept in its quarantine table']);
    assert.deepEqual(err[0].fields?.first, ['sessions serial 500: proto: 99 is not one of 6 (tcp), 17 (udp), 1 (icmp)']);
    store.tick();
    store.close();
    assert.equal(query(file, 'SELECT COUNT(*) AS n FROM sessions')[0].n, 100);
    const q = query(file, 'SELECT source, serial, reason, row FROM quarantine');
    assert.equal(q.length, 1);
    assert.deepEqual([q[0].source, q[0].serial], ['sessions', '500']);
    assert.equal((JSON.parse(String(q[0].row)) as Record<string, unknown>).proto, 99);
  });

  it('hostile values are quarantined with a reason that names the column, and new ids stay unique', () => {
    goodFile(3);
    const bad: Array<[string, RegExp]> = [
      [sessionRow('10', { lan: String(ipv4ToInt32('8.8.8.8')), lan_port: '30010', pub_port: '30010' }), /lan: 8\.8\.8\.8 is not inside a LAN prefix \(10\.77\.0\.0\/24\)/],
      [sessionRow(String(2 ** 53 - 1), { lan_port: '30011', pub_port: '30011' }), /serial: 9007199254740991 is outside 1\.\.4503599627370496/],
      [sessionRow('9223372036854775807', { lan_port: '30012', pub_port: '30012' }), /serial: expected an integer/],
      [sessionRow('12', { expires: '1e300', lan_port: '30013', pub_port: '30013' }), /expires: .* is further ahead than any timer reaches/],
      [sessionRow('13', { pub_port: '0', lan_port: '30014' }), /pub_port: 0 is outside 1\.\.65535/],
      [sessionRow('14', { lan_port: "'x'", pub_port: '30015' }), /lan_port: expected a number, found string/],
      [sessionRow('15', { created: "X'00'", lan_port: '30016', pub_port: '30016' }), /created: expected a number, found object/],
      // The good row with serial 1 holds public port 20000 of this LAN endpoint.
      [sessionRow('16', { lan_port: '20000', pub_port: '20999' }), /its public port is mapped to another LAN endpoint, or its LAN endpoint to another public port/],
      [`INSERT INTO esp VALUES (2, ${LAN}, ${REM}, ${PUB}, 4096, 0, 1, 0, 0, ${T0}, ${T0 + 60_000}, 0, 0)`, /serial: 2 is already the id of a restored sessions row/],
      [`INSERT INTO esp VALUES (20, ${LAN}, ${REM}, ${PUB}, 4096, 0, 9, 0, 0, ${T0}, ${T0 + 60_000}, 0, 0)`, /state: 9 is not one of 1 \(pending\), 2 \(established\), 3 \(squelched\)/],
      [`INSERT INTO esp VALUES (21, ${LAN}, ${REM}, ${PUB}, 4097, 5, 2, 0, 0, ${T0}, ${T0 + 60_000}, 0, 0)`, /in_spi 0x00000005 of an established entry is a reserved SPI/],
      [`INSERT INTO esp VALUES (22, ${LAN}, ${REM}, ${PUB}, 0, 0, 1, 0, 0, ${T0}, ${T0 + 60_000}, 0, 0)`, /out_spi 0 is not an SPI an SA can have/],
      [`INSERT INTO esp VALUES (23, ${LAN}, ${REM}, ${PUB}, 4098, 0, 1, 0, 3000000000, ${T0}, ${T0 + 60_000}, 0, 0)`, /retries: 3000000000 is outside 0\.\.2147483647/],
      [`INSERT INTO gre_calls VALUES (30, ${LAN}, ${REM}, ${PUB}, 256, 0, -1, 1, 1, 1, ${T0 + 60_000}, ${T0}, 0, 0)`, /pub_call_id: 0 is outside 1\.\.65535/],
    ];
    for (const [sql] of bad) exec(sql);
    const x = tables();
    const store = open(x);
    assert.deepEqual(restore(store, x), { restored: 3, discarded: 0, quarantined: bad.length });
    store.close();
    const q = query(file, 'SELECT source, serial, reason FROM quarantine ORDER BY id');
    assert.equal(q.length, bad.length);
    for (const [sql, reason] of bad) {
      assert.ok(q.some((r) => reason.test(String(r.reason))), `${sql}\n  no quarantined row matches ${reason}:\n${JSON.stringify(q, null, 1)}`);
    }
    assert.ok(q.some((r) => r.serial === '9223372036854775807'), 'the serial is kept exactly');
    assert.equal(query(file, 'SELECT COUNT(*) AS n FROM sessions')[0].n, 3, 'quarantined rows leave their table');
    // New ids continue above the good rows, one each.
    const a = x.t.createOut(PROTO_UDP, LAN, 40000, REM, 7000, T0, 0, T0 + 1000);
    const b = x.t.createOut(PROTO_UDP, LAN, 40001, REM, 7000, T0, 0, T0 + 1000);
    assert.deepEqual([x.t.sSerial[a], x.t.sSerial[b]], [4, 5]);
  });

  it('a newer schema version is refused: the file is left byte for byte, nothing is written, status says why', () => {
    goodFile(5);
    exec(`PRAGMA user_version = ${SCHEMA_VERSION + 1}`);
    const before = sha(file);
    const x = tables();
    const store = open(x);
    assert.deepEqual(restore(store, x), { restored: 0, discarded: 0, quarantined: 0 });
    x.t.createOut(PROTO_UDP, LAN, 40000, REM, 7000, T0, 0, T0 + 1000);
    (x.t.journal as Journal).drain((k, tb, i, s) => store.event(k, tb, i, s));
    store.flush();
    store.tick();
    const h = store.health();
    assert.equal(h.healthy, false);
    assert.equal(h.movedAside, null);
    assert.match(String(h.refused), new RegExp(`schema version ${SCHEMA_VERSION + 1} is newer than this vpnmasq's \\(${SCHEMA_VERSION}\\): the file is left untouched and nothing is persisted`));
    assert.match(String(h.refused), /--force-downgrade/);
    store.close();
    assert.equal(sha(file), before);
    assert.deepEqual(fs.readdirSync(dir), ['state.db']);
    assert.ok(lines.some((l) => l.level === 'error' && /written by a newer vpnmasq/.test(l.msg)));
  });

  it('a newer schema version with --force-downgrade: moved aside as it is, a new file is used', () => {
    goodFile(5);
    exec(`PRAGMA user_version = ${SCHEMA_VERSION + 1}`);
    const before = sha(file);
    const x = tables();
    const store = open(x, { newerSchema: 'move-aside' });
    assert.deepEqual(restore(store, x), { restored: 0, discarded: 0, quarantined: 0 });
    const h = store.health();
    assert.equal(h.healthy, true);
    assert.match(path.basename(String(h.movedAside)), /^state\.db\.newer-/);
    assert.equal(sha(String(h.movedAside)), before);
    assert.match(String(h.movedAsideReason), /newer than this vpnmasq's.*--force-downgrade/);
  });

  it('the current version with tables that are not this vpnmasq\'s: moved aside with the reason in plain words', () => {
    goodFile(5);
    exec('DROP TABLE esp; ALTER TABLE gre_calls DROP COLUMN last_seen');
    const x = tables();
    const store = open(x);
    assert.deepEqual(restore(store, x), { restored: 0, discarded: 0, quarantined: 0 });
    const h = store.health();
    assert.equal(h.healthy, true);
    assert.match(path.basename(String(h.movedAside)), /^state\.db\.wrong-schema-/);
    assert.equal(h.movedAsideReason,
      `SCHEMA_MISMATCH: schema version ${SCHEMA_VERSION} but not this vpnmasq's tables: table esp is missing; table gre_calls lacks column last_seen`);
    assert.equal(query(String(h.movedAside), 'SELECT COUNT(*) AS n FROM sessions')[0].n, 5, 'the rows are still in the moved file');
    assert.ok(!lines.some((l) => /Cannot read properties/.test(JSON.stringify(l))));
  });

  it('a restore that fails part way leaves the file as it was (moved aside) and keeps what it read', () => {
    goodFile(50);
    const before = sha(file);
    const x = tables();
    const store = new Store({ path: file, synchronous: 'normal', flushIntervalMs: 1000 }, logger(lines), { now: () => T0 });
    stores.push(store);
    // A table whose restore breaks on the 21st row, as a bug or an I/O error would.
    store.registerTable(new TableCodec({
      ...SESSIONS,
      restore: (t, r, ctx) => {
        if (r.serial === 21) throw new Error('read error');
        return SESSIONS.restore(t, r, ctx);
      },
    }, x.t));
    assert.deepEqual(restore(store, x), { restored: 20, discarded: 0, quarantined: 0 });
    const h = store.health();
    assert.match(path.basename(String(h.movedAside)), /^state\.db\.unrestored-/);
    assert.match(String(h.movedAsideReason), /restore failed after 20 rows \(ERROR: read error\); the file is kept as it was/);
    assert.equal(sha(String(h.movedAside)), before);
    store.tick();
    assert.equal(query(file, 'SELECT COUNT(*) AS n FROM sessions')[0].n, 20, 'the new file has what was restored');
  });

  it('a quarantine that cannot be written yet: the rows stay in their table until the next write takes them', () => {
    goodFile(3);
    exec(sessionRow('9', { proto: '99', lan_port: '30009', pub_port: '30009' }));
    const x = tables();
    const store = open(x);
    const other = new Database(file);
    other.exec('BEGIN IMMEDIATE');
    assert.deepEqual(restore(store, x), { restored: 3, discarded: 0, quarantined: 1 });
    assert.equal(store.health().healthy, false);
    other.exec('COMMIT');
    other.close();
    assert.equal(query(file, 'SELECT COUNT(*) AS n FROM sessions WHERE serial = 9')[0].n, 1, 'not deleted before it is quarantined');
    store.tick();
    assert.equal(store.health().healthy, true);
    assert.equal(query(file, 'SELECT COUNT(*) AS n FROM sessions WHERE serial = 9')[0].n, 0);
    assert.deepEqual(query(file, 'SELECT serial FROM quarantine').map((r) => r.serial), ['9']);
  });
});
