/**
 * The CLI's side of the control socket: one request, answers read line by
 * line. A row handler may return a promise (stdout is full); the socket is
 * paused until it settles, so a listing of any size holds only a few lines
 * in memory.
 */
import * as net from 'node:net';
import { ControlRequest } from '../query/protocol';

/** A failure with the exit code it maps to (1 failure, 2 usage error). */
export class CliError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
  }
}

/** The control socket is absent or nobody listens on it. */
export class DaemonDownError extends CliError {}

export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

export interface SocketInfo {
  socket: string;
  group: string;
}

export type RowHandler = (row: Record<string, unknown>) => void | Promise<void>;

export function connectError(e: NodeJS.ErrnoException, s: SocketInfo): CliError {
  if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') return new DaemonDownError(`vpnmasq is not running (no daemon on ${s.socket})`);
  if (e.code === 'EACCES' || e.code === 'EPERM') {
    return new CliError(`permission denied on ${s.socket}: run as root or as a member of the "${s.group}" group`);
  }
  return new CliError(`control socket ${s.socket}: ${e.message}`);
}

/**
 * Sends `req` and hands every streamed row to `onRow`; resolves with the
 * final line. `connectTimeoutMs` bounds the wait for the first answer line
 * only (a watch may be silent for hours).
 */
export function streamRequest(s: SocketInfo, req: ControlRequest, onRow: RowHandler = () => undefined, connectTimeoutMs = 10000): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const conn = net.createConnection(s.socket);
    let buf = '';
    let busy = false;
    let finished = false;
    let closed = false;
    const finish = (err: Error | null, result?: Record<string, unknown>) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      conn.destroy();
      if (err) reject(err);
      else resolve(result as Record<string, unknown>);
    };
    const timer = setTimeout(() => finish(new CliError(`no answer from the daemon on ${s.socket} within ${connectTimeoutMs} ms`)), connectTimeoutMs);
    const pump = () => {
      let nl: number;
      while (!busy && !finished && (nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        clearTimeout(timer);
        let msg: Record<string, unknown>;
        try {
          msg = JSON.parse(line) as Record<string, unknown>;
        } catch {
          finish(new CliError(`bad answer from the daemon: ${line.slice(0, 200)}`));
          return;
        }
        if (msg.ok === false) { finish(new CliError(String(msg.error))); return; }
        if (msg.end === true) {
          delete msg.ok;
          delete msg.end;
          finish(null, msg);
          return;
        }
        const pending = onRow(msg);
        if (pending) {
          busy = true;
          conn.pause();
          pending.then(() => { busy = false; conn.resume(); pump(); }, (e: Error) => finish(e));
        }
      }
      if (closed && !busy) finish(new CliError('the daemon closed the connection before the answer was complete'));
    };
    conn.setEncoding('utf8');
    conn.on('error', (e: NodeJS.ErrnoException) => finish(connectError(e, s)));
    conn.on('connect', () => conn.write(JSON.stringify(req) + '\n'));
    conn.on('data', (chunk: string) => { buf += chunk; pump(); });
    conn.on('close', () => { closed = true; pump(); });
  });
}
