/**
 * The control socket's connections, on a thread of their own
 * (control-io-worker.ts). Accepting a connection, reading a request and
 * writing rows are system calls and allocations per client; on the packet
 * thread a burst of 300 connections held the event loop for 10 ms in one
 * callback (libuv accepts until the backlog is empty), and 1000 for 26 ms.
 * Here they cost the packet thread nothing: it gets each turn's requests,
 * closes and buffer counts as one message, and sends its writes as one
 * message (control.ts).
 *
 * This side owns what needs no table: the connection cap (the next client
 * gets a clear error, the refusal is reported), the time a client has to
 * send its request, the size of a request and the split into lines, and
 * `conns watch`: the watchers and their share of each round of table events
 * (watch-fanout.ts).
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import type { MessagePort } from 'node:worker_threads';
import { MAX_REQUEST_BYTES } from '../query/protocol';
import { WatchFanOut } from './watch-fanout';

/** Open control connections at most (watchers included): far below the daemon's file descriptors. */
export const MAX_CONNECTIONS = 1024;
/** A connection must send its request within this time. */
export const REQUEST_TIMEOUT_MS = 10_000;

/** Events in one report at most. */
const REPORT_EVENTS = 256;

/** What the packet thread tells the connections' thread, several per message. */
export type IoOp =
  | { op: 'listen'; seq: number; path: string; group: number | null; maxConnections: number; requestTimeoutMs: number }
  | { op: 'close'; seq: number }
  | { op: 'write'; id: number; data: string | Uint8Array }
  | { op: 'end'; id: number; data: string | null }
  /** A round of event lines for the watchers. */
  | { op: 'round'; lines: string[] }
  /** Every watcher missed `n` events. */
  | { op: 'lost'; n: number }
  /** The packet thread observes for the watchers up to number `seq` (a 'watchers' event's). */
  | { op: 'armed'; seq: number };

/** What the connections' thread tells the packet thread: a turn's events, in order, with the counts after them. */
export type IoEvent =
  | { ev: 'request'; id: number; line: string }
  | { ev: 'close'; id: number }
  /** Connections watching now (`conns watch`, answered on this thread), the last one's number. */
  | { ev: 'watchers'; count: number; seq: number }
  /**
   * The connection's socket holds `buffered` bytes the kernel has not taken,
   * after the writes of `received` units (units()) in all.
   */
  | { ev: 'buffered'; id: number; buffered: number; received: number }
  | { ev: 'refused'; open: number; limit: number; refused: number }
  /** The listen or close with this seq finished (error: it failed). */
  | { ev: 'done'; seq: number; error: string | null };

export interface IoReport {
  events: IoEvent[];
  connections: number;
  refused: number;
}

/** How much of a connection's output buffer `data` takes, counted the same way on both threads. */
export function units(data: string | Uint8Array): number {
  return typeof data === 'string' ? data.length : data.byteLength;
}

/** Access is the socket's mode (0660) and group: root and the control group. */
function restrict(socketPath: string, groupId: number | null): void {
  fs.chmodSync(socketPath, 0o660);
  if (groupId !== null) fs.chownSync(socketPath, 0, groupId);
}

