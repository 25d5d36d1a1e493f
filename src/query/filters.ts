/**
 * Connection filters and ordering, shared by the daemon (server-side
 * filtering over the control socket) and the CLI (reading the database while
 * the daemon is down). Names follow conntrack's vocabulary (feature anchors
 * §4.3): -p/--proto, -s/--src (original source = LAN endpoint), -d/--dst
 * (original destination = remote endpoint), --sport, --dport, --state; plus
 * the VPN keys --spi, --cookie, --call-id, matched against the row's `vpn`
 * detail (fields whose names contain "spi", "cookie" or "callid").
 */
import { ConnRow, ROW_STATES } from './rows';
import { Cidr, cidrContains, ipv4ToNumber, parseCidr } from '../core/ipv4-addr';

/** A filter as sent over the control socket (every field optional, all must match). */
export interface ConnFilter {
  proto?: string;
  src?: string;
  dst?: string;
  sport?: number;
  dport?: number;
  state?: string;
  lanHost?: string;
  remote?: string;
  publicPort?: number;
  spi?: string;
  cookie?: string;
  callId?: string;
}

export const FILTER_KEYS: ReadonlyArray<keyof ConnFilter> = [
  'proto', 'src', 'dst', 'sport', 'dport', 'state', 'lanHost', 'remote', 'publicPort', 'spi', 'cookie', 'callId',
];

export const PROTOCOLS = ['tcp', 'udp', 'icmp', 'isakmp', 'esp', 'gre'] as const;
const PROTO_NUMBERS: Record<string, string> = { '6': 'tcp', '17': 'udp', '1': 'icmp', '50': 'esp', '47': 'gre' };

export const SORT_KEYS = ['id', 'proto', 'lan', 'public', 'remote', 'state', 'idle', 'expires', 'packets', 'bytes'] as const;
export type SortKey = (typeof SORT_KEYS)[number];

/** Thrown for a filter or sort key that cannot be understood (a usage error). */
export class FilterError extends Error {}

/** Longest piece of a value quoted back in an error. */
const SHOWN_CHARS = 64;

/** `v` quoted for an error message, cut to SHOWN_CHARS (an argument may be any size). */
export function shown(v: unknown): string {
  const t = String(v);
  return t.length <= SHOWN_CHARS ? JSON.stringify(t) : `${JSON.stringify(t.slice(0, SHOWN_CHARS))}... (${t.length} characters)`;
}

/** Row with an optional VPN detail (ISAKMP cookies, ESP SPIs, PPTP Call IDs). */
export type AnyConnRow = ConnRow & { proto: string; vpn?: Record<string, string | number | null> };

export type Pred = (r: AnyConnRow) => boolean;

/** Address or CIDR matcher: "10.77.0.11" or "10.77.0.0/24". */
function addrMatcher(name: string, text: string): (addr: string) => boolean {
  let cidr: Cidr;
  try {
    cidr = parseCidr(text);
  } catch {
    throw new FilterError(`${name}: not an IPv4 address or prefix: ${shown(text)}`);
  }
  return (a) => cidrContains(cidr, a);
}

/** Endpoint matcher: "ADDR", "ADDR/LEN" or "ADDR:PORT". */
function endpointMatcher(name: string, text: string): (e: { addr: string; port: number }) => boolean {
  const m = /^([^:]+):(\d+)$/.exec(text);
  const addr = addrMatcher(name, m ? m[1] : text);
  const port = m ? portNumber(name, m[2]) : -1;
  return (e) => addr(e.addr) && (port < 0 || e.port === port);
}

export function portNumber(name: string, v: unknown): number {
  const n = typeof v === 'number' ? v : /^\d+$/.test(String(v)) ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new FilterError(`${name}: not a port number: ${shown(v)}`);
  return n;
}

