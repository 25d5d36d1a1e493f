/**
 * Operator-facing rows of the connection table (CLI, control socket, `conns
 * watch`): one row per NAPT session, ISAKMP entry, ESP entry and PPTP call,
 * read from the tables' arrays. Not on the packet path: builds objects and
 * strings freely.
 */
import { PROTO_ICMP, PROTO_TCP, PROTO_UDP } from '../wire/ipv4';
import { ISAKMP_PORT } from '../wire/isakmp';
import { SessionTable, TABLE_SESSIONS } from '../nat/sessions';
import { TCP_STATE_NAMES, tcpStateName } from '../nat/tcp-tracker';
import { int32ToIpv4 } from '../core/ipv4-addr';
import { ESP_ESTABLISHED, ESP_FREE, ESP_PENDING, ESP_STATE_NAMES, IpsecMasq, TABLE_ESP, TABLE_ISAKMP } from '../helpers/ipsec/ipsec';
import { hex32, hex64 } from '../helpers/ipsec/events';
import { CALL_CONFIRMED, CALL_REQUESTED, PptpCalls, ROLE_PAC, TABLE_GRE_CALLS } from '../helpers/pptp/calls';

export interface ConnRow {
  /** Stable identifier of the session (unique for the daemon's lifetime and across restarts once persisted). */
  id: number;
  /**
   * 'gre': a PPTP call, ports 0 and its Call IDs in `vpn`;
   * 'isakmp' / 'esp': an IPsec entry, cookies or SPIs in `vpn`.
   */
  proto: 'tcp' | 'udp' | 'icmp' | 'isakmp' | 'esp' | 'gre';
  lan: { addr: string; port: number };
  public: { addr: string; port: number };
  remote: { addr: string; port: number };
  state: string;
  idleSeconds: number;
  expiresInSeconds: number;
  packets: { out: number; in: number };
  bytes: { out: number; in: number };
  /** VPN detail of isakmp/esp/gre rows (docs/cli-json-schema.json); null: not learnt yet. */
  vpn?: Record<string, string | number | null>;
}

/** States of rows that only know whether the remote answered (UDP, ICMP, ISAKMP). */
const REPLY_STATES = ['UNREPLIED', 'REPLIED'] as const;
const CALL_STATES = ['REQUESTED', 'CONFIRMED', 'CLEARING'] as const;

/** Every state a row of each protocol can show: what `--state` accepts. */
export const ROW_STATES: Readonly<Record<string, readonly string[]>> = {
  tcp: TCP_STATE_NAMES,
  udp: REPLY_STATES,
  icmp: REPLY_STATES,
  isakmp: REPLY_STATES,
  esp: ESP_STATE_NAMES.filter((_, i) => i !== ESP_FREE).map((n) => n.toUpperCase()),
  gre: CALL_STATES,
};

/** Every table a row can come from. */
export interface ConnTables {
  sessions: SessionTable;
  ipsec: IpsecMasq;
  calls: PptpCalls;
}

const PROTO_NAMES: Record<number, ConnRow['proto']> = { [PROTO_TCP]: 'tcp', [PROTO_UDP]: 'udp', [PROTO_ICMP]: 'icmp' };

export function sessionRow(t: SessionTable, s: number, now: number): ConnRow {
  const proto = PROTO_NAMES[t.protoOf(s)];
  return {
    id: t.sSerial[s],
    proto,
    lan: { addr: int32ToIpv4(t.lanOf(s)), port: t.lanPortOf(s) },
    public: { addr: int32ToIpv4(t.pubAddrOf(s)), port: t.pubPortOf(s) },
    remote: { addr: int32ToIpv4(t.remOf(s)), port: t.remPortOf(s) },
    state: proto === 'tcp' ? tcpStateName(t.stateOf(s)) : REPLY_STATES[t.pktsIn(s) > 0 ? 1 : 0],
    idleSeconds: Math.max(0, Math.round((now - t.lastSeenOf(s)) / 1000)),
    expiresInSeconds: Math.max(0, Math.round((t.expiresOf(s) - now) / 1000)),
    packets: { out: t.pktsOut(s), in: t.pktsIn(s) },
    bytes: { out: t.bytesOut(s), in: t.bytesIn(s) },
  };
}

/** Idle and remaining seconds of an entry whose timer every packet restarts to `ttlMs`. */
function timing(now: number, expires: number, ttlMs: number): { idleSeconds: number; expiresInSeconds: number } {
  const left = Math.max(0, expires - now);
  return { idleSeconds: Math.max(0, Math.round((ttlMs - left) / 1000)), expiresInSeconds: Math.round(left / 1000) };
}

/**
 * An ISAKMP entry (admin view, spec §10): port 500 on every side (Rule
 * I-1), the cookies in `vpn`. Bytes are not counted for the VPN tables. Idle
 * time is derived from the timer, which every packet restarts.
 */
