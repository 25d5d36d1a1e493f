/**
 * The control socket's commands (see control.ts for the framing):
 *
 *   status, stats                     one result line
 *   conns {filter, sort, reverse, limit}   rows streamed, then {count}
 *   conns-show {id}                   {conn}
 *   conns-delete {id | filter}        {deleted}
 *   conns-flush {filter}              {deleted}
 *   watch {filter}                    {event, time, conn} lines until the client disconnects: answered
 *                                     on the connections' thread (control-io.ts), fed by the hub here
 *   forwards-list                     rows, then {count}
 *   forwards-add {forward}            {forward}: a runtime forward, checked like the config's
 *   forwards-remove {proto, publicPort}   {forward}: removes a runtime forward
 *   ipsec {remote?}                   one row per remote (src/query/ipsec-report.ts), then {count}
 *   reload                            {applied, warnings}: the config file reloaded, or an error naming
 *                                     every field that needs a restart (the running config kept)
 *
 * Filtering, sorting and the limit (src/query/filters.ts, shared with the
 * CLI) run here so that a filtered listing of a large table sends only what
 * was asked for; an id is looked up directly (src/query/id-index.ts).
 * Listings, sorts and deletions by filter run in slices of the event loop
 * (slices.ts), so no request holds up the packet batches; watchers are fed
 * by one hub (watchers.ts) after the batch was written. Not on the packet
 * path.
 */
import { checkForwards, Config } from '../config/schema';
import type { Forward } from '../core/forward';
import { ControlReply, ControlRequest } from './control';
import { AnyConnRow, compileFilter, ConnFilter, isEmptyFilter, ListQuery, parseConnId, planQuery, QueryPlan } from '../query/filters';
import type { JournalObserver } from '../query/journal-feed';
import { ConnRow } from '../query/rows';
import { sliced, slicedSort, yieldIfSpent } from './slices';
import { WatchHub } from './watchers';
import { SessionTable } from '../nat/sessions';
import { Forwards } from '../nat/forwards';
import { IpsecRemote } from '../query/ipsec-report';
import { ipv4ToInt32, isIPv4 } from '../core/ipv4-addr';

/** What the commands need from the daemon. */
export interface ControlTarget {
  readonly config: Config;
  readonly table: SessionTable;
  readonly forwards: Forwards;
  rows(): Iterable<ConnRow>;
  /** The row of a table entry named by a journal event, if it still has that serial. */
  rowOf(table: number, index: number, serial: number): ConnRow | null;
  /** The row with this id, found directly, or null. */
  connById(id: number): ConnRow | null;
  /** Deletes the rows with these ids from whichever table holds them; returns how many. */
  deleteConns(ids: ReadonlySet<number>): number;
  /** The forwards changed at runtime (shared mode re-steers their ports). */
  forwardsChanged(): Promise<void>;
  stats(): Record<string, unknown>;
  status(): Record<string, unknown>;
  /** The IPsec tables per remote (`vpnmasq ipsec`), or only this remote's. */
  ipsecRemotes(remote: number | null): IpsecRemote[];
  /** Reads the config file and applies it (serialised with SIGHUP). */
  reloadFromFile(): Promise<{ ok: true; applied: string[]; warnings: string[] } | { ok: false; error: string }>;
  /** Table events after each batch was written (`conns watch`). */
  addObserver(o: JournalObserver): void;
  removeObserver(o: JournalObserver): void;
}

/** Ids deleted per slice: each batch of deletions is one journal drain (and one commit of the store). */
const DELETE_CHUNK = 512;

export class ControlCommands {
  /** `conns watch`: answered on the control socket's connections thread, fed from here (watchers.ts). */
  readonly watchers: WatchHub;

  constructor(private readonly target: ControlTarget, now: () => number) {
    this.watchers = new WatchHub(target, now);
  }

  /** Watchers connected now. */
  get watching(): number { return this.watchers.count; }

