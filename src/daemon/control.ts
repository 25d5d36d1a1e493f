/**
 * The control socket under /run/vpnmasq: the server side of the protocol in
 * src/query/protocol.ts. Access is limited by the socket's mode (0660) and
 * group.
 *
 * No client can hold the daemon up. The connections live on a thread of
 * their own (control-io.ts): at most MAX_CONNECTIONS are open, a connection
 * that sends no request within REQUEST_TIMEOUT_MS is closed, and accepting,
 * reading and writing cost the packet thread nothing. Here, on the packet
 * thread, the requests of one connection run one after another, the
 * thread's reports are worked through in slices of the event loop
 * (slices.ts), and rows are written in slices too, waiting for a client that
 * reads slowly.
 */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { MessageChannel, MessagePort, Worker } from 'node:worker_threads';
import { ControlRequest } from '../query/protocol';
import { IoEvent, IoOp, IoReport, MAX_CONNECTIONS, REQUEST_TIMEOUT_MS, serveControlIo, units } from './control-io';
import { pause, spent, yieldIfSpent } from './slices';

/** Bytes of listing rows written at a time. */
const CHUNK_BYTES = 16 * 1024;
/** Requests one connection may have waiting behind the one running. */
const MAX_QUEUED = 16;
/** A connection's write() returns false beyond this much unflushed output (a socket's default high-water mark). */
const HIGH_WATER = 16 * 1024;
/** How long the connections' thread may take to start listening before the socket is served on this thread instead. */
const START_TIMEOUT_MS = 5000;

/** Where refusals are reported (the daemon's logger: rate-limited events). */
export interface ControlLog {
  event(kind: string, msg: string, fields?: Record<string, unknown>): void;
}

export interface ControlServerOptions {
  log?: ControlLog;
  /** Default MAX_CONNECTIONS. */
  maxConnections?: number;
  /** Default REQUEST_TIMEOUT_MS. */
  requestTimeoutMs?: number;
  /** Gets the number of `conns watch` clients (answered on the connections' thread) and builds their rounds. */
  watch?: WatchFeed;
  /** The connections' thread script (tests: one that fails); default control-io-worker.js. */
  script?: string;
}

export type { ControlRequest };

/** The connections' thread as the watchers' hub (watchers.ts) uses it: rounds of lines for every watcher. */
export interface WatchLink {
  round(lines: string[]): void;
  lost(n: number): void;
}

/** Who builds the watchers' rounds (watchers.ts): told how many watch now, and where their rounds go. */
export interface WatchFeed {
  watching(count: number, link: WatchLink): void;
}

/**
 * One control connection as the packet thread sees it: a socket on the
 * connections' thread. `writableLength` is what that socket holds and the
 * kernel has not taken, so a client that does not read shows here as on the
 * socket itself; what is on its way to the other thread counts only towards
 * write()'s answer.
 */
class ControlConn extends EventEmitter {
  /** Bytes the socket holds that the client has not taken (as last reported by the connections' thread). */
  writableLength = 0;
  /** Closed. */
  destroyed = false;
  /** Units written here, and units the other thread has taken of them. */
  private sent = 0;
  private received = 0;
  private needDrain = false;
  private ended = false;

  constructor(readonly id: number, private readonly send: (op: IoOp) => void) {
    super();
  }

  /** Queues `data`; false once HIGH_WATER is unflushed ('drain' follows when all of it is flushed). */
  write(data: string | Uint8Array): boolean {
    if (this.destroyed || this.ended) return false;
    this.sent += units(data);
    this.send({ op: 'write', id: this.id, data });
    if (this.writableLength + this.sent - this.received < HIGH_WATER) return true;
    this.needDrain = true;
    return false;
  }

  /** Writes `data`, then ends the connection once the client has taken everything. */
  end(data?: string): void {
    if (this.destroyed || this.ended) return;
    this.ended = true;
    this.send({ op: 'end', id: this.id, data: data ?? null });
  }

