/**
 * The persisted tables, one column spec each (columns.ts): NAPT sessions,
 * ISAKMP entries, ESP entries and PPTP calls. The current schema's CREATE
 * statements (schema.ts), the rows the store writes and the restore of every
 * table come from these specs; so does the read-only reader.
 *
 * Cookies and SPIs are the signed 32-bit halves the packet path reads;
 * addresses are signed int32; times are wall-clock ms, so stored deadlines
 * count the time the router was down (vpn-masquerade-spec §11 item 20: a
 * pending ESP entry whose deadline passed is dropped). A PPTP call refers to
 * its control connection by the session's serial; its deadline is Infinity
 * while that connection holds it.
 */
import { PROTO_ICMP, PROTO_TCP, PROTO_UDP } from '../wire/ipv4';
import { SessionTable, TABLE_SESSIONS } from '../nat/sessions';
import { ESP_ESTABLISHED, ESP_PENDING, ESP_SQUELCHED, IpsecMasq, TABLE_ESP, TABLE_ISAKMP } from '../helpers/ipsec/ipsec';
import { CALL_CLEARING, CALL_CONFIRMED, CALL_REQUESTED, PptpCalls, ROLE_PAC, ROLE_PNS, TABLE_GRE_CALLS } from '../helpers/pptp/calls';
import { ColumnDef, defineTable, FLAG, INT32, inRange, NON_NEGATIVE, oneOf, PORT, SERIAL, TableCodec, UINT8 } from './columns';

const NO_CALL_ID = -1;

export const SESSIONS = defineTable<SessionTable>()({
  sqlTable: 'sessions',
  journalTable: TABLE_SESSIONS,
  columns: {
    serial: { type: 'INTEGER', array: (t) => t.sSerial, check: SERIAL },
    proto: { type: 'INTEGER', get: (t, s) => t.protoOf(s), check: oneOf({ tcp: PROTO_TCP, udp: PROTO_UDP, icmp: PROTO_ICMP }) },
    lan: { type: 'INTEGER', get: (t, s) => t.lanOf(s), check: INT32 },
    lan_port: { type: 'INTEGER', get: (t, s) => t.lanPortOf(s), check: PORT },
    // The mapping's public address (paired pooling); a moved row is rewritten with the one it moved to.
    pub_addr: { type: 'INTEGER', get: (t, s) => t.pubAddrOf(s), update: true, check: INT32 },
    pub_port: { type: 'INTEGER', get: (t, s) => t.pubPortOf(s), check: PORT },
    rem: { type: 'INTEGER', get: (t, s) => t.remOf(s), check: INT32 },
    rem_port: { type: 'INTEGER', get: (t, s) => t.remPortOf(s), check: PORT },
    state: { type: 'INTEGER', get: (t, s) => t.stateOf(s), update: true, check: UINT8 },
    created: { type: 'REAL', array: (t) => t.sCreated },
    // Every packet of the flow moves its deadline (ms): that is what makes a row dirty. last_seen is kept in
    // whole seconds, so it alone would miss the packets of the second the row was written in (the first reply).
    last_seen: { type: 'REAL', get: (t, s) => t.lastSeenOf(s), set: (t, s, v) => t.setLastSeen(s, v), assign: true, update: true },
    expires: { type: 'REAL', get: (t, s) => t.expiresOf(s), update: true, watch: true },
    pkts_out: { type: 'REAL', get: (t, s) => t.pktsOut(s), set: (t, s, v) => t.setPktsOut(s, v), assign: true, update: true, default: 0, check: NON_NEGATIVE },
    pkts_in: { type: 'REAL', get: (t, s) => t.pktsIn(s), set: (t, s, v) => t.setPktsIn(s, v), assign: true, update: true, default: 0, check: NON_NEGATIVE },
    bytes_out: { type: 'REAL', get: (t, s) => t.bytesOut(s), set: (t, s, v) => t.setBytesOut(s, v), assign: true, update: true, default: 0, check: NON_NEGATIVE },
    bytes_in: { type: 'REAL', get: (t, s) => t.bytesIn(s), set: (t, s, v) => t.setBytesIn(s, v), assign: true, update: true, default: 0, check: NON_NEGATIVE },
  },
  indexes: ['CREATE INDEX sessions_expires ON sessions (expires)'],
  capacity: (t) => t.capacity,
  count: (t) => t.sessionCount,
  inUse: (t) => t.sInUse,
  restore: (t, r) => {
    // A row stored under an address no longer configured moves to its host's (wan.onAddressChange "move").
    const at = t.publicIndexOf(r.pub_addr);
    return t.restoreSession(r.proto, r.lan, r.lan_port, at >= 0 ? at : t.hosts.addressOf(r.lan), r.pub_port, r.rem, r.rem_port,
      r.created, r.state, r.expires, r.serial);
  },
});