/** Serves the control socket's connections for the packet thread at the other end of `port`. */
export function serveControlIo(port: MessagePort): void {
  const conns = new Map<number, net.Socket>();
  /** Units written to each connection so far. */
  const received = new Map<number, number>();
  /** Connections whose buffer changed this turn: one 'buffered' event each. */
  const touched = new Set<number>();
  let nextId = 1;
  let refused = 0;
  let maxConnections = MAX_CONNECTIONS;
  let requestTimeoutMs = REQUEST_TIMEOUT_MS;
  let current: { server: net.Server; path: string } | null = null;
  let events: IoEvent[] = [];
  let scheduled = false;
  const schedule = (): void => {
    if (scheduled) return;
    scheduled = true;
    setImmediate(() => { scheduled = false; flush(); });
  };
  const report = (e: IoEvent): void => {
    schedule();
    events.push(e);
  };
  const touch = (id: number): void => {
    schedule();
    touched.add(id);
  };
  // At most REPORT_EVENTS a message: the packet thread takes each message in one callback.
  const flush = (): void => {
    if (watchSeq !== toldSeq || watching !== told) events.push({ ev: 'watchers', count: told = watching, seq: toldSeq = watchSeq });
    for (const id of touched) {
      const conn = conns.get(id);
      if (conn !== undefined) events.push({ ev: 'buffered', id, buffered: conn.writableLength, received: received.get(id) ?? 0 });
    }
    touched.clear();
    let batch = events;
    if (events.length > REPORT_EVENTS) {
      batch = events.splice(0, REPORT_EVENTS);
      schedule();
    } else {
      events = [];
    }
    port.postMessage({ events: batch, connections: conns.size, refused } satisfies IoReport);
  };

  // The number of watchers goes with the turn's report, once.
  let watching = 0;
  let watchSeq = 0;
  let told = 0;
  let toldSeq = 0;
  const watchers = new WatchFanOut((count, seq) => { watching = count; watchSeq = seq; schedule(); });

  const onConnection = (conn: net.Socket): void => {
    conn.on('error', () => conn.destroy());
    if (conns.size >= maxConnections) {
      refused++;
      conn.end(JSON.stringify({ ok: false, error: `too many control connections (${maxConnections} open); try again later` }) + '\n');
      // Read (and drop) until the client closes its side, or the socket would stay half open; a client that does not is dropped.
      conn.resume();
      setTimeout(() => conn.destroy(), 1000).unref();
      report({ ev: 'refused', open: conns.size, limit: maxConnections, refused });
      return;
    }
    const id = nextId++;
    conns.set(id, conn);
    let pending = '';
    let requests = 0;
    const idle = setTimeout(() => conn.end(JSON.stringify({ ok: false, error: `no request within ${requestTimeoutMs} ms` }) + '\n'), requestTimeoutMs);
    idle.unref();
    conn.once('close', () => {
      clearTimeout(idle);
      conns.delete(id);
      received.delete(id);
      report({ ev: 'close', id });
    });
    conn.setEncoding('utf8');
    conn.on('data', (chunk: string) => {
      pending += chunk;
      if (pending.length > MAX_REQUEST_BYTES) {
        pending = '';
        conn.end(JSON.stringify({ ok: false, error: `request too large (more than ${MAX_REQUEST_BYTES} bytes)` }) + '\n');
        return;
      }
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        if (requests++ === 0) clearTimeout(idle);
        // `conns watch` needs no table: it is answered here, and the packet thread only learns how many watch.
        if (!watchers.request(conn, line)) report({ ev: 'request', id, line });
      }
    });
  };

  const listen = async (at: string, group: number | null): Promise<void> => {
    fs.mkdirSync(path.dirname(at), { recursive: true, mode: 0o755 });
    try { fs.unlinkSync(at); } catch { /* not there */ }
    const server = net.createServer(onConnection);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(at, () => { server.off('error', reject); resolve(); });
    });
    try {
      restrict(at, group);
    } catch (e) {
      stopListening(server, at);
      throw e;
    }
    // The new socket is bound before the old one is removed: a client always finds one. Open connections stay.
    if (current !== null && current.path !== at) stopListening(current.server, current.path);
    current = { server, path: at };
  };
  const stopListening = (server: net.Server, at: string): void => {
    server.close();
    try { fs.unlinkSync(at); } catch { /* gone */ }
  };
  const close = (): Promise<void> => new Promise<void>((resolve) => {
    if (current === null) { resolve(); return; }
    current.server.close(() => resolve());
    for (const conn of conns.values()) conn.destroy(); // watchers never end on their own
    try { fs.unlinkSync(current.path); } catch { /* gone */ }
    current = null;
  });

  const apply = (o: IoOp): void => {
    switch (o.op) {
      case 'write': {
        const conn = conns.get(o.id);
        if (conn === undefined) return; // closed meanwhile: its 'close' is on its way
        received.set(o.id, (received.get(o.id) ?? 0) + units(o.data));
        touch(o.id);
        if (!conn.destroyed) conn.write(o.data, () => touch(o.id));
        return;
      }
      case 'end':
        if (o.data === null) conns.get(o.id)?.end();
        else conns.get(o.id)?.end(o.data);
        return;
      case 'round':
        watchers.round(o.lines);
        return;
      case 'lost':
        watchers.lost(o.n);
        return;
      case 'armed':
        watchers.armed(o.seq);
        return;
      case 'listen': {
        maxConnections = o.maxConnections;
        requestTimeoutMs = o.requestTimeoutMs;
        // The same path only changes the group.
        const done = (async () => (current?.path === o.path ? restrict(o.path, o.group) : listen(o.path, o.group)))();
        done.then(() => report({ ev: 'done', seq: o.seq, error: null }), (e: Error) => report({ ev: 'done', seq: o.seq, error: e.message }));
        return;
      }
      case 'close':
        void close().then(() => report({ ev: 'done', seq: o.seq, error: null }));
    }
  };
  port.on('message', (ops: IoOp[]) => { for (const o of ops) apply(o); });
}
