/**
 * The restore reader's thread (restore-reader.ts): opens the state database
 * read-only and posts its rows page by page, the Float64Array of each page
 * moved, not copied. `workerData`: {file, tables, ctl, port}. It counts the
 * pages it posted in ctl[POSTED], sets ctl[STARTED] once the file is open,
 * and waits while it is PAGES_AHEAD pages ahead of ctl[TAKEN].
 */
import { MessagePort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { PAGES_AHEAD, POSTED, ReadTable, readPages, STARTED, TAKEN, WorkerReport } from './restore-reader';

const { file, tables, ctl: shared, port } = workerData as { file: string; tables: ReadTable[]; ctl: SharedArrayBuffer; port: MessagePort };
const ctl = new Int32Array(shared);

function post(r: WorkerReport): void {
  port.postMessage(r, r.kind === 'page' ? [r.page.values.buffer as ArrayBuffer] : []);
  Atomics.add(ctl, POSTED, 1);
  Atomics.notify(ctl, POSTED);
}

let db: Database.Database | null = null;
try {
  db = new Database(file, { readonly: true, fileMustExist: true });
  Atomics.store(ctl, STARTED, 1);
  // One read transaction: every page comes from the same snapshot.
  db.exec('BEGIN');
  for (const page of readPages(db, tables, { table: 0, after: null })) {
    for (let taken = Atomics.load(ctl, TAKEN); Atomics.load(ctl, POSTED) - taken >= PAGES_AHEAD; taken = Atomics.load(ctl, TAKEN)) {
      Atomics.wait(ctl, TAKEN, taken, 1000);
    }
    post({ kind: 'page', page });
  }
  post({ kind: 'end' });
} catch (e) {
  post({ kind: 'error', message: e instanceof Error ? e.message : String(e) });
} finally {
  db?.close();
  port.close();
}