/**
 * The first columns of every VPN table: the id, the LAN host, the remote,
 * and the public address (its LAN host's, as for the host's sessions).
 */
function vpnEntry<T extends { readonly t: SessionTable }>(serial: (x: T) => Float64Array, lan: (x: T) => Int32Array,
  rem: (x: T) => Int32Array): Record<'serial' | 'lan' | 'rem' | 'pub_addr', ColumnDef<T>> {
  return {
    serial: { type: 'INTEGER', array: serial, check: SERIAL },
    lan: { type: 'INTEGER', array: lan, check: INT32 },
    rem: { type: 'INTEGER', array: rem, check: INT32 },
    // The LAN host's public address (paired pooling).
    pub_addr: { type: 'INTEGER', get: (x, i) => x.t.addressOfHost(lan(x)[i]), update: true, check: INT32 },
  };
}

/** The IPsec tables' live side: the masquerade and the session table (for the public address). */
export interface IpsecTables { readonly m: IpsecMasq; readonly t: SessionTable }

/** ISAKMP entries: cookies, the LAN host and whether it is the forwarded server. */
export const ISAKMP = defineTable<IpsecTables>()({
  sqlTable: 'isakmp',
  journalTable: TABLE_ISAKMP,
  columns: {
    ...vpnEntry<IpsecTables>((x) => x.m.kSerial, (x) => x.m.kLan, (x) => x.m.kRem),
    icookie0: { type: 'INTEGER', array: (x) => x.m.kIc0, check: INT32 },
    icookie1: { type: 'INTEGER', array: (x) => x.m.kIc1, check: INT32 },
    rcookie0: { type: 'INTEGER', array: (x) => x.m.kRc0, update: true, check: INT32 },
    rcookie1: { type: 'INTEGER', array: (x) => x.m.kRc1, update: true, check: INT32 },
    has_rcookie: { type: 'INTEGER', array: (x) => x.m.kHasRc, update: true, watch: true, check: FLAG },
    server: { type: 'INTEGER', array: (x) => x.m.kServer, update: true, watch: true, check: FLAG },
    expires: { type: 'REAL', array: (x) => x.m.kExpires, update: true, watch: true },
  },
  capacity: (x) => x.m.opts.capacity,
  count: (x) => x.m.isakmpCount,
  inUse: (x) => x.m.kInUse,
  restore: (x, r) => x.m.restoreIsakmp(r.lan, r.rem, r.icookie0, r.icookie1, r.rcookie0, r.rcookie1, r.has_rcookie === 1, r.server === 1,
    r.expires, r.serial),
});

/** ESP entries: the SPI pairing and its state (pending, established, squelched). */
export const ESP = defineTable<IpsecTables>()({
  sqlTable: 'esp',
  journalTable: TABLE_ESP,
  columns: {
    ...vpnEntry<IpsecTables>((x) => x.m.eSerial, (x) => x.m.eLan, (x) => x.m.eRem),
    out_spi: { type: 'INTEGER', array: (x) => x.m.eOutSpi, check: INT32 },
    in_spi: { type: 'INTEGER', array: (x) => x.m.eInSpi, update: true, check: INT32 },
    state: {
      type: 'INTEGER', array: (x) => x.m.eState, update: true, watch: true,
      check: oneOf({ pending: ESP_PENDING, established: ESP_ESTABLISHED, squelched: ESP_SQUELCHED }),
    },
    blocking: { type: 'INTEGER', array: (x) => x.m.eBlocking, update: true, check: FLAG },
    retries: { type: 'INTEGER', array: (x) => x.m.eRetries, update: true, check: NON_NEGATIVE },
    created: { type: 'REAL', array: (x) => x.m.eCreated },
    expires: { type: 'REAL', array: (x) => x.m.eExpires, update: true, watch: true },
    pkts_out: { type: 'REAL', array: (x) => x.m.ePktsOut, assign: true, update: true, check: NON_NEGATIVE },
    pkts_in: { type: 'REAL', array: (x) => x.m.ePktsIn, assign: true, update: true, check: NON_NEGATIVE },
  },
  capacity: (x) => x.m.opts.capacity,
  count: (x) => x.m.espCountByState[ESP_PENDING] + x.m.espCountByState[ESP_ESTABLISHED] + x.m.espCountByState[ESP_SQUELCHED],
  inUse: (x) => x.m.eInUse,
  restore: (x, r) => x.m.restoreEsp(r.lan, r.rem, r.out_spi, r.in_spi, r.state, r.blocking === 1, r.retries, r.created, r.expires, r.serial),
});