export function isakmpRow(m: IpsecMasq, k: number, now: number, publicOf: (lan: number) => number): ConnRow {
  const has = m.kHasRc[k] === 1;
  return {
    id: m.kSerial[k], proto: 'isakmp',
    lan: { addr: int32ToIpv4(m.kLan[k]), port: ISAKMP_PORT }, public: { addr: int32ToIpv4(publicOf(m.kLan[k])), port: ISAKMP_PORT },
    remote: { addr: int32ToIpv4(m.kRem[k]), port: ISAKMP_PORT },
    state: REPLY_STATES[has ? 1 : 0],
    ...timing(now, m.kExpires[k], m.opts.lifetimeMs),
    packets: { out: m.kPktsOut[k], in: m.kPktsIn[k] }, bytes: { out: 0, in: 0 },
    vpn: { icookie: hex64(m.kIc0[k], m.kIc1[k]), rcookie: has ? hex64(m.kRc0[k], m.kRc1[k]) : null },
  };
}

/** An ESP entry: no ports, the SPIs and the pairing state in `vpn`; a removed entry shows the state it ended in. */
export function espRow(m: IpsecMasq, e: number, now: number, publicOf: (lan: number) => number): ConnRow {
  const st = m.eState[e] === ESP_FREE ? m.eEndState[e] : m.eState[e];
  const o = m.opts;
  return {
    id: m.eSerial[e], proto: 'esp',
    lan: { addr: int32ToIpv4(m.eLan[e]), port: 0 }, public: { addr: int32ToIpv4(publicOf(m.eLan[e])), port: 0 },
    remote: { addr: int32ToIpv4(m.eRem[e]), port: 0 },
    state: ESP_STATE_NAMES[st].toUpperCase(),
    ...timing(now, m.eExpires[e], st === ESP_ESTABLISHED ? o.lifetimeMs : st === ESP_PENDING ? o.pendingMs : o.squelchMs),
    packets: { out: m.ePktsOut[e], in: m.ePktsIn[e] }, bytes: { out: 0, in: 0 },
    vpn: {
      spiOut: `0x${hex32(m.eOutSpi[e])}`, spiIn: st === ESP_ESTABLISHED ? `0x${hex32(m.eInSpi[e])}` : null, state: ESP_STATE_NAMES[st],
    },
  };
}

/**
 * A PPTP call (also after removal, until the record is reused): ports 0, the
 * Call IDs in `vpn`; expiresInSeconds -1 while its control connection holds it.
 */
export function callRow(g: PptpCalls, c: number, now: number, publicOf: (lan: number) => number): ConnRow {
  const st = g.state[c];
  return {
    id: g.serial[c],
    proto: 'gre',
    lan: { addr: int32ToIpv4(g.lan[c]), port: 0 },
    public: { addr: int32ToIpv4(publicOf(g.lan[c])), port: 0 },
    remote: { addr: int32ToIpv4(g.rem[c]), port: 0 },
    state: CALL_STATES[st === CALL_REQUESTED ? 0 : st === CALL_CONFIRMED ? 1 : 2],
    idleSeconds: Math.max(0, Math.round((now - g.lastSeen[c]) / 1000)),
    expiresInSeconds: g.expires[c] === Infinity ? -1 : Math.max(0, Math.round((g.expires[c] - now) / 1000)),
    packets: { out: g.pktsOut[c], in: g.pktsIn[c] },
    bytes: { out: 0, in: 0 },
    vpn: {
      role: g.role[c] === ROLE_PAC ? 'pac' : 'pns', callIdLan: g.lanId[c], callIdPub: g.pubId[c],
      callIdRemote: g.remId[c] < 0 ? null : g.remId[c],
    },
  };
}

/** Every row of every table, built one at a time so a listing streams. */
export function* allRows(x: ConnTables, now: number): Generator<ConnRow> {
  const t = x.sessions;
  const pub = (lan: number): number => t.addressOfHost(lan);
  for (let s = 0; s < t.capacity; s++) if (t.sInUse[s] === 1) yield sessionRow(t, s, now);
  const g = x.calls;
  for (let c = 0; c < g.capacity; c++) if (g.inUse[c] === 1) yield callRow(g, c, now, pub);
  const m = x.ipsec;
  const cap = m.opts.capacity;
  for (let k = 0; k < cap; k++) if (m.kInUse[k] === 1) yield isakmpRow(m, k, now, pub);
  for (let e = 0; e < cap; e++) if (m.eInUse[e] === 1) yield espRow(m, e, now, pub);
}

/**
 * The row a journal event names (table, record, serial), if the record still
 * has that serial: also right after a DESTROY (`conns watch`), as the record
 * keeps its last values until it is reused.
 */
export function rowOf(x: ConnTables, table: number, index: number, serial: number, now: number): ConnRow | null {
  const pub = (lan: number): number => x.sessions.addressOfHost(lan);
  switch (table) {
    case TABLE_SESSIONS:
      return x.sessions.sSerial[index] === serial ? sessionRow(x.sessions, index, now) : null;
    case TABLE_GRE_CALLS:
      return x.calls.serial[index] === serial ? callRow(x.calls, index, now, pub) : null;
    case TABLE_ISAKMP:
      return x.ipsec.kSerial[index] === serial ? isakmpRow(x.ipsec, index, now, pub) : null;
    case TABLE_ESP:
      return x.ipsec.eSerial[index] === serial ? espRow(x.ipsec, index, now, pub) : null;
    default:
      return null;
  }
}
