/**
 * The state store without root: write-ahead, updates, restore with the wall
 * clock advanced, migrations from every earlier schema, address changes and
 * the faults the store must survive without throwing into the packet path.
 */
import { afterEach, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import type { AddressChangePolicy, StateConfig } from '../../src/config/schema';
import { Journal } from '../../src/core/journal';
import { SessionTable } from '../../src/nat/sessions';
import { openReadOnly } from '../../src/query/stored';
import { SCHEMA_VERSION, SCHEMAS, SIDE_TABLES } from '../../src/persist/schema';
import { Store } from '../../src/persist/store';
import { EspCodec, GreCallCodec, IsakmpCodec, SessionCodec } from '../../src/persist/tables';
import { ESP_ESTABLISHED, ESP_PENDING, ESP_SQUELCHED, IpsecMasq } from '../../src/helpers/ipsec/ipsec';
import { CALL_CONFIRMED, CALL_REQUESTED, PptpCalls, ROLE_PAC, ROLE_PNS } from '../../src/helpers/pptp/calls';
import { NO_FORWARD } from '../../src/nat/forwards';
import { Targets } from '../../src/core/targets';
import { Verdict } from '../../src/core/verdict';
import { Logged, recordingLogger as logger } from './recording-logger';
import { PROTO_TCP, PROTO_UDP } from '../../src/wire/ipv4';
import { ipv4ToInt32, prefixPairs } from '../../src/core/ipv4-addr';

const PUB = ipv4ToInt32('198.18.0.2');
const PUB2 = ipv4ToInt32('198.18.0.3');
const LAN = ipv4ToInt32('10.77.0.11');
const REM = ipv4ToInt32('198.18.0.11');
const T0 = 1_700_000_000_000;
const LAN_PREFIXES = prefixPairs(['10.77.0.0/24']);


function newTable(pub = PUB, capacity = 1024): SessionTable {
  return new SessionTable(capacity, pub, { range: [1024, 65535], lowRange: null, preserve: true }, new Journal());
}

/** What the daemon does at the end of a batch: drain the journal into the store and flush. */
function drain(t: SessionTable, store: Store): void {
  (t.journal as Journal).drain((k, tb, i, s) => store.event(k, tb, i, s));
  store.flush();
}

function rowsIn(file: string, table = 'sessions'): Array<Record<string, number>> {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare(`SELECT * FROM ${table} ORDER BY serial`).all() as Array<Record<string, number>>;
  } finally {
    db.close();
  }
}

