/**
 * The control socket under /run/vpnmasq: the server side of the protocol in
 * src/query/protocol.ts. Access is limited by the socket's mode (0660) and
 * group.
 *
 * No client can hold the daemon up: at most MAX_CONNECTIONS are open (the
 * next one gets a clear error and the refusal is logged), a connection that
 * sends no request within REQUEST_TIMEOUT_MS is closed, the requests of one
 * connection run one after another, and rows are written in slices of the
 * event loop (slices.ts), waiting for a client that reads slowly.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { ControlRequest, MAX_REQUEST_BYTES } from '../query/protocol';
import { spent, yieldIfSpent } from './slices';

/** Open control connections at most (watchers included): far below the daemon's file descriptors. */
export const MAX_CONNECTIONS = 1024;
/** A connection must send its request within this time. */
export const REQUEST_TIMEOUT_MS = 10_000;
/** Bytes of listing rows written at a time. */
const CHUNK_BYTES = 16 * 1024;
/** Requests one connection may have waiting behind the one running. */
const MAX_QUEUED = 16;

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
}

export type { ControlRequest };

export interface ControlReply {
  /** Rows streamed before the final line (for listings). */
  rows?: Iterable<unknown> | AsyncIterable<unknown>;
  /** Writes lines until it resolves (`conns watch` resolves when the client goes away). */
  stream?: (conn: net.Socket) => Promise<void>;
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

/** Access is the socket's mode (0660) and group: root and the control group. */
function restrict(socketPath: string, groupId: number | null): void {
  fs.chmodSync(socketPath, 0o660);
  if (groupId !== null) fs.chownSync(socketPath, 0, groupId);
}

export async function startControlServer(socketPath: string, groupId: number | null, handler: ControlHandler,
  opts: ControlServerOptions = {}): Promise<ControlServer> {
  const maxConnections = opts.maxConnections ?? MAX_CONNECTIONS;
  const requestTimeoutMs = opts.requestTimeoutMs ?? REQUEST_TIMEOUT_MS;
  const open = new Set<net.Socket>();
  let refused = 0;
  const onConnection = (conn: net.Socket): void => {
    conn.on('error', () => conn.destroy());
    if (open.size >= maxConnections) {
      refused++;
      conn.end(JSON.stringify({ ok: false, error: `too many control connections (${maxConnections} open); try again later` }) + '\n');
      // Read (and drop) until the client closes its side, or the socket would stay half open; a client that does not is dropped.
      conn.resume();
      setTimeout(() => conn.destroy(), 1000).unref();
      opts.log?.event('control-refused', 'control connection refused: too many open', { open: open.size, limit: maxConnections, refused });
      return;
    }
    open.add(conn);
    conn.once('close', () => open.delete(conn));
    let pending = '';
    let requests = 0;
    let queue: Promise<void> = Promise.resolve();
    let queued = 0;
    const idle = setTimeout(() => conn.end(JSON.stringify({ ok: false, error: `no request within ${requestTimeoutMs} ms` }) + '\n'), requestTimeoutMs);
    idle.unref();
    conn.once('close', () => clearTimeout(idle));
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
        if (queued >= MAX_QUEUED) {
          conn.end(JSON.stringify({ ok: false, error: `more than ${MAX_QUEUED} requests waiting on one connection` }) + '\n');
          return;
        }
        queued++;
        queue = queue.then(() => answer(conn, line, handler)).finally(() => { queued--; });
      }
    });
  };
  const listen = async (at: string): Promise<net.Server> => {
    fs.mkdirSync(path.dirname(at), { recursive: true, mode: 0o755 });
    try { fs.unlinkSync(at); } catch { /* not there */ }
    const server = net.createServer(onConnection);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(at, () => { server.off('error', reject); resolve(); });
    });
    return server;
  };
  const stopListening = (server: net.Server, at: string): void => {
    server.close();
    try { fs.unlinkSync(at); } catch { /* gone */ }
  };
  let current = { server: await listen(socketPath), path: socketPath };
  restrict(socketPath, groupId);
  return {
    get connections() { return open.size; },
    get refused() { return refused; },
    get path() { return current.path; },
    async move(to, group) {
      if (to !== current.path) {
        const next = { server: await listen(to), path: to };
        try {
          restrict(to, group);
        } catch (e) {
          stopListening(next.server, to);
          throw e;
        }
        stopListening(current.server, current.path);
        current = next;
      } else {
        restrict(to, group);
      }
    },
    close: () => new Promise<void>((resolve) => {
      current.server.close(() => resolve());
      for (const conn of open) conn.destroy(); // watchers never end on their own
      try { fs.unlinkSync(current.path); } catch { /* gone */ }
    }),
  };
}

async function answer(conn: net.Socket, line: string, handler: ControlHandler): Promise<void> {
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
    if (reply.stream) await reply.stream(conn);
    if (conn.destroyed) return;
    conn.write(JSON.stringify({ ok: true, end: true, ...reply.result }) + '\n');
  } catch (e) {
    conn.write(JSON.stringify({ ok: false, error: (e as Error).message }) + '\n');
  }
}

/** Resolves when the socket has drained its write buffer or closed. */
function writable(conn: net.Socket): Promise<void> {
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