  /** @internal The other thread took `received` units in all; its socket holds `buffered` bytes. */
  buffered(buffered: number, received: number): void {
    this.writableLength = buffered;
    this.received = received;
    if (this.needDrain && buffered === 0 && received === this.sent) {
      this.needDrain = false;
      this.emit('drain');
    }
  }

  /** @internal The connection is gone: 'close', once. */
  closed(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    process.nextTick(() => this.emit('close'));
  }
}

export interface ControlReply {
  /** Rows streamed before the final line (for listings). */
  rows?: Iterable<unknown> | AsyncIterable<unknown>;
  /** The final line. */
  result: Record<string, unknown>;
}

export type ControlHandler = (req: ControlRequest) => ControlReply | Promise<ControlReply>;

export interface ControlServer {
  /** Connections open now. */
  readonly connections: number;
  /** Connections refused since start (too many open). */
  readonly refused: number;
  /** The path the daemon listens on. */
  readonly path: string;
  /** The connections are served by a thread of their own (false: it could not start or it stopped; they are served here). */
  readonly thread: boolean;
  /**
   * Listens on `socketPath` (owned by `groupId`) instead: the new socket is
   * bound before the old one is removed, so a client always finds one, and
   * open connections (watchers) stay until they end. The same path only
   * changes the group.
   */
  move(socketPath: string, groupId: number | null): Promise<void>;
  close(): Promise<void>;
}

/** Numeric id of a group from /etc/group, or null when there is no such group. */
export function lookupGroup(name: string, groupFile = '/etc/group'): number | null {
  let text: string;
  try { text = fs.readFileSync(groupFile, 'utf8'); } catch { return null; }
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f[0] === name && /^\d+$/.test(f[2] ?? '')) return Number(f[2]);
  }
  return null;
}

interface Conversation {
  conn: ControlConn;
  queue: Promise<void>;
  queued: number;
}