describe('state store', () => {
  let dir: string;
  let cfg: StateConfig;
  let lines: Logged[];
  let clock: number;
  const stores: Store[] = [];

  function open(t: SessionTable, overrides: Partial<StateConfig> = {}): Store {
    const store = new Store({ ...cfg, ...overrides }, logger(lines), { now: () => clock });
    store.registerTable(new SessionCodec(t));
    stores.push(store);
    return store;
  }

  function restore(store: Store, t: SessionTable, policy: AddressChangePolicy = 'move') {
    return store.restore({ now: clock, isPublic: (a) => t.publicIndexOf(a) >= 0, onAddressChange: policy, lanPrefixes: LAN_PREFIXES });
  }

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vpnmasq-store-'));
    cfg = { path: path.join(dir, 'state', 'state.db'), synchronous: 'normal', flushIntervalMs: 1000 };
    lines = [];
    clock = T0;
  });

  afterEach(() => {
    for (const s of stores.splice(0)) s.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('write-ahead: a NEW event followed by flush is in the database (directory created)', () => {
    const t = newTable();
    const store = open(t);
    const s = t.createOut(PROTO_UDP, LAN, 40000, REM, 7000, clock, 0, clock + 30000);
    drain(t, store);
    const rows = rowsIn(cfg.path);
    assert.equal(rows.length, 1);
    assert.equal(rows[0].serial, t.sSerial[s]);
    assert.equal(rows[0].pub_port, 40000);
    assert.equal(rows[0].pub_addr, PUB);
    assert.equal(rows[0].expires, clock + 30000);
    assert.equal(store.health().healthy, true);
  });

  it('WAL checkpoints run on their own thread once started; commits that never pause get the WAL truncated by tick', async () => {
    const t = newTable();
    const store = new Store(cfg, logger(lines), { now: () => clock, walTrimBytes: 1 << 20 });
    store.registerTable(new SessionCodec(t));
    stores.push(store);
    assert.equal(store.health().checkpointThread, false, 'not before start()');
    store.start();
    assert.equal(store.health().checkpointThread, true);
    // Commits back to back: the thread's checkpoints never catch up with the writer, so the WAL is not restarted.
    for (let i = 0; i < 2000; i++) {
      const s = t.createOut(PROTO_UDP, LAN, 20000 + (i % 1000), REM, 7000, clock, 0, clock + 30000);
      drain(t, store);
      t.removeSession(s);
      drain(t, store);
    }
    const wal = `${cfg.path}-wal`;
    assert.ok(fs.statSync(wal).size > 1 << 20, `the WAL holds ${fs.statSync(wal).size} bytes`);
    // A tick that meets the thread's own checkpoint under way (busy) truncates at the next one.
    for (let i = 0; i < 5 && fs.statSync(wal).size > 0; i++) {
      store.tick();
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(fs.statSync(wal).size, 0, 'truncated by the tick');
    assert.equal(rowsIn(cfg.path).length, 0);
    assert.equal(lines.filter((l) => l.level === 'warn').length, 0, JSON.stringify(lines));
    store.close();
    assert.equal(store.health().checkpointThread, false, 'the thread ends with the store');
    assert.equal(fs.existsSync(wal), false, 'the store closed as the last connection: the thread had closed its own');
  });

  it('updates are flushed by tick, deletions by the next flush', () => {
    const t = newTable();
    const store = open(t);
    const a = t.createOut(PROTO_TCP, LAN, 40001, REM, 80, clock, 3, clock + 7440000);
    const b = t.createOut(PROTO_UDP, LAN, 40002, REM, 53, clock, 0, clock + 30000);
    drain(t, store);
    t.setLastSeen(a, clock + 1000);
    t.setCounters(a, 10, 0, 0, 1234);
    t.setExpires(a, clock + 1000 + 7440000);
    t.removeSession(b);
    drain(t, store);
    let rows = rowsIn(cfg.path);
    assert.deepEqual(rows.map((r) => r.serial), [t.sSerial[a]], 'deleted row gone after flush');
    assert.equal(rows[0].pkts_out, 0, 'no write per packet of an existing flow');
    store.tick();
    rows = rowsIn(cfg.path);
    assert.equal(rows[0].pkts_out, 10);
    assert.equal(rows[0].bytes_in, 1234);
    assert.equal(rows[0].last_seen, clock + 1000);
    assert.equal(rows[0].state, 3);
  });

  it('a reply in the second the row was written reaches the database (its deadline moved, its last_seen did not)', () => {
    const t = newTable();
    const store = open(t);
    // A forward's session starts with a deadline of now; the answer in the same second gives it its timer.
    const s = t.createOut(PROTO_UDP, LAN, 40003, REM, 5060, clock, 0, clock);
    drain(t, store);
    t.touch(s, false, 100, clock + 300, clock + 300 + 120000);
    store.tick();
    const rows = rowsIn(cfg.path);
    assert.equal(rows[0].expires, clock + 300 + 120000);
    assert.equal(rows[0].pkts_in, 1);
  });

  it('restore: wall-clock deadlines count the downtime; same ports and serials; expired rows deleted', () => {
    const t = newTable();
    let store = open(t);
    const short = t.createOut(PROTO_UDP, LAN, 40010, REM, 7000, clock, 0, clock + 30000);
    const long = t.createOut(PROTO_TCP, LAN, 40011, REM, 80, clock, 3, clock + 300000);
    const long2 = t.createOut(PROTO_TCP, LAN, 40011, ipv4ToInt32('198.18.0.12'), 80, clock, 3, clock + 300000);
    t.setCounters(long, 0, 5, 0, 0);
    t.setLastSeen(long, clock + 1000);
    drain(t, store);
    store.close();

    clock += 60000; // down for a minute: the UDP session's deadline passed
    const t2 = newTable();
    store = open(t2);
    assert.deepEqual(restore(store, t2), { restored: 2, discarded: 1, quarantined: 0 });
    assert.deepEqual(store.health().rowsRestored, 2);
    assert.deepEqual(store.health().rowsDiscarded, 1);
    assert.equal(t2.sessionCount, 2);
    assert.equal(t2.mappingCount, 1, 'both sessions share the restored mapping');
    const s = t2.findOut(PROTO_TCP, LAN, 40011, REM, 80);
    assert.ok(s >= 0);
    assert.equal(t2.sSerial[s], t.sSerial[long]);
    assert.equal(t2.pubPortOf(s), 40011);
    assert.equal(t2.pktsIn(s), 5);
    assert.equal(t2.lastSeenOf(s), T0 + 1000);
    assert.equal(t2.findOut(PROTO_UDP, LAN, 40010, REM, 7000), -1);
    assert.deepEqual(rowsIn(cfg.path).map((r) => r.serial).sort(), [t.sSerial[long], t.sSerial[long2]].sort());
    assert.ok(lines.some((l) => l.msg === 'state restored' && l.fields?.restored === 2 && l.fields?.discarded === 1));
    // New sessions continue above the restored serials and keep the restored port owned.
    const n = t2.createOut(PROTO_TCP, ipv4ToInt32('10.77.0.12'), 40011, REM, 80, clock, 0, clock + 1000);
    assert.ok(t2.sSerial[n] > Math.max(t.sSerial[long], t.sSerial[long2], t.sSerial[short]));
    assert.notEqual(t2.pubPortOf(n), 40011);
  });

  for (const policy of ['move', 'drop'] as const) {
    it(`public address changed: wan.onAddressChange=${policy}`, () => {
      const t = newTable(PUB);
      let store = open(t);
      t.createOut(PROTO_UDP, LAN, 40020, REM, 7000, clock, 0, clock + 30000);
      drain(t, store);
      store.close();
      const t2 = newTable(PUB2);
      store = open(t2);
      const r = restore(store, t2, policy);
      if (policy === 'move') {
        assert.deepEqual(r, { restored: 1, discarded: 0, quarantined: 0 });
        const s = t2.findOut(PROTO_UDP, LAN, 40020, REM, 7000);
        assert.equal(t2.pubPortOf(s), 40020, 'same port on the new address');
        store.tick();
        assert.equal(rowsIn(cfg.path)[0].pub_addr, PUB2, 'row rewritten with the new address');
      } else {
        assert.deepEqual(r, { restored: 0, discarded: 1, quarantined: 0 });
        assert.equal(t2.sessionCount, 0);
        assert.equal(rowsIn(cfg.path).length, 0);
      }
    });
  }

  /** A row of the sample session in each earlier schema version. */
  const SAMPLE_ROW: Record<number, string> = {
    1: `INSERT INTO sessions VALUES (77, ${PROTO_UDP}, ${LAN}, 40030, 40031, ${REM}, 7000, 0, ${T0}, ${T0}, ${T0 + 30000})`,
    2: `INSERT INTO sessions VALUES (77, ${PROTO_UDP}, ${LAN}, 40030, ${PUB}, 40031, ${REM}, 7000, 0, ${T0}, ${T0}, ${T0 + 30000}, 1, 2, 3, 4)`,
    3: `INSERT INTO sessions VALUES (77, ${PROTO_UDP}, ${LAN}, 40030, ${PUB}, 40031, ${REM}, 7000, 0, ${T0}, ${T0}, ${T0 + 30000}, 1, 2, 3, 4)`,
  };

  for (let v = 1; v < SCHEMA_VERSION; v++) {
    it(`migrates a version ${v} database to version ${SCHEMA_VERSION}`, () => {
      assert.ok(SAMPLE_ROW[v], `add a sample row for schema version ${v}`);
      fs.mkdirSync(path.dirname(cfg.path), { recursive: true });
      const old = new Database(cfg.path);
      for (const sql of SCHEMAS[v]) old.exec(sql);
      old.exec(SAMPLE_ROW[v]);
      old.pragma(`user_version = ${v}`);
      old.close();

      const t = newTable();
      const store = open(t);
      assert.deepEqual(restore(store, t, 'move'), { restored: 1, discarded: 0, quarantined: 0 });
      const s = t.findOut(PROTO_UDP, LAN, 40030, REM, 7000);
      assert.equal(t.sSerial[s], 77);
      assert.equal(t.pubPortOf(s), 40031);
      store.close();

      // Same columns and indexes as a database created at the current version (with the side tables the store adds).
      const fresh = new Database(':memory:');
      for (const sql of [...SCHEMAS[SCHEMA_VERSION], ...SIDE_TABLES]) fresh.exec(sql);
      const migrated = new Database(cfg.path, { readonly: true });
      const shape = (db: Database.Database) => ({
        columns: db.prepare("SELECT m.name AS tbl, c.name, c.type, c.\"notnull\" FROM sqlite_master m, pragma_table_info(m.name) c WHERE m.type = 'table' ORDER BY m.name, c.name").all(),
        indexes: db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name").all(),
      });
      assert.deepEqual(shape(migrated), shape(fresh));
      assert.equal(migrated.pragma('user_version', { simple: true }), SCHEMA_VERSION);
      migrated.close();
      fresh.close();
    });
  }

  it('restore checks every column: a row that cannot be right is quarantined with its reason and logged, the good rows are restored', () => {
    const t = newTable();
    let store = open(t);
    for (let i = 0; i < 5; i++) t.createOut(PROTO_UDP, LAN, 41000 + i, REM, 7000, clock, 0, clock + 30000);
    drain(t, store);
    store.close();
    const db = new Database(cfg.path);
    db.exec(`UPDATE sessions SET proto = 99 WHERE serial = (SELECT MIN(serial) FROM sessions)`);
    db.exec(`UPDATE sessions SET lan_port = 70000 WHERE serial = (SELECT MAX(serial) FROM sessions)`);
    db.close();
    const t2 = newTable();
    store = open(t2);
    assert.deepEqual(restore(store, t2), { restored: 3, discarded: 0, quarantined: 2 });
    assert.equal(t2.sessionCount, 3);
    const logged = lines.find((l) => l.level === 'error' && /could not be restored/.test(l.msg));
    assert.ok(logged, JSON.stringify(lines));
    assert.equal(logged.msg, '2 state database rows could not be restored: kept in its quarantine table');
    assert.equal(logged.fields?.rows, 2);
    assert.match(String(logged.fields?.first), /proto: 99 is not one of 6 \(tcp\), 17 \(udp\), 1 \(icmp\)/);
    assert.match(String(logged.fields?.first), /lan_port: 70000 is outside 0\.\.65535/);
    assert.equal(store.health().rowsQuarantined, 2);
    store.close();
    assert.equal(rowsIn(cfg.path).length, 3, 'the good rows stay in their table');
    const q = rowsIn(cfg.path, 'quarantine') as unknown as Array<{ source: string; serial: string; reason: string; row: string }>;
    assert.deepEqual(q.map((r) => [r.source, r.reason]), [
      ['sessions', 'proto: 99 is not one of 6 (tcp), 17 (udp), 1 (icmp)'], ['sessions', 'lan_port: 70000 is outside 0..65535'],
    ]);
    assert.equal((JSON.parse(q[0].row) as Record<string, number>).proto, 99, 'the row is kept whole');
  });

  it('reader streams stored rows as ConnRow without the daemon', () => {
    const t = newTable();
    const store = open(t);
    t.createOut(PROTO_TCP, LAN, 40040, REM, 443, clock, 3, clock + 60000);
    t.createOut(PROTO_UDP, LAN, 40041, REM, 53, clock, 0, clock + 30000);
    drain(t, store);
    const r = openReadOnly(cfg.path);
    const rows = [...r.iterate(clock + 1000)];
    r.close();
    assert.equal(rows.length, 2);
    assert.deepEqual(rows[0].lan, { addr: '10.77.0.11', port: 40040 });
    assert.deepEqual(rows[0].public, { addr: '198.18.0.2', port: 40040 });
    assert.equal(rows[0].proto, 'tcp');
    assert.equal(rows[0].state, 'ESTABLISHED');
    assert.equal(rows[1].proto, 'udp');
    assert.equal(rows[1].expiresInSeconds, 29);
  });

  for (const kind of ['garbage', 'truncated'] as const) {
    it(`a ${kind} file at start is moved aside and the router starts empty`, () => {
      if (kind === 'garbage') {
        fs.mkdirSync(path.dirname(cfg.path), { recursive: true });
        fs.writeFileSync(cfg.path, new Uint8Array(64 * 1024).fill(0x5a));
      } else {
        const t = newTable(PUB, 8192);
        const store = open(t);
        for (let i = 0; i < 5000; i++) t.createOut(PROTO_UDP, LAN, 2000 + i, REM, 7000, clock, 0, clock + 30000);
        drain(t, store);
        store.close();
        const size = fs.statSync(cfg.path).size;
        fs.truncateSync(cfg.path, Math.floor(size / 2));
      }
      const t = newTable();
      const store = open(t);
      assert.deepEqual(restore(store, t), { restored: 0, discarded: 0, quarantined: 0 });
      const h = store.health();
      assert.equal(h.healthy, true);
      assert.ok(h.movedAside && fs.existsSync(h.movedAside), `moved aside: ${h.movedAside}`);
      assert.match(path.basename(h.movedAside), /^state\.db\.corrupt-/);
      assert.ok(lines.some((l) => l.level === 'error' && l.msg === 'state database moved aside (corrupt), starting with a new file'));
      t.createOut(PROTO_UDP, LAN, 40050, REM, 7000, clock, 0, clock + 30000);
      drain(t, store);
      assert.equal(rowsIn(cfg.path).length, 1, 'the new file works');
    });
  }

  it('unwritable directory: unhealthy, no throw, full rewrite when it clears', () => {
    // Root ignores file modes: make the parent a regular file instead.
    const parent = path.dirname(cfg.path);
    fs.writeFileSync(parent, 'not a directory');
    const t = newTable();
    const store = open(t);
    assert.deepEqual(restore(store, t), { restored: 0, discarded: 0, quarantined: 0 });
    t.createOut(PROTO_UDP, LAN, 40060, REM, 7000, clock, 0, clock + 30000);
    t.createOut(PROTO_UDP, LAN, 40061, REM, 7000, clock, 0, clock + 30000);
    assert.doesNotThrow(() => drain(t, store));
    let h = store.health();
    assert.equal(h.healthy, false);
    assert.match(h.lastError ?? '', /ENOTDIR|EEXIST/);
    assert.equal(h.pendingWrites, 2);
    store.tick();
    assert.equal(store.health().healthy, false, 'still failing');
    fs.rmSync(parent);
    clock += 1000;
    store.tick();
    h = store.health();
    assert.equal(h.healthy, true);
    assert.equal(h.pendingWrites, 0);
    assert.equal(rowsIn(cfg.path).length, 2, 'whole live table written');
    assert.ok(lines.some((l) => l.msg === 'state database writes resumed'));
  });

  it('file deleted while running: detected by the file check, recreated with the full table', () => {
    const t = newTable();
    const store = open(t);
    t.createOut(PROTO_UDP, LAN, 40070, REM, 7000, clock, 0, clock + 30000);
    drain(t, store);
    for (const f of [cfg.path, `${cfg.path}-wal`, `${cfg.path}-shm`]) fs.rmSync(f, { force: true });
    t.createOut(PROTO_UDP, LAN, 40071, REM, 7000, clock, 0, clock + 30000);
    drain(t, store); // commits into the deleted file
    clock += 2500;
    store.tick();
    assert.ok(lines.some((l) => l.level === 'error' && /deleted/.test(String(l.fields?.error))));
    assert.match(store.health().lastError ?? '', /deleted/);
    assert.equal(store.health().healthy, true, 'reopened in the same tick');
    assert.deepEqual(rowsIn(cfg.path).map((r) => r.pub_port).sort(), [40070, 40071]);
  });

  it('file replaced while running: rewritten', () => {
    const t = newTable();
    const store = open(t);
    t.createOut(PROTO_UDP, LAN, 40080, REM, 7000, clock, 0, clock + 30000);
    drain(t, store);
    const other = path.join(dir, 'other.db');
    new Database(other).close();
    fs.renameSync(other, cfg.path);
    clock += 2500;
    store.tick();
    clock += 1000;
    store.tick();
    assert.equal(store.health().healthy, true);
    assert.deepEqual(rowsIn(cfg.path).map((r) => r.pub_port), [40080]);
  });

  it('SQLITE_BUSY from a second writer: forwarding goes on, writes resume after release', () => {
    const t = newTable();
    const store = open(t);
    drain(t, store);
    const other = new Database(cfg.path);
    other.exec('BEGIN IMMEDIATE');
    t.createOut(PROTO_UDP, LAN, 40090, REM, 7000, clock, 0, clock + 30000);
    assert.doesNotThrow(() => drain(t, store));
    let h = store.health();
    assert.equal(h.healthy, false);
    assert.match(h.lastError ?? '', /SQLITE_BUSY/);
    assert.equal(h.pendingWrites, 1);
    other.exec('COMMIT');
    other.close();
    store.tick();
    h = store.health();
    assert.equal(h.healthy, true);
    assert.deepEqual(rowsIn(cfg.path).map((r) => r.pub_port), [40090]);
  });

  it('file stays small: expired rows removed and pages reclaimed by incremental vacuum', () => {
    const t = newTable(PUB, 32768);
    const store = open(t);
    for (let i = 0; i < 20000; i++) t.createOut(PROTO_UDP, LAN, 2000 + i, REM, 7000, clock, 0, clock + 30000);
    drain(t, store);
    store.tick();
    const db = new Database(cfg.path);
    db.pragma('wal_checkpoint(TRUNCATE)');
    const pagesFull = db.pragma('page_count', { simple: true }) as number;
    clock += 31000;
    t.sweep(clock, t.capacity);
    drain(t, store);
    assert.equal(rowsIn(cfg.path).length, 0);
    for (let i = 0; i < 200 && (db.pragma('freelist_count', { simple: true }) as number) > 0; i++) store.tick();
    db.pragma('wal_checkpoint(TRUNCATE)');
    const pagesAfter = db.pragma('page_count', { simple: true }) as number;
    db.close();
    assert.ok(pagesAfter < pagesFull / 4, `pages ${pagesFull} -> ${pagesAfter}`);
  });

  describe('VPN tables (ISAKMP, ESP, PPTP calls)', () => {
    const VPN = ipv4ToInt32('198.18.0.20');
    const VPN2 = ipv4ToInt32('198.18.0.21');
    const MIN = 60_000;

    /** The tables of one daemon run, sharing the session table's journal and serials as the daemon wires them. */
    function vpnTables(pub = PUB) {
      const t = newTable(pub);
      const m = new IpsecMasq({
        lifetimeMs: 30 * MIN, pendingMs: 2 * MIN, squelchMs: 30_000, retries: 5,
        parallel: true, guessing: false, guessMax: 5, capacity: 256,
      });
      m.journal = t.journal;
      m.serials = t.serials;
      const g = new PptpCalls(64, t.serials, t.journal);
      return { t, m, g };
    }

    function openVpn(v: ReturnType<typeof vpnTables>): Store {
      const store = open(v.t);
      store.registerTable(new IsakmpCodec(v.m, v.t));
      store.registerTable(new EspCodec(v.m, v.t));
      store.registerTable(new GreCallCodec(v.g, v.t));
      return store;
    }

    function cookies(ic0: number, ic1: number, rc0: number, rc1: number): [number, number, number, number] {
      return [ic0, ic1, rc0, rc1];
    }
    /** Where an inbound packet went: the LAN hosts in `to`, their number returned (0: dropped). */
    const to = new Targets();
    const delivered = (v: number): number => (v === Verdict.TRANSLATED ? to.count : 0);

    it('new entries are written ahead, state changes reach the database in the update flush', () => {
      const v = vpnTables();
      const store = openVpn(v);
      assert.equal(v.m.outIsakmp(LAN, VPN, ...cookies(0x11111111, 0x22222222, 0, 0), clock), -1);
      assert.equal(v.m.outEsp(LAN, VPN, 0x1000, clock), -1);
      const ctl = v.t.createOut(PROTO_TCP, LAN, 40100, VPN, 1723, clock, 3, clock + 7440000);
      const call = v.g.create(LAN, VPN, 0x0100, ROLE_PNS, ctl, v.t.sSerial[ctl], clock);
      drain(v.t, store);
      assert.equal(rowsIn(cfg.path, 'isakmp')[0].has_rcookie, 0);
      assert.equal(rowsIn(cfg.path, 'esp')[0].state, ESP_PENDING);
      assert.equal(rowsIn(cfg.path, 'gre_calls')[0].state, CALL_REQUESTED);

      clock += 1000;
      assert.equal(delivered(v.m.inIsakmp(VPN, ...cookies(0x11111111, 0x22222222, 0x33333333, 0x44444444), clock, NO_FORWARD, to)), 1);
      assert.equal(delivered(v.m.inEsp(VPN, 0x2000, clock, NO_FORWARD, to)), 1);
      v.g.confirm(call, 0x5555);
      drain(v.t, store);
      assert.equal(rowsIn(cfg.path, 'esp')[0].state, ESP_PENDING, 'no write per packet');
      store.tick();
      const k = rowsIn(cfg.path, 'isakmp')[0];
      assert.deepEqual([k.has_rcookie, k.rcookie0, k.rcookie1, k.expires], [1, 0x33333333, 0x44444444, clock + 30 * MIN]);
      const e = rowsIn(cfg.path, 'esp')[0];
      assert.deepEqual([e.state, e.out_spi, e.in_spi, e.pkts_in], [ESP_ESTABLISHED, 0x1000, 0x2000, 1]);
      const c = rowsIn(cfg.path, 'gre_calls')[0];
      assert.deepEqual([c.state, c.rem_call_id, c.pub_call_id, c.ctl_serial], [CALL_CONFIRMED, 0x5555, v.g.pubId[call], v.t.sSerial[ctl]]);
      assert.equal(c.expires, Infinity, 'the control connection holds the call');

      // Expiry is persisted too.
      clock += 31 * MIN;
      v.m.sweep(clock, 256);
      drain(v.t, store);
      assert.equal(rowsIn(cfg.path, 'isakmp').length, 0);
      assert.equal(rowsIn(cfg.path, 'esp').length, 0);
    });

    it('restore keeps cookies, SPI pairings, Call IDs and serials; pending ESP past its deadline is dropped', () => {
      const v = vpnTables();
      let store = openVpn(v);
      v.m.outIsakmp(LAN, VPN, ...cookies(0x11111111, 0x22222222, 0, 0), clock);
      v.m.inIsakmp(VPN, ...cookies(0x11111111, 0x22222222, 0x33333333, 0x44444444), clock, NO_FORWARD, to);
      v.m.outEsp(LAN, VPN, 0x1000, clock);
      v.m.inEsp(VPN, 0x2000, clock, NO_FORWARD, to);
      v.m.outEsp(LAN, VPN2, 0x3000, clock); // stays pending: 2 min
      const lan2 = ipv4ToInt32('10.77.0.12');
      const ctl = v.t.createOut(PROTO_TCP, LAN, 40100, VPN, 1723, clock, 3, clock + 7440000);
      const call = v.g.create(LAN, VPN, 0x0100, ROLE_PNS, ctl, v.t.sSerial[ctl], clock);
      v.g.confirm(call, 0x5555);
      const ctl2 = v.t.createOut(PROTO_TCP, lan2, 40101, VPN, 1723, clock, 3, clock + 7440000);
      const call2 = v.g.create(lan2, VPN, 0x0100, ROLE_PAC, ctl2, v.t.sSerial[ctl2], clock);
      v.g.confirm(call2, 0x6666);
      drain(v.t, store);
      store.close(); // the final flush; a kill -9 would leave the last second of updates out

      clock += 3 * MIN; // down 3 minutes: the pending ESP entry's deadline passed
      const w = vpnTables();
      store = openVpn(w);
      assert.deepEqual(restore(store, w.t), { restored: 2 + 1 + 1 + 2, discarded: 1, quarantined: 0 });
      assert.equal(rowsIn(cfg.path, 'esp').length, 1, 'the dropped pending entry is deleted');
      assert.deepEqual(w.m.stats().esp, { pending: 0, established: 1, squelched: 0 });
      // Both cookies lead to the LAN host; the SPI pairing works both ways.
      assert.equal(delivered(w.m.inIsakmp(VPN, ...cookies(0x11111111, 0x22222222, 0x33333333, 0x44444444), clock, NO_FORWARD, to)), 1);
      assert.equal(to.addr[0], LAN);
      assert.equal(delivered(w.m.inEsp(VPN, 0x2000, clock, NO_FORWARD, to)), 1);
      assert.equal(to.addr[0], LAN);
      assert.equal(w.m.outEsp(LAN, VPN, 0x1000, clock), -1);
      // A new SPI towards the remote whose pending entry was dropped is not blocked.
      assert.equal(w.m.outEsp(lan2, VPN2, 0x4000, clock), -1);
      // Calls: same public Call IDs (different per LAN host), serials, remote IDs, control connection.
      for (const [old, rem] of [[call, 0x5555], [call2, 0x6666]]) {
        const c = w.g.findPub(VPN, v.g.pubId[old]);
        assert.ok(c >= 0);
        assert.equal(w.g.serial[c], v.g.serial[old]);
        assert.equal(w.g.lanId[c], 0x0100);
        assert.equal(w.g.remId[c], rem);
        assert.equal(w.g.findRem(VPN, rem), c);
        assert.equal(w.g.state[c], CALL_CONFIRMED);
        assert.equal(w.t.sSerial[w.g.ctlSession[c]], v.g.ctlSerial[old]);
      }
      assert.equal(w.g.sweep(clock), 0, 'the restored control connections hold the calls');
      // New rows continue above every restored serial (one id space).
      const n = w.t.createOut(PROTO_UDP, LAN, 40102, REM, 53, clock, 0, clock + 30000);
      assert.ok(w.t.sSerial[n] > Math.max(v.g.serial[call2], v.t.sSerial[ctl2]));
    });

    it('VPN packet counters survive a restart: the ISAKMP and ESP entries\' and the registered event counters', () => {
      const v = vpnTables();
      const events = new Float64Array(3);
      let store = openVpn(v);
      store.registerCounters(['ipsec-a', 'ipsec-b', 'pptp-c'], events);
      restore(store, v.t);
      v.m.outIsakmp(LAN, VPN, ...cookies(0x11111111, 0x22222222, 0, 0), clock);
      for (let i = 0; i < 3; i++) v.m.inIsakmp(VPN, ...cookies(0x11111111, 0x22222222, 0x33333333, 0x44444444), clock, NO_FORWARD, to);
      v.m.outEsp(LAN, VPN, 0x1000, clock);
      v.m.inEsp(VPN, 0x2000, clock, NO_FORWARD, to);
      events.set([5, 0, 2]);
      drain(v.t, store);
      store.close();

      const w = vpnTables();
      const again = new Float64Array(3);
      store = openVpn(w);
      store.registerCounters(['ipsec-a', 'ipsec-b', 'pptp-c'], again);
      restore(store, w.t);
      assert.deepEqual([...again], [5, 0, 2]);
      const [k] = [...Array(256).keys()].filter((i) => w.m.kInUse[i] === 1);
      assert.deepEqual([w.m.kPktsOut[k], w.m.kPktsIn[k]], [1, 3]);
      const [e] = [...Array(256).keys()].filter((i) => w.m.eInUse[i] === 1);
      assert.deepEqual([w.m.ePktsOut[e], w.m.ePktsIn[e]], [1, 1]);
      // Counting goes on from there and is written by the next tick.
      again[0] += 2;
      store.tick();
      const db = new Database(cfg.path, { readonly: true });
      assert.deepEqual(db.prepare('SELECT name, value FROM counters ORDER BY name').all(),
        [{ name: 'ipsec-a', value: 7 }, { name: 'ipsec-b', value: 0 }, { name: 'pptp-c', value: 2 }]);
      db.close();
    });

    it('a squelched entry is restored squelched; a call without its control connection is dropped', () => {
      const v = vpnTables();
      let store = openVpn(v);
      v.m.outEsp(LAN, VPN, 0x1000, clock);
      v.m.outEsp(ipv4ToInt32('10.77.0.12'), VPN, 0x1001, clock); // blocked: marks 0x1000 contended
      for (let i = 0; i < 6; i++) v.m.outEsp(LAN, VPN, 0x1000, clock);
      assert.equal(v.m.espCountByState[ESP_SQUELCHED], 1);
      const ctl = v.t.createOut(PROTO_TCP, LAN, 40100, VPN, 1723, clock, 3, clock + 60000);
      v.g.create(LAN, VPN, 0x0100, ROLE_PNS, ctl, v.t.sSerial[ctl], clock);
      drain(v.t, store);
      store.close();
      clock += 61000; // the control session (60 s) expired while down; the squelch (30 s) too
      const w = vpnTables();
      store = openVpn(w);
      assert.deepEqual(restore(store, w.t), { restored: 0, discarded: 3, quarantined: 0 });

      // Within the squelch time the state comes back as it was.
      clock = T0;
      const x = vpnTables();
      store = openVpn(x);
      x.m.outEsp(LAN, VPN, 0x1000, clock);
      x.m.outEsp(ipv4ToInt32('10.77.0.12'), VPN, 0x1001, clock);
      for (let i = 0; i < 6; i++) x.m.outEsp(LAN, VPN, 0x1000, clock);
      drain(x.t, store);
      store.close();
      clock += 10000;
      const y = vpnTables();
      store = openVpn(y);
      restore(store, y.t);
      assert.deepEqual(y.m.stats().esp, { pending: 0, established: 0, squelched: 1 });
      assert.equal(rowsIn(cfg.path, 'esp')[0].state, ESP_SQUELCHED);
    });

    it('public address changed: VPN rows follow wan.onAddressChange', () => {
      for (const policy of ['move', 'drop'] as const) {
        fs.rmSync(path.dirname(cfg.path), { recursive: true, force: true });
        const v = vpnTables(PUB);
        let store = openVpn(v);
        v.m.outIsakmp(LAN, VPN, ...cookies(1, 2, 0, 0), clock);
        v.m.outEsp(LAN, VPN, 0x1000, clock);
        drain(v.t, store);
        store.close();
        const w = vpnTables(PUB2);
        store = openVpn(w);
        const r = restore(store, w.t, policy);
        if (policy === 'drop') {
          assert.deepEqual(r, { restored: 0, discarded: 2, quarantined: 0 });
        } else {
          assert.deepEqual(r, { restored: 2, discarded: 0, quarantined: 0 });
          store.tick();
          assert.equal(rowsIn(cfg.path, 'isakmp')[0].pub_addr, PUB2);
          assert.equal(rowsIn(cfg.path, 'esp')[0].pub_addr, PUB2);
        }
        store.close();
      }
    });
  });
});
