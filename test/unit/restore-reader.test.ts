/**
 * The restore reader: the pages its thread sends are the rows SQLite holds,
 * every value as read (numbers in the page's Float64Array, the rest as they
 * came), in serial order, each row once; when the thread cannot start or
 * fails part way, the store's own connection reads the rest from after the
 * last page taken.
 */
import { afterEach, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { PAGE_ROWS, PageRows, PageSource, ReadTable } from '../../src/persist/restore-reader';

/** Rows: three pages of table a and a part of one of table b, a few irregular ones among them. */
const ROWS_A = 2 * PAGE_ROWS + 123;
const ROWS_B = 50;

const table = (name: string): ReadTable => {
  const select = `SELECT serial, x, y, CASE WHEN serial BETWEEN ${-Number.MAX_SAFE_INTEGER} AND ${Number.MAX_SAFE_INTEGER} THEN NULL ` +
    `ELSE CAST(serial AS TEXT) END FROM ${name}`;
  return { first: `${select} ORDER BY serial LIMIT ${PAGE_ROWS}`, next: `${select} WHERE serial > CAST(? AS INTEGER) ORDER BY serial LIMIT ${PAGE_ROWS}`, width: 4 };
};
const TABLES = [table('a'), table('b')];

let dir: string;
let db: Database.Database;
let sources: PageSource[];

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vpnmasq-reader-'));
  db = new Database(path.join(dir, 'state.db'));
  db.pragma('journal_mode = WAL');
  db.exec('CREATE TABLE a (serial INTEGER PRIMARY KEY, x, y); CREATE TABLE b (serial INTEGER PRIMARY KEY, x, y)');
  const ins = db.prepare('INSERT INTO a VALUES (?, ?, ?)');
  db.transaction(() => {
    for (let i = 1; i <= ROWS_A; i++) ins.run(i, i * 0.5, -i);
  })();
  // The irregular values a hostile or damaged file may hold, one of them on a page's last row.
  db.prepare('UPDATE a SET x = NULL WHERE serial = 7').run();
  db.prepare("UPDATE a SET y = 'text' WHERE serial = ?").run(PAGE_ROWS);
  db.prepare("UPDATE a SET x = x'00ff' WHERE serial = ?").run(PAGE_ROWS + 1);
  db.prepare('UPDATE a SET x = -0.0, y = 1e308 WHERE serial = 9').run();
  const insB = db.prepare('INSERT INTO b VALUES (?, ?, ?)');
  for (let i = 1; i <= ROWS_B; i++) insB.run(i, i, i);
  db.prepare('INSERT INTO b VALUES (?, 1, 2)').run(2n ** 62n);
  sources = [];
});

afterEach(() => {
  for (const s of sources) s.close();
  db.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Every row the source gives, as a copy, tagged with its table; and why it read without its thread (close()'s answer). */
function drain(src: PageSource): { rows: unknown[][]; fellBack: string | null } {
  sources.push(src);
  const out: unknown[][] = [];
  for (let p = src.next(); p !== null; p = src.next()) {
    const rows = new PageRows(p, TABLES[p.table].width);
    for (let i = 0; i < p.rows; i++) out.push([p.table, ...rows.row(i, rows.irregular(i)).map(bytes)]);
  }
  return { rows: out, fellBack: src.close() };
}

/** A blob crosses threads as a Uint8Array, and is a Buffer when read here: compared as bytes. */
const bytes = (v: unknown): unknown => (v instanceof Uint8Array ? Uint8Array.from(v) : v);

/** What SQLite holds, read directly. */
function expected(): unknown[][] {
  return TABLES.flatMap((t, ti) => (db.prepare(t.first.replace(/ LIMIT \d+$/, '')).raw().all() as unknown[][]).map((r) => [ti, ...r.map(bytes)]));
}

const file = (): string => path.join(dir, 'state.db');

describe('restore reader', () => {
  it('the thread sends every row once, in order, each value as read', () => {
    const src = new PageSource(db, file(), TABLES);
    const { rows: got, fellBack } = drain(src);
    assert.equal(fellBack, null);
    assert.equal(got.length, ROWS_A + ROWS_B + 1);
    assert.deepEqual(got, expected());
    assert.ok(Object.is(got[8][2], -0), '-0 stays -0');
    assert.deepEqual(got[got.length - 1], [1, 2 ** 62, 1, 2, (2n ** 62n).toString()], 'a serial beyond 2^53 also comes as text');
  });

  it('a thread that does not start: the store reads every row on its own connection', () => {
    const broken = path.join(dir, 'broken.js');
    fs.writeFileSync(broken, 'throw new Error("cannot load");');
    const src = new PageSource(db, file(), TABLES, { script: broken, startMs: 300 });
    const { rows, fellBack } = drain(src);
    assert.deepEqual(rows, expected());
    assert.match(String(fellBack), /sent nothing for 300 ms/);
  });

  it('a thread that fails after its first page: the rest is read from after that page, nothing twice', () => {
    const failing = path.join(dir, 'failing.js');
    const reader = require.resolve('../../src/persist/restore-reader');
    fs.writeFileSync(failing, `
      const { workerData } = require('node:worker_threads');
      const Database = require(${JSON.stringify(require.resolve('better-sqlite3'))});
      const { readPages, POSTED, STARTED } = require(${JSON.stringify(reader)});
      const ctl = new Int32Array(workerData.ctl);
      const db = new Database(workerData.file, { readonly: true });
      Atomics.store(ctl, STARTED, 1);
      const page = readPages(db, workerData.tables, { table: 0, after: null }).next().value;
      for (const r of [{ kind: 'page', page }, { kind: 'error', message: 'disk I/O error' }]) {
        workerData.port.postMessage(r);
        Atomics.add(ctl, POSTED, 1);
        Atomics.notify(ctl, POSTED);
      }`);
    const src = new PageSource(db, file(), TABLES, { script: failing });
    const { rows, fellBack } = drain(src);
    assert.deepEqual(rows, expected());
    assert.equal(fellBack, 'the restore thread failed: disk I/O error');
  });
});
