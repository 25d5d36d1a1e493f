/**
 * The control socket's connections thread (control-io.ts), started by
 * control.ts. It runs CONTROL_NICE steps below the packet thread: on a busy
 * box the clients get the CPU the packet thread leaves, and a packet that
 * wakes the packet thread preempts them. (On Linux, setpriority() of a
 * thread id sets that thread's nice alone: sched(7), "the nice value is a
 * per-thread attribute".)
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { parentPort } from 'node:worker_threads';
import { serveControlIo } from './control-io';

/** How much nicer this thread is than the packet thread. */
export const CONTROL_NICE = 10;

if (parentPort === null) throw new Error('control-io-worker runs as a worker thread');
// /proc/thread-self links to <pid>/task/<tid>.
const tid = Number(fs.readlinkSync('/proc/thread-self').split('/').pop());
try {
  os.setPriority(tid, Math.min(19, os.getPriority(tid) + CONTROL_NICE));
} catch {
  // Raising one's own nice is always allowed; should it fail, the thread serves at the packet thread's priority.
}
serveControlIo(parentPort);
