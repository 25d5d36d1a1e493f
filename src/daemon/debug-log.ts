/**
 * What `log.level: "debug"` adds for an operator chasing a flow: every new
 * and ended connection-table entry (NAPT sessions, ISAKMP and ESP entries,
 * PPTP calls) with why it ended, every state change (TCP states, a first
 * reply, ESP pending -> established or squelched, an ISAKMP responder cookie
 * learnt, a PPTP call confirmed or clearing), and the drops of the last
 * second by reason. An observer of the table events, so it runs after the
 * batch was written, never on the packet path; every kind of line is rate
 * limited (log.rateLimitPerMinute) and its row is built only when the line
 * is written.
 */
import { EV_DESTROY, EV_NEW } from '../core/journal';
import { DROP_NAMES, DROP_REASON_COUNT } from '../core/verdict';
import type { JournalObserver } from '../query/journal-feed';
import type { ConnRow } from '../query/rows';
import { TABLE_SESSIONS } from '../nat/sessions';
import type { Logger, LogFields } from './log';

const endpoint = (e: { addr: string; port: number }): string => (e.port === 0 ? e.addr : `${e.addr}:${e.port}`);

/** The one-line form of a row: `udp 10.77.0.11:40000 -> 198.18.0.11:7000 as 198.18.0.2:40000`. */
function flow(r: ConnRow): string {
  return `${r.proto} ${endpoint(r.lan)} -> ${endpoint(r.remote)} as ${endpoint(r.public)}`;
}

function fields(r: ConnRow): LogFields {
  return { id: r.id, proto: r.proto, state: r.state, ...(r.vpn ? { vpn: r.vpn } : {}), pkts: `${r.packets.out}/${r.packets.in}` };
}

export class DebugLog implements JournalObserver {
  private readonly lastDrops = new Float64Array(DROP_REASON_COUNT);

  /** `rowOf` builds the row a table event names (null once the record was reused). */
  constructor(
    private readonly log: Logger,
    private readonly rowOf: (table: number, index: number, serial: number) => ConnRow | null,
  ) {}

  /** Drops counted before now are not reported (logging just turned on). */
  startDrops(counts: Float64Array): void {
    this.lastDrops.set(counts);
  }

  event(kind: number, table: number, index: number, serial: number): void {
    const session = table === TABLE_SESSIONS;
    const what = kind === EV_NEW ? 'new' : kind === EV_DESTROY ? 'end' : 'update';
    this.log.lazyEvent(`${session ? 'conn' : 'vpn'}-${what}`, 'debug', () => {
      const r = this.rowOf(table, index, serial);
      if (r === null) return [`${what}: entry ${serial} (its record was reused before the line was written)`, { id: serial }];
      if (kind === EV_NEW) return [`new ${flow(r)}`, fields(r)];
      if (kind === EV_DESTROY) {
        // The record keeps its values after removal: a deadline passed means it expired.
        const why = r.expiresInSeconds === 0 ? 'expired' : 'removed';
        return [`${why} ${flow(r)} after ${r.idleSeconds}s idle`, { ...fields(r), reason: why }];
      }
      return [`${r.state} ${flow(r)}`, fields(r)];
    });
  }

  lost(n: number): void {
    this.log.event('conn-lost', `${n} table events were not logged (the observers fell behind)`, { lost: n }, 'debug');
  }

  /** Once a second: the drops since the last call, one line per reason that moved. */
  drops(counts: Float64Array): void {
    for (let i = 0; i < DROP_REASON_COUNT; i++) {
      const n = counts[i] - this.lastDrops[i];
      this.lastDrops[i] = counts[i];
      if (n > 0) this.log.event(`drop-${DROP_NAMES[i]}`, `dropped ${n} packet${n === 1 ? '' : 's'}: ${DROP_NAMES[i]}`, { reason: DROP_NAMES[i], count: n }, 'debug');
    }
  }
}