/** A number of at most `bits` written in hex (with or without 0x), as SPIs (32 bits, RFC 4303 section 2.1) and cookies (64) are shown. */
function hexValue(name: string, text: string, bits: 32 | 64): bigint {
  const t = text.toLowerCase().replace(/^0x/, '');
  if (!/^[0-9a-f]+$/.test(t)) throw new FilterError(`${name}: not a hex number: ${shown(text)}`);
  const v = BigInt(`0x${t}`);
  if (v >> BigInt(bits) !== 0n) throw new FilterError(`${name}: ${shown(text)} is out of range (0 to 0x${'f'.repeat(bits / 4)})`);
  return v;
}

/** A state some protocol's rows show (of `proto`'s rows when it is given), upper-cased. */
function stateValue(text: string, proto: string | undefined): string {
  const s = text.toUpperCase();
  const known = proto === undefined ? [...new Set(Object.values(ROW_STATES).flat())] : ROW_STATES[proto];
  if (!known.includes(s)) throw new FilterError(`state: unknown ${proto === undefined ? '' : `${proto} `}state ${shown(text)} (one of ${known.join(', ')})`);
  return s;
}

function callIdValue(text: string): bigint {
  if (/^0x[0-9a-f]{1,4}$/i.test(text)) return BigInt(text);
  if (/^\d+$/.test(text) && Number(text) <= 65535) return BigInt(text);
  throw new FilterError(`call-id: not a Call ID (0-65535 or 0x hex): ${shown(text)}`);
}

/** Matches any `vpn` field whose lower-cased name contains `part`; string values are hex, numbers as is. */
function vpnMatcher(part: string, want: bigint): Pred {
  return (r) => {
    const vpn = r.vpn;
    if (!vpn) return false;
    for (const [k, v] of Object.entries(vpn)) {
      if (v === null || !k.toLowerCase().replace(/[^a-z]/g, '').includes(part)) continue;
      const have = typeof v === 'number' ? BigInt(v) : /^(0x)?[0-9a-f]+$/i.test(v) ? BigInt(v.startsWith('0x') ? v : `0x${v}`) : null;
      if (have === want) return true;
    }
    return false;
  };
}

/** Compiles a filter into one predicate; throws FilterError on bad values or unknown keys. */
export function compileFilter(f: ConnFilter | undefined): Pred {
  const preds: Pred[] = [];
  if (f) {
    for (const k of Object.keys(f)) if (!FILTER_KEYS.includes(k as keyof ConnFilter)) throw new FilterError(`unknown filter ${shown(k)}`);
    let proto: string | undefined;
    if (f.proto !== undefined) {
      const p = PROTO_NUMBERS[String(f.proto)] ?? String(f.proto).toLowerCase();
      proto = p;
      if (!(PROTOCOLS as readonly string[]).includes(p)) throw new FilterError(`proto: unknown protocol ${shown(f.proto)} (one of ${PROTOCOLS.join(', ')})`);
      preds.push((r) => r.proto === p);
    }
    if (f.src !== undefined) { const m = endpointMatcher('src', f.src); preds.push((r) => m(r.lan)); }
    if (f.lanHost !== undefined) { const m = endpointMatcher('lan-host', f.lanHost); preds.push((r) => m(r.lan)); }
    if (f.dst !== undefined) { const m = endpointMatcher('dst', f.dst); preds.push((r) => m(r.remote)); }
    if (f.remote !== undefined) { const m = endpointMatcher('remote', f.remote); preds.push((r) => m(r.remote)); }
    if (f.sport !== undefined) { const p = portNumber('sport', f.sport); preds.push((r) => r.lan.port === p); }
    if (f.dport !== undefined) { const p = portNumber('dport', f.dport); preds.push((r) => r.remote.port === p); }
    if (f.publicPort !== undefined) { const p = portNumber('public-port', f.publicPort); preds.push((r) => r.public.port === p); }
    if (f.state !== undefined) { const s = stateValue(String(f.state), proto); preds.push((r) => r.state.toUpperCase() === s); }
    if (f.spi !== undefined) preds.push(vpnMatcher('spi', hexValue('spi', String(f.spi), 32)));
    if (f.cookie !== undefined) preds.push(vpnMatcher('cookie', hexValue('cookie', String(f.cookie), 64)));
    if (f.callId !== undefined) preds.push(vpnMatcher('callid', callIdValue(String(f.callId))));
  }
  return (r) => {
    for (const p of preds) if (!p(r)) return false;
    return true;
  };
}