export async function startControlServer(socketPath: string, groupId: number | null, handler: ControlHandler,
  opts: ControlServerOptions = {}): Promise<ControlServer> {
  const maxConnections = opts.maxConnections ?? MAX_CONNECTIONS;
  const requestTimeoutMs = opts.requestTimeoutMs ?? REQUEST_TIMEOUT_MS;
  const conversations = new Map<number, Conversation>();
  const waiting = new Map<number, (error: string | null) => void>();
  let seq = 0;
  let connections = 0;
  let refused = 0;
  let at = { path: socketPath, group: groupId };
  /** Served by the thread; started (listening); why the thread is not used; close() under way. */
  let thread = false;
  let started = false;
  let why = '';
  let closing = false;

  // Writes of a turn go to the other thread as one message.
  let outbox: IoOp[] = [];
  let port: MessagePort | Worker | null = null;
  const flushOut = (): void => {
    const ops = outbox;
    outbox = [];
    port?.postMessage(ops);
  };
  const send = (op: IoOp): void => {
    if (outbox.length === 0) setImmediate(flushOut);
    outbox.push(op);
  };
  const link: WatchLink = { round: (lines) => send({ op: 'round', lines }), lost: (n) => send({ op: 'lost', n }) };

  // The other thread's reports, worked through in order, in slices; the queue starts again at 0 whenever it is caught up.
  const inbox: IoEvent[] = [];
  let next = 0;
  let pumping = false;
  const pump = async (): Promise<void> => {
    pumping = true;
    while (next < inbox.length) {
      const e = inbox[next++];
      if (next === inbox.length) next = inbox.length = 0;
      receive(e);
      // A request's first steps (parse, handler) run in the promise jobs after it: one request a turn, the loop polls in between.
      if (e.ev === 'request') await new Promise((resolve) => setImmediate(resolve));
      else if (spent()) await pause();
    }
    pumping = false;
  };
  const onReport = (r: IoReport): void => {
    connections = r.connections;
    refused = r.refused;
    for (const e of r.events) inbox.push(e);
    if (!pumping) void pump();
  };
  const conversation = (id: number): Conversation => {
    let c = conversations.get(id);
    if (c === undefined) {
      c = { conn: new ControlConn(id, send), queue: Promise.resolve(), queued: 0 };
      conversations.set(id, c);
    }
    return c;
  };
  const receive = (e: IoEvent): void => {
    switch (e.ev) {
      case 'request': {
        const c = conversation(e.id);
        if (c.conn.destroyed) return;
        if (c.queued >= MAX_QUEUED) {
          c.conn.end(JSON.stringify({ ok: false, error: `more than ${MAX_QUEUED} requests waiting on one connection` }) + '\n');
          return;
        }
        c.queued++;
        c.queue = c.queue.then(() => answer(c.conn, e.line, handler)).finally(() => { c.queued--; });
        return;
      }
      case 'buffered':
        conversations.get(e.id)?.conn.buffered(e.buffered, e.received);
        return;
      case 'close':
        conversations.get(e.id)?.conn.closed();
        conversations.delete(e.id);
        return;
      case 'watchers':
        // Observing from now on: the watchers counted are told they watch, and get every event after that.
        opts.watch?.watching(e.count, link);
        send({ op: 'armed', seq: e.seq });
        return;
      case 'refused':
        opts.log?.event('control-refused', 'control connection refused: too many open', { open: e.open, limit: e.limit, refused: e.refused });
        return;
      case 'done':
        waiting.get(e.seq)?.(e.error);
        waiting.delete(e.seq);
    }
  };
  const command = (op: (seq: number) => IoOp): Promise<void> => {
    const n = ++seq;
    return new Promise<void>((resolve, reject) => {
      waiting.set(n, (error) => (error === null ? resolve() : reject(new Error(error))));
      send(op(n));
    });
  };
  const listen = (): Promise<void> => command((n) => ({ op: 'listen', seq: n, path: at.path, group: at.group, maxConnections, requestTimeoutMs }));
  /** Every connection of a thread that is gone is closed; what waited for it fails. */
  const lost = (why: string): void => {
    for (const c of conversations.values()) c.conn.closed();
    conversations.clear();
    for (const done of waiting.values()) done(why);
    waiting.clear();
    connections = 0;
    opts.watch?.watching(0, link);
  };

  /** Serves the connections on this thread: the same code, over a channel. */
  const serveHere = (): void => {
    const channel = new MessageChannel();
    serveControlIo(channel.port1);
    channel.port2.on('message', onReport);
    port = channel.port2;
    thread = false;
  };
  /** The thread failed: its connections are closed, and once started the socket is served here from then on. */
  const failed = (w: Worker, reason: string): void => {
    if (port !== w || closing) return;
    void w.terminate();
    port = null;
    thread = false;
    why = reason;
    lost(reason);
    if (!started) return;
    serveHere();
    listen().then(
      () => opts.log?.event('control-thread', `the control connections' thread failed (${reason}): they are served on the packet thread`, { error: reason }),
      (e: Error) => opts.log?.event('control-thread', `the control connections' thread failed (${reason}), and the socket could not be served: ${e.message}`, { error: e.message }));
  };
  try {
    const w = new Worker(opts.script ?? path.join(__dirname, 'control-io-worker.js'));
    w.unref();
    w.on('message', (r: IoReport) => { if (port === w) onReport(r); });
    w.on('error', (e) => failed(w, e.message));
    w.on('exit', (code) => failed(w, `it exited with ${code}`));
    port = w;
    thread = true;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => { timer = setTimeout(resolve, START_TIMEOUT_MS); });
    try {
      await Promise.race([listen(), late.then(() => failed(w, `it did not listen within ${START_TIMEOUT_MS} ms`))]);
    } catch (e) {
      // The thread runs, and could not listen (a bad path): the same error as on this thread.
      if (port === w) {
        closing = true;
        await w.terminate();
        throw e;
      }
    } finally {
      clearTimeout(timer);
    }
  } catch (e) {
    if (closing) throw e;
    why = (e as Error).message; // no thread could be made
  }
  if (!thread) {
    opts.log?.event('control-thread', `the control connections' thread did not start (${why}): they are served on the packet thread`, { error: why });
    serveHere();
    try {
      await listen();
    } catch (e) {
      (port as MessagePort | null)?.close();
      throw e;
    }
  }
  started = true;

  return {
    get connections() { return connections; },
    get refused() { return refused; },
    get path() { return at.path; },
    get thread() { return thread; },
    async move(to, group) {
      const before = at;
      at = { path: to, group };
      try {
        await listen();
      } catch (e) {
        at = before;
        throw e;
      }
    },
    async close() {
      closing = true;
      if (port !== null) await command((n) => ({ op: 'close', seq: n })).catch(() => undefined);
      lost('the control server closed');
      const p = port;
      port = null;
      if (p instanceof Worker) await p.terminate();
      else p?.close();
    },
  };
}

