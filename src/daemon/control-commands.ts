/**
 * The control socket's commands (see control.ts for the framing):
 *
 *   status, stats                     one result line
 *   conns {filter, sort, reverse, limit}   rows streamed, then {count}
 *   conns-show {id}                   {conn}
 *   conns-delete {id | filter}        {deleted}
 *   conns-flush {filter}              {deleted}
 *   watch {filter}                    {event, time, conn} lines until the client disconnects
 *   forwards-list                     rows, then {count}
 *   forwards-add {forward}            {forward}: a runtime forward, checked like the config's
 *   forwards-remove {proto, publicPort}   {forward}: removes a runtime forward
 *
 * Filtering, sorting and the limit run here so that a filtered listing of a
 * large table sends only what was asked for. Not on the packet path.
 */
import * as net from 'node:net';
import { Config } from './config';
import { ControlReply, ControlRequest } from './control';
import type { JournalListener } from '../core/journal';
import { AnyConnRow, compileFilter, ConnFilter, FilterError, isEmptyFilter, ListQuery, queryRows } from '../query/filters';
import { EV_DESTROY, EV_NEW, EV_UPDATE } from '../core/journal';
import { ConnRow } from '../query/rows';
import { SessionTable } from '../nat/sessions';
import { Forwards } from '../nat/forwards';

/** What the commands need from the daemon. */
export interface ControlTarget {
  readonly config: Config;
  readonly table: SessionTable;
  readonly forwards: Forwards;
  rows(): Iterable<ConnRow>;
  /** The row of a table entry named by a journal event, if it still has that serial. */
  rowOf(table: number, index: number, serial: number): ConnRow | null;
  /** Deletes the rows with these ids from whichever table holds them; returns how many. */
  deleteConns(ids: ReadonlySet<number>): number;
  /** The forwards changed at runtime (shared mode re-steers their ports). */
  forwardsChanged(): Promise<void>;
  stats(): Record<string, unknown>;
  status(): Record<string, unknown>;
  addJournalListener(l: JournalListener): void;
  removeJournalListener(l: JournalListener): void;
}

export const EVENT_NAMES: Record<number, string> = { [EV_NEW]: 'NEW', [EV_UPDATE]: 'UPDATE', [EV_DESTROY]: 'DESTROY' };

/** A watcher that falls this far behind loses events and is told how many (conntrack's ENOBUFS). */
const WATCH_BACKLOG_BYTES = 1 << 20;

export class ControlCommands {
  constructor(private readonly target: ControlTarget, private readonly now: () => number) {}

  handle(req: ControlRequest): ControlReply | Promise<ControlReply> {
    switch (req.cmd) {
      case 'status':
        return { result: this.target.status() };
      case 'stats':
        return { result: this.target.stats() };
      case 'conns':
        return this.list(req);
      case 'conns-show': {
        const id = connId(req.id);
        for (const r of this.target.rows()) if (r.id === id) return { result: { conn: r } };
        throw new Error(`no connection with id ${id}`);
      }
      case 'conns-delete': {
        if (req.id === undefined && isEmptyFilter(req.filter as ConnFilter)) throw new Error('conns-delete needs an id or a filter');
        const ids = this.matchingIds(req.id !== undefined ? connId(req.id) : null, req.filter as ConnFilter);
        const deleted = this.target.deleteConns(ids);
        if (req.id !== undefined && deleted === 0) throw new Error(`no connection with id ${req.id}`);
        return { result: { deleted } };
      }
      case 'conns-flush':
        return { result: { deleted: this.target.deleteConns(this.matchingIds(null, req.filter as ConnFilter)) } };
      case 'watch':
        return { stream: (conn) => this.watch(conn, req.filter as ConnFilter), result: {} };
      case 'forwards-list': {
        const rows = this.target.forwards.list();
        return { rows, result: { count: rows.length } };
      }
      case 'forwards-add':
        return this.forwardsChange(() => this.target.forwards.add(req.forward, this.target.config.lan.prefixes));
      case 'forwards-remove':
        return this.forwardsChange(() => this.target.forwards.remove(String(req.proto),
          req.publicPort === undefined || req.publicPort === null ? undefined : Number(req.publicPort)));
      default:
        throw new Error(`unknown command "${req.cmd}"`);
    }
  }

  private list(req: ControlRequest): ControlReply {
    const q: ListQuery = {
      filter: req.filter as ConnFilter | undefined,
      sort: req.sort as string | undefined,
      reverse: req.reverse === true,
      limit: req.limit === undefined ? undefined : Number(req.limit),
    };
    compileFilter(q.filter); // reject a bad filter before streaming starts
    const counted = { count: 0 };
    const rows = function* (src: Iterable<AnyConnRow>) {
      for (const r of queryRows(src, q)) { counted.count++; yield r; }
    };
    return { rows: rows(this.target.rows() as Iterable<AnyConnRow>), result: counted };
  }

  /** Ids of the rows (any table: ids are one space) with this id, or any id, that match the filter. */
  private matchingIds(id: number | null, filter: ConnFilter | undefined): Set<number> {
    const match = compileFilter(filter);
    const ids = new Set<number>();
    for (const r of this.target.rows()) if ((id === null || r.id === id) && match(r as AnyConnRow)) ids.add(r.id);
    return ids;
  }

  /** Applies a runtime forward change, then lets the daemon re-steer; answers with the forward. */
  private async forwardsChange(change: () => unknown): Promise<ControlReply> {
    const forward = change();
    await this.target.forwardsChanged();
    return { result: { forward } };
  }

  /** Row of a journal event, or only its id when the slot has been reused since. */
  private eventRow(table: number, index: number, serial: number): AnyConnRow | { id: number } {
    return this.target.rowOf(table, index, serial) ?? { id: serial };
  }

  private watch(conn: net.Socket, filter: ConnFilter | undefined): Promise<void> {
    const match = compileFilter(filter);
    let lost = 0;
    const listener: JournalListener = {
      event: (kind, table, index, serial) => {
        const row = this.eventRow(table, index, serial);
        if (!('proto' in row) ? !isEmptyFilter(filter) : !match(row)) return;
        if (conn.writableLength > WATCH_BACKLOG_BYTES) { lost++; return; }
        if (lost > 0) {
          conn.write(JSON.stringify({ event: 'OVERRUN', time: new Date(this.now()).toISOString(), lost }) + '\n');
          lost = 0;
        }
        conn.write(JSON.stringify({ event: EVENT_NAMES[kind], time: new Date(this.now()).toISOString(), conn: row }) + '\n');
      },
      flush: () => undefined,
    };
    this.target.addJournalListener(listener);
    conn.write(JSON.stringify({ watching: true }) + '\n');
    return new Promise((resolve) => {
      const done = () => { this.target.removeJournalListener(listener); resolve(); };
      conn.once('close', done);
      // The client never sends more than its one request; its end of the stream means it is gone.
      conn.once('end', () => conn.destroy());
    });
  }
}

function connId(v: unknown): number {
  const n = typeof v === 'number' ? v : /^\d+$/.test(String(v)) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n <= 0) throw new FilterError(`not a connection id: "${String(v)}"`);
  return n;
}
