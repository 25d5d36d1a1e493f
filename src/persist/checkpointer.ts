/**
 * WAL checkpoints off the packet thread. SQLite's automatic checkpoint runs
 * inside the commit that crosses 1000 WAL pages, on the thread that commits:
 * the packet thread, whose write-ahead commit precedes a new mapping's first
 * packet. That checkpoint writes the pages back and syncs the file, and held
 * forwarding for 4 to 28 ms once every 1000 pages of WAL. The store turns
 * it off on its connection while a worker thread (checkpoint-worker.ts), on
 * a connection of its own, checkpoints every CHECKPOINT_INTERVAL_MS. When
 * the thread cannot do that, the store gets its automatic checkpoint back:
 * the WAL never grows without bound.
 */
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';
import type { CheckpointReport, CheckpointRequest } from './checkpoint-worker';

export const CHECKPOINT_INTERVAL_MS = 1000;
/** How long detach() waits for the thread to close its connection (a checkpoint under way finishes first). */
const DETACH_WAIT_MS = 2000;

export class Checkpointer {
  private worker: Worker | null = null;
  private attached = false;
  private readonly done = new Int32Array(new SharedArrayBuffer(4));
  private seq = 0;

  /**
   * `onFailure(reason)`: the thread stopped checkpointing (it could not
   * start, open the file or checkpoint); the caller checkpoints itself again
   * until the next attach().
   */
  constructor(private readonly onFailure: (reason: string) => void, private readonly intervalMs = CHECKPOINT_INTERVAL_MS,
    private readonly script = path.join(__dirname, 'checkpoint-worker.js')) {}

  /** The thread is checkpointing a file. */
  get running(): boolean { return this.worker !== null && this.attached; }

  /** Checkpoints `file` from the thread from now on; false when the thread could not start. */
  attach(file: string): boolean {
    if (this.worker === null) {
      let w: Worker;
      try {
        w = new Worker(this.script, { workerData: { done: this.done.buffer } });
      } catch (e) {
        this.onFailure((e as Error).message);
        return false;
      }
      w.unref();
      w.on('message', (m: CheckpointReport) => this.fail(w, m.message));
      w.on('error', (e) => this.fail(w, e.message));
      w.on('exit', (code) => this.fail(w, `the checkpoint thread exited with ${code}`));
      this.worker = w;
    }
    this.worker.postMessage({ kind: 'attach', path: file, intervalMs: this.intervalMs } satisfies CheckpointRequest);
    this.attached = true;
    return true;
  }

  /** Stops touching the file: returns once the thread's connection is closed, so the caller may close, move or delete it. */
  detach(): void {
    const w = this.worker;
    if (w === null || !this.attached) return;
    this.attached = false;
    const seq = ++this.seq;
    w.postMessage({ kind: 'detach', seq } satisfies CheckpointRequest);
    const until = performance.now() + DETACH_WAIT_MS;
    for (let v = Atomics.load(this.done, 0); v !== seq; v = Atomics.load(this.done, 0)) {
      const left = until - performance.now();
      if (left <= 0) {
        this.stop();
        this.onFailure(`the checkpoint thread did not close its connection within ${DETACH_WAIT_MS} ms`);
        return;
      }
      Atomics.wait(this.done, 0, v, left);
    }
  }

  /** Detaches and ends the thread. */
  close(): void {
    this.detach();
    this.stop();
  }

  private fail(w: Worker, reason: string): void {
    if (w !== this.worker) return; // a thread already replaced or stopped
    const wasAttached = this.attached;
    this.stop();
    if (wasAttached) this.onFailure(reason);
  }

  private stop(): void {
    const w = this.worker;
    this.worker = null;
    this.attached = false;
    void w?.terminate();
  }
}
