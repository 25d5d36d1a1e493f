/**
 * WAL checkpoints from their own thread (src/persist/checkpointer.ts): with
 * the writer's automatic checkpoint off, the thread keeps the WAL small;
 * detach() returns with the thread's connection closed (the writer's close
 * then removes the WAL, which it does only as the last connection); a thread
 * that cannot work reports it, so the store checkpoints itself again.
 */
import { afterEach, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { Checkpointer } from '../../src/persist/checkpointer';

const INTERVAL_MS = 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('checkpointer', () => {
  let dir: string;
  let file: string;
  let db: Database.Database;
  const open: Checkpointer[] = [];

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmq-ckpt-'));
    file = path.join(dir, 'state.db');
    db = new Database(file);
    db.pragma('journal_mode = WAL');
    db.pragma('wal_autocheckpoint = 0');
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)');
  });

  afterEach(() => {
    for (const c of open.splice(0)) c.close();
    if (db.open) db.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const checkpointer = (onFailure: (reason: string) => void = (r) => assert.fail(r), script?: string): Checkpointer => {
    const c = new Checkpointer(onFailure, INTERVAL_MS, script);
    open.push(c);
    return c;
  };

  /** `n` commits of one 2 KiB row each, a little apart, so the thread gets its turns; the WAL's largest size seen. */
  async function commits(n: number): Promise<number> {
    const ins = db.prepare('INSERT INTO t (v) VALUES (?)');
    const row = Buffer.alloc(2048, 7);
    let largest = 0;
    for (let i = 0; i < n; i++) {
      ins.run(row);
      if (i % 50 === 49) {
        largest = Math.max(largest, fs.statSync(`${file}-wal`).size);
        await sleep(INTERVAL_MS);
      }
    }
    return largest;
  }

  it('keeps the WAL small while the writer never checkpoints', async () => {
    const c = checkpointer();
    assert.equal(c.attach(file), true);
    const largest = await commits(4000);
    // Without checkpoints the WAL holds every commit: about 50 MB for these 4000. With them, a few MB at its largest.
    assert.ok(largest < 8 * 1024 * 1024, `WAL grew to ${largest} bytes`);
    assert.equal((db.prepare('SELECT count(*) AS n FROM t').get() as { n: number }).n, 4000);
  });

  it('detach() returns with the thread\'s connection closed', async () => {
    const c = checkpointer();
    c.attach(file);
    await commits(100);
    c.detach();
    db.close();
    assert.equal(fs.existsSync(`${file}-wal`), false, 'the writer closed as the last connection and removed the WAL');
    c.attach(file); // a later attach starts over (the file exists again after a reopen)
  });

  it('a file that does not exist is reported, and never created', async () => {
    const reasons: string[] = [];
    const c = checkpointer((r) => reasons.push(r));
    const missing = path.join(dir, 'missing.db');
    assert.equal(c.attach(missing), true);
    for (let i = 0; i < 100 && reasons.length === 0; i++) await sleep(20);
    assert.equal(reasons.length, 1);
    assert.match(reasons[0], /unable to open|does not exist|no such file/i);
    assert.equal(fs.existsSync(missing), false);
  });

  it('a thread that fails to start is reported', async () => {
    const reasons: string[] = [];
    const bad = path.join(dir, 'bad-worker.js');
    fs.writeFileSync(bad, 'throw new Error("cannot start");\n');
    const c = checkpointer((r) => reasons.push(r), bad);
    c.attach(file);
    for (let i = 0; i < 100 && reasons.length === 0; i++) await sleep(20);
    assert.equal(reasons.length, 1);
    assert.match(reasons[0], /cannot start/);
  });
});