  handle(req: ControlRequest): ControlReply | Promise<ControlReply> {
    switch (req.cmd) {
      case 'status':
        return { result: this.target.status() };
      case 'stats':
        return { result: this.target.stats() };
      case 'conns':
        return this.list(req);
      case 'conns-show': {
        const id = parseConnId(req.id);
        const conn = this.target.connById(id);
        if (conn === null) throw new Error(`no connection with id ${id}`);
        return { result: { conn } };
      }
      case 'conns-delete': {
        if (req.id === undefined && isEmptyFilter(req.filter as ConnFilter)) throw new Error('conns-delete needs an id or a filter');
        if (req.id === undefined) return this.deleteMatching(req.filter as ConnFilter);
        const id = parseConnId(req.id);
        const conn = this.target.connById(id);
        const deleted = conn !== null && compileFilter(req.filter as ConnFilter)(conn as AnyConnRow) ? this.target.deleteConns(new Set([id])) : 0;
        if (deleted === 0) throw new Error(`no connection with id ${req.id}`);
        return { result: { deleted } };
      }
      case 'conns-flush':
        return this.deleteMatching(req.filter as ConnFilter);
      case 'forwards-list': {
        const rows = this.target.forwards.list();
        return { rows, result: { count: rows.length } };
      }
      case 'forwards-add':
        return this.forwardsChange(() => this.target.forwards.add(this.checkedForward(req.forward)));
      case 'forwards-remove':
        return this.forwardsChange(() => this.target.forwards.remove(String(req.proto),
          req.publicPort === undefined || req.publicPort === null ? undefined : Number(req.publicPort)));
      case 'ipsec': {
        if (req.remote !== undefined && (typeof req.remote !== 'string' || !isIPv4(req.remote))) {
          throw new Error(`ipsec: remote must be an IPv4 address, not ${JSON.stringify(req.remote)}`);
        }
        const rows = this.target.ipsecRemotes(req.remote === undefined ? null : ipv4ToInt32(req.remote));
        return { rows, result: { count: rows.length } };
      }
      case 'reload':
        return this.reload();
      default:
        throw new Error(`unknown command "${req.cmd}"`);
    }
  }

  private async reload(): Promise<ControlReply> {
    const outcome = await this.target.reloadFromFile();
    if (!outcome.ok) throw new Error(outcome.error);
    return { result: { applied: outcome.applied, warnings: outcome.warnings } };
  }

  private list(req: ControlRequest): ControlReply {
    const q: ListQuery = {
      filter: req.filter as ConnFilter | undefined,
      sort: req.sort as string | undefined,
      reverse: req.reverse === true,
      limit: req.limit === undefined ? undefined : Number(req.limit),
    };
    // A bad query is rejected before streaming starts.
    const plan = planQuery(q);
    const counted = { count: 0 };
    const rows = async function* (src: Iterable<AnyConnRow>) {
      for await (const r of slicedQuery(src, plan)) { counted.count++; yield r; }
    };
    return { rows: rows(this.target.rows() as Iterable<AnyConnRow>), result: counted };
  }

  /** Deletes every row (any table: ids are one space) that matches the filter, in slices. */
  private async deleteMatching(filter: ConnFilter | undefined): Promise<ControlReply> {
    const match = compileFilter(filter);
    const ids: number[] = [];
    for await (const r of sliced(this.target.rows())) if (match(r as AnyConnRow)) ids.push(r.id);
    let deleted = 0;
    for (let i = 0; i < ids.length; i += DELETE_CHUNK) {
      deleted += this.target.deleteConns(new Set(ids.slice(i, i + DELETE_CHUNK)));
      await yieldIfSpent();
    }
    return { result: { deleted } };
  }

  /**
   * A runtime forward checked exactly like an entry of the config's
   * "forwards" against every forward in effect; throws ConfigError.
   */
  private checkedForward(value: unknown): Forward {
    const fw = this.target.forwards;
    const nc = fw.list().filter((f) => f.source === 'config').length;
    const all = fw.all();
    const n = all.length;
    const name = (i: number) => (i < nc ? `forwards[${i}]` : i < n ? `runtime forward ${i - nc + 1}` : 'forward');
    return checkForwards([...all, value], this.target.config.lan.prefixes, name, 'forwards add', this.target.config.ports)[n];
  }

  /** Applies a runtime forward change, then lets the daemon re-steer; answers with the forward. */
  private async forwardsChange(change: () => unknown): Promise<ControlReply> {
    const forward = change();
    await this.target.forwardsChanged();
    return { result: { forward } };
  }
}

/** Rows of a query plan, the filter and the sort worked in slices of the event loop (the CLI's queryRows, for the daemon). */
async function* slicedQuery(rows: Iterable<AnyConnRow>, plan: QueryPlan): AsyncGenerator<AnyConnRow> {
  if (plan.limit === 0) return;
  let n = 0;
  if (plan.compare === null) {
    for await (const r of sliced(rows)) {
      if (!plan.match(r)) continue;
      yield r;
      if (++n >= plan.limit) return;
    }
    return;
  }
  const kept: AnyConnRow[] = [];
  for await (const r of sliced(rows)) if (plan.match(r)) kept.push(r);
  for (const r of await slicedSort(kept, plan.compare)) {
    yield r;
    if (++n >= plan.limit) return;
  }
}