async function answer(conn: ControlConn, line: string, handler: ControlHandler): Promise<void> {
  let req: ControlRequest;
  try {
    const parsed = JSON.parse(line) as unknown;
    if (typeof parsed !== 'object' || parsed === null || typeof (parsed as { cmd?: unknown }).cmd !== 'string') {
      throw new Error('request must be an object with a "cmd" string');
    }
    req = parsed as ControlRequest;
  } catch (e) {
    conn.write(JSON.stringify({ ok: false, error: `bad request: ${(e as Error).message}` }) + '\n');
    return;
  }
  try {
    const reply = await handler(req);
    if (reply.rows) {
      // Rows go out in chunks of about CHUNK_BYTES (one write each), at least one per turn.
      let chunk = '';
      for await (const row of reply.rows) {
        chunk += JSON.stringify(row) + '\n';
        if (chunk.length < CHUNK_BYTES && !spent()) continue;
        const more = conn.write(chunk);
        chunk = '';
        if (!more) await writable(conn);
        else await yieldIfSpent();
        if (conn.destroyed) return;
      }
      if (chunk !== '') conn.write(chunk);
    }
    if (conn.destroyed) return;
    conn.write(JSON.stringify({ ok: true, end: true, ...reply.result }) + '\n');
  } catch (e) {
    conn.write(JSON.stringify({ ok: false, error: (e as Error).message }) + '\n');
  }
}

/** Resolves when the connection has flushed its output or closed. */
function writable(conn: ControlConn): Promise<void> {
  return new Promise((resolve) => {
    const done = () => { conn.off('drain', done); conn.off('close', done); resolve(); };
    conn.on('drain', done);
    conn.on('close', done);
  });
}

/** Sends one request and collects every line of the answer (for the CLI and tests). */
export function controlRequest(socketPath: string, req: ControlRequest, onRow?: (row: unknown) => void, timeoutMs = 10000): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const conn = net.createConnection(socketPath);
    let buf = '';
    const timer = setTimeout(() => { conn.destroy(); reject(new Error(`no answer from ${socketPath} within ${timeoutMs} ms`)); }, timeoutMs);
    conn.setEncoding('utf8');
    conn.on('error', (e) => { clearTimeout(timer); reject(e); });
    conn.on('connect', () => conn.write(JSON.stringify(req) + '\n'));
    conn.on('data', (chunk: string) => {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
        buf = buf.slice(nl + 1);
        if (msg.end === true || msg.ok === false) {
          clearTimeout(timer);
          conn.end();
          if (msg.ok === false) reject(new Error(String(msg.error)));
          else resolve(msg);
          return;
        }
        onRow?.(msg);
      }
    });
  });
}