/** The PPTP call table's live side; restore looks control connections up by serial. */
export interface CallTables {
  readonly g: PptpCalls;
  readonly t: SessionTable;
  /** Session index by serial while restore runs. */
  ctlBySerial: Map<number, number> | null;
}

/**
 * PPTP calls: the Call IDs (LAN, public, remote), role and state. A call
 * whose control connection was not restored is dropped unless it is already
 * clearing.
 */
export const GRE_CALLS = defineTable<CallTables>()({
  sqlTable: 'gre_calls',
  journalTable: TABLE_GRE_CALLS,
  columns: {
    ...vpnEntry<CallTables>((x) => x.g.serial, (x) => x.g.lan, (x) => x.g.rem),
    lan_call_id: { type: 'INTEGER', array: (x) => x.g.lanId, check: PORT },
    pub_call_id: { type: 'INTEGER', array: (x) => x.g.pubId, check: PORT },
    // -1 until the remote's Call ID is learnt.
    rem_call_id: { type: 'INTEGER', array: (x) => x.g.remId, update: true, watch: true, check: inRange(NO_CALL_ID, 65535) },
    role: { type: 'INTEGER', array: (x) => x.g.role, check: oneOf({ pns: ROLE_PNS, pac: ROLE_PAC }) },
    state: {
      type: 'INTEGER', array: (x) => x.g.state, update: true,
      check: oneOf({ requested: CALL_REQUESTED, confirmed: CALL_CONFIRMED, clearing: CALL_CLEARING }),
    },
    ctl_serial: { type: 'REAL', array: (x) => x.g.ctlSerial, check: NON_NEGATIVE },
    expires: { type: 'REAL', array: (x) => x.g.expires, update: true, watch: true, infinite: true },
    last_seen: { type: 'REAL', array: (x) => x.g.lastSeen, update: true, watch: true },
    pkts_out: { type: 'REAL', array: (x) => x.g.pktsOut, assign: true, update: true, check: NON_NEGATIVE },
    pkts_in: { type: 'REAL', array: (x) => x.g.pktsIn, assign: true, update: true, check: NON_NEGATIVE },
  },
  capacity: (x) => x.g.capacity,
  count: (x) => x.g.count,
  inUse: (x) => x.g.inUse,
  restore: (x, r) => {
    if (x.ctlBySerial === null) {
      const bySerial = new Map<number, number>();
      x.t.forEachSession((s) => bySerial.set(x.t.sSerial[s], s));
      x.ctlBySerial = bySerial;
    }
    const ctl = x.ctlBySerial.get(r.ctl_serial);
    if (ctl === undefined && r.state !== CALL_CLEARING) return -1;
    return x.g.restore(r.lan, r.rem, r.lan_call_id, r.pub_call_id, r.rem_call_id, r.role, r.state, r.expires, ctl ?? 0, r.ctl_serial,
      r.serial, r.last_seen);
  },
  restored: (x) => { x.ctlBySerial = null; },
});

/** Every persisted table, in restore order: a PPTP call refers to its control connection's session. */
export const TABLES = [SESSIONS, ISAKMP, ESP, GRE_CALLS] as const;

export class SessionCodec extends TableCodec<SessionTable> {
  constructor(t: SessionTable) { super(SESSIONS, t); }
}

export class IsakmpCodec extends TableCodec<IpsecTables> {
  constructor(m: IpsecMasq, t: SessionTable) { super(ISAKMP, { m, t }); }
}

export class EspCodec extends TableCodec<IpsecTables> {
  constructor(m: IpsecMasq, t: SessionTable) { super(ESP, { m, t }); }
}

export class GreCallCodec extends TableCodec<CallTables> {
  constructor(g: PptpCalls, t: SessionTable) { super(GRE_CALLS, { g, t, ctlBySerial: null }); }
}
