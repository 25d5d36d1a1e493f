/**
 * `vpnmasq conns watch`, the connections' side (control-io.ts): the watch
 * request is answered here, and each round of event lines the packet thread
 * built once (watchers.ts) goes to every watcher whose filter it passes, one
 * write per watcher and round. The packet thread learns only how many
 * watch: the watchers cost it nothing. A watcher's `watching` line waits
 * until the packet thread has counted it and observes the table for it, so
 * every event after that line reaches it.
 *
 * A watcher may hold WATCH_BUFFER_BYTES of lines its socket has not taken.
 * One that falls further behind stops getting events; once it takes its
 * buffer, or after BEHIND_GRACE_MS, it gets one `events lost: N` line and is
 * disconnected, as conntrack -E stops at ENOBUFS: from then on its picture
 * of the table would be wrong. The line waits behind what the socket holds;
 * the connection closes once the client read it, or after CUT_LINGER_MS. So
 * a client that never reads costs its buffers for a while, and no work.
 */
import type * as net from 'node:net';
import { AnyConnRow, compileFilter, ConnFilter, isEmptyFilter, Pred } from '../query/filters';

const encoder = new TextEncoder();

/** Lines a watcher may have waiting for its socket. */
export const WATCH_BUFFER_BYTES = 64 * 1024;
/** How long a watcher that fell behind has to take its buffer before it is cut off anyway. */
export const BEHIND_GRACE_MS = 1000;
/**
 * How long a watcher that was cut off may take to read what it was sent and
 * its `events lost` line before its connection is closed anyway: it holds
 * its buffers and one of the control connections meanwhile, and gets nothing more.
 */
export const CUT_LINGER_MS = 60_000;

interface Watcher {
  conn: net.Socket;
  /** Its number; it gets events (and its `watching` line) once the packet thread has counted it. */
  seq: number;
  armed: boolean;
  match: Pred;
  /** Rows whose slot was reused carry only their id: they pass only an empty filter. */
  idOnly: boolean;
  /** Events missed since it fell behind; 0 while it keeps up. */
  lost: number;
  cut: boolean;
}

export class WatchFanOut {
  private readonly watchers = new Set<Watcher>();
  /** The last watcher's number. */
  private seq = 0;
  /** Watchers with a filter: only then is a line parsed back into its row. */
  private filtered = 0;

  /** `changed(count, seq)`: the number of watchers changed; `seq` is the last watcher's number. */
  constructor(private readonly changed: (count: number, seq: number) => void) {}

  /**
   * The packet thread observes the table's events for the watchers up to
   * number `seq`: they are told so (`watching`), and every event after that
   * line reaches them.
   */
  armed(seq: number): void {
    for (const w of this.watchers) {
      if (w.armed || w.seq > seq) continue;
      w.armed = true;
      w.conn.write(JSON.stringify({ watching: true }) + '\n');
    }
  }

  /**
   * Answers `line` if it is a `watch` request (true): `conn` gets the events
   * that pass its filter until it closes or is cut off; a bad filter gets
   * the error line. False: it is some other request.
   */
  request(conn: net.Socket, line: string): boolean {
    let req: { cmd?: unknown; filter?: ConnFilter };
    try {
      req = JSON.parse(line) as typeof req;
    } catch {
      return false; // the packet thread's parse reports it
    }
    if (typeof req !== 'object' || req === null || req.cmd !== 'watch') return false;
    let match: Pred;
    try {
      match = compileFilter(req.filter);
    } catch (e) {
      conn.write(JSON.stringify({ ok: false, error: (e as Error).message }) + '\n');
      return true;
    }
    const idOnly = isEmptyFilter(req.filter);
    const w: Watcher = { conn, seq: ++this.seq, armed: false, match, idOnly, lost: 0, cut: false };
    this.watchers.add(w);
    if (!idOnly) this.filtered++;
    this.changed(this.watchers.size, this.seq);
    conn.once('close', () => this.drop(w));
    // The client never sends more than its one request; its end of the stream means it is gone.
    conn.once('end', () => conn.destroy());
    return true;
  }

  /**
   * A round of event lines (each `{"event":...,"conn":row}`), in order: each
   * watcher's share goes out in one write; the watchers that take every
   * line share one encoded buffer.
   */
  round(lines: readonly string[]): void {
    const rows = this.filtered > 0 ? lines.map((l) => (JSON.parse(l) as { conn: AnyConnRow | { id: number } }).conn) : null;
    let shared: Uint8Array | undefined;
    for (const w of this.watchers) {
      if (!w.armed) continue;
      if (w.lost > 0) {
        w.lost += lines.length;
        continue;
      }
      let mine: string[] | null = null;
      let bytes = 0;
      for (let i = 0; i < lines.length; i++) {
        if (rows !== null) {
          const row = rows[i];
          if ('proto' in row ? !w.match(row) : !w.idOnly) continue;
        }
        (mine ??= []).push(lines[i]);
        bytes += lines[i].length;
      }
      if (mine === null) continue;
      if (w.conn.writableLength + bytes > WATCH_BUFFER_BYTES) {
        this.behind(w, mine.length);
        continue;
      }
      if (mine.length === lines.length) w.conn.write(shared ??= encoder.encode(lines.join('')));
      else w.conn.write(mine.join(''));
    }
  }

  /** Events the packet thread could not deliver: every watcher missed them. */
  lost(n: number): void {
    for (const w of this.watchers) if (w.armed) this.behind(w, n);
  }

  /** `w` missed `n` events: it gets no more, and is cut off once it took its buffer or after the grace time. */
  private behind(w: Watcher, n: number): void {
    const first = w.lost === 0;
    w.lost += n;
    if (!first || w.cut) return;
    if (w.conn.writableLength === 0) {
      this.cut(w);
      return;
    }
    const timer = setTimeout(() => this.cut(w), BEHIND_GRACE_MS);
    timer.unref();
    w.conn.once('drain', () => { clearTimeout(timer); this.cut(w); });
    w.conn.once('close', () => clearTimeout(timer));
  }

  /** One `events lost: N` line (conntrack -E's ENOBUFS), then the connection ends; a client that does not read is dropped. */
  private cut(w: Watcher): void {
    if (w.cut) return;
    w.cut = true;
    const lost = w.lost;
    w.conn.end(JSON.stringify({
      event: 'LOST', time: new Date().toISOString(), lost,
      error: `events lost: ${lost} (the watcher fell behind; watch again for a consistent picture)`,
    }) + '\n');
    // It is no watcher any more; its connection stays until it has read the line (or CUT_LINGER_MS).
    this.drop(w);
    setTimeout(() => w.conn.destroy(), CUT_LINGER_MS).unref();
  }

  private drop(w: Watcher): void {
    if (!this.watchers.delete(w)) return;
    if (!w.idOnly) this.filtered--;
    this.changed(this.watchers.size, this.seq);
  }
}
