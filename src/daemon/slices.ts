/**
 * Control-socket work in slices of the event loop. The TUN's packet batches
 * run on the same loop, so a listing of a full table, a deletion by filter,
 * a sort or the fan-out of table events to watchers runs at most SLICE_MS
 * at a time and then pauses for a timer tick: the loop polls the TUN, and
 * the process leaves the CPU for a moment. Work that kept the process busy
 * would also make the kernel's scheduler treat it as a CPU hog, and on a
 * loaded machine a packet would then wait for its turn behind other tasks;
 * at a third of the CPU at most, the daemon still wakes up promptly for
 * packets. Not on the packet path.
 */
import { performance } from 'node:perf_hooks';

/** Longest stretch control work (all of it, whatever the number of clients) holds the event loop in one turn. */
export const SLICE_MS = 0.5;

// One budget for all control work of a turn: several listings and the
// watchers' fan-out share it instead of taking SLICE_MS each, and work that
// pulls from other sliced work does not count the other's pause as its own.
let until = 0;
let open = false;

function close(): void {
  open = false;
}

/** Starts the turn's budget if none is running (a turn ends with the loop's check phase). */
function budget(): number {
  if (!open) {
    open = true;
    until = performance.now() + SLICE_MS;
    setImmediate(close);
  }
  return until;
}

/** True once the control work of this turn used its budget: it should `pause()`. */
export function spent(): boolean {
  return performance.now() >= budget();
}

/** Resolves after the loop polled I/O (the TUN) and `ms` (one timer tick by default) passed; the next turn's budget starts then. */
export async function pause(ms = 1): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
  if (performance.now() >= until) open = false;
}

/** Pauses if this turn's budget is spent. */
export async function yieldIfSpent(): Promise<void> {
  if (spent()) await pause();
}

/** The items of `items`, pulled at most one slice at a time. */
export async function* sliced<T>(items: Iterable<T>): AsyncGenerator<T> {
  for (const item of items) {
    yield item;
    await yieldIfSpent();
  }
}

/** Items sorted by `compare` (stable), as a merge sort whose runs and merges fit in slices. */
export async function slicedSort<T>(items: T[], compare: (a: T, b: T) => number): Promise<T[]> {
  const RUN = 256;
  const n = items.length;
  let src = items.slice();
  for (let i = 0; i < n; i += RUN) {
    const run = src.slice(i, i + RUN).sort(compare);
    for (let k = 0; k < run.length; k++) src[i + k] = run[k];
    await yieldIfSpent();
  }
  let dst: T[] = new Array<T>(n);
  for (let width = RUN; width < n; width *= 2) {
    for (let lo = 0; lo < n; lo += 2 * width) {
      const mid = Math.min(lo + width, n);
      const hi = Math.min(lo + 2 * width, n);
      let a = lo;
      let b = mid;
      for (let k = lo; k < hi; k++) {
        dst[k] = a < mid && (b >= hi || compare(src[a], src[b]) <= 0) ? src[a++] : src[b++];
        if ((k & 255) === 255) await yieldIfSpent();
      }
    }
    [src, dst] = [dst, src];
  }
  return src;
}
