/**
 * The checkpointer's thread (checkpointer.ts): its own connection to the
 * state database copies committed WAL frames into the file, PASSIVE, every
 * `intervalMs`. A PASSIVE checkpoint never waits for the writer and never
 * blocks it (sqlite.org/c3ref/wal_checkpoint_v2.html), so the packet
 * thread's commits stay short; the writer restarts the WAL from its start
 * once a checkpoint has copied all of it (sqlite.org/wal.html §"Avoiding
 * Excessively Large WAL Files").
 *
 * Messages: {kind: 'attach', path, intervalMs}; {kind: 'detach', seq}, after
 * which `workerData.done[0]` holds seq (the main thread waits on it). It
 * posts {kind: 'error', message} when it cannot open or checkpoint.
 */
import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';

export type CheckpointRequest =
  | { kind: 'attach'; path: string; intervalMs: number }
  | { kind: 'detach'; seq: number };

export type CheckpointReport = { kind: 'error'; message: string };

const port = parentPort;
if (port === null) throw new Error('checkpoint-worker runs as a worker thread');
const done = new Int32Array(workerData.done as SharedArrayBuffer);
let db: Database.Database | null = null;
let timer: NodeJS.Timeout | null = null;

function report(e: unknown): void {
  port?.postMessage({ kind: 'error', message: e instanceof Error ? e.message : String(e) } satisfies CheckpointReport);
}

function detach(): void {
  if (timer !== null) clearInterval(timer);
  timer = null;
  try {
    db?.close();
  } catch {
    // the file was deleted under us: the handle is gone either way
  }
  db = null;
}

port.on('message', (m: CheckpointRequest) => {
  if (m.kind === 'attach') {
    detach();
    try {
      // Never creates the file: the store decides which file exists.
      db = new Database(m.path, { fileMustExist: true, timeout: 0 });
    } catch (e) {
      report(e);
      return;
    }
    const conn = db;
    timer = setInterval(() => {
      try {
        conn.pragma('wal_checkpoint(PASSIVE)');
      } catch (e) {
        report(e);
      }
    }, m.intervalMs);
  } else {
    detach();
    Atomics.store(done, 0, m.seq);
    Atomics.notify(done, 0);
  }
});