export function isEmptyFilter(f: ConnFilter | undefined): boolean {
  return !f || FILTER_KEYS.every((k) => f[k] === undefined);
}

const ipKey = (e: { addr: string; port: number }) => ipv4ToNumber(e.addr) * 65536 + e.port;

const SORT_VALUE: Record<SortKey, (r: AnyConnRow) => number | string> = {
  id: (r) => r.id,
  proto: (r) => r.proto,
  lan: (r) => ipKey(r.lan),
  public: (r) => ipKey(r.public),
  remote: (r) => ipKey(r.remote),
  state: (r) => r.state,
  idle: (r) => r.idleSeconds,
  expires: (r) => r.expiresInSeconds,
  packets: (r) => r.packets.out + r.packets.in,
  bytes: (r) => r.bytes.out + r.bytes.in,
};

/** Comparator for a sort key; ties broken by id so the order is stable. */
export function comparator(key: string, reverse = false): (a: AnyConnRow, b: AnyConnRow) => number {
  if (!(SORT_KEYS as readonly string[]).includes(key)) throw new FilterError(`sort: unknown key ${shown(key)} (one of ${SORT_KEYS.join(', ')})`);
  const v = SORT_VALUE[key as SortKey];
  const sign = reverse ? -1 : 1;
  return (a, b) => {
    const x = v(a);
    const y = v(b);
    return (x < y ? -sign : x > y ? sign : 0) || a.id - b.id;
  };
}

export interface ListQuery {
  filter?: ConnFilter;
  sort?: string;
  reverse?: boolean;
  limit?: number;
}

/** A connection id as typed or sent: a positive whole number. */
export function parseConnId(v: unknown): number {
  const n = typeof v === 'number' ? v : /^\d+$/.test(String(v)) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n <= 0) throw new FilterError(`not a connection id: ${shown(v)}`);
  return n;
}

/** A row limit as typed or sent: a whole number, 0 or more. */
export function parseLimit(v: unknown): number {
  const n = typeof v === 'number' ? v : /^\d+$/.test(String(v)) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < 0) throw new FilterError(`limit: not a whole number: ${shown(v)}`);
  return n;
}

/** Checks a whole query (filter, sort key, reverse, limit) before any row is read; throws FilterError. */
export function checkQuery(q: ListQuery): void {
  compileFilter(q.filter);
  if (q.sort !== undefined) comparator(q.sort);
  else if (q.reverse) throw new FilterError('--reverse needs --sort');
  if (q.limit !== undefined) parseLimit(q.limit);
}

/** A checked query, compiled once: what `queryRows` runs here and the daemon runs in slices. */
export interface QueryPlan {
  match: Pred;
  /** null: rows stream in table order. */
  compare: ((a: AnyConnRow, b: AnyConnRow) => number) | null;
  limit: number;
}

export function planQuery(q: ListQuery): QueryPlan {
  checkQuery(q);
  return { match: compileFilter(q.filter), compare: q.sort === undefined ? null : comparator(q.sort, q.reverse), limit: q.limit ?? Infinity };
}

/**
 * Applies filter, sort and limit to a row stream. Without a sort the rows
 * stream through one at a time; a sort has to hold the matching rows.
 */
export function* queryRows(rows: Iterable<AnyConnRow>, q: ListQuery): Generator<AnyConnRow> {
  const { match, compare, limit } = planQuery(q);
  let n = 0;
  if (compare === null) {
    if (limit === 0) return;
    for (const r of rows) {
      if (!match(r)) continue;
      yield r;
      if (++n >= limit) return;
    }
    return;
  }
  const kept: AnyConnRow[] = [];
  for (const r of rows) if (match(r)) kept.push(r);
  kept.sort(compare);
  yield* kept.slice(0, limit);
}
