/**
 * Connection rows read from the state database while the daemon is down
 * (`vpnmasq conns list|show`): the NAPT sessions, as the daemon would restore
 * them. Rows whose deadline passed are left out (the daemon discards them at
 * start).
 */
import { RequiredColumn, Row } from '../persist/columns';
import { openStateReader } from '../persist/reader';
import { SESSIONS } from '../persist/tables';
import { tcpStateName } from '../nat/tcp-tracker';
import { PROTO_ICMP, PROTO_TCP } from '../wire/ipv4';
import { int32ToIpv4 } from '../core/ipv4-addr';
import { ConnRow } from './rows';

type StoredSession = Row<keyof typeof SESSIONS.columns | RequiredColumn>;

export interface StoredConns {
  /** Unexpired rows in id order. */
  iterate(now?: number): Generator<ConnRow>;
  /** The unexpired row with this id, or null: one primary-key lookup. */
  byId(id: number, now?: number): ConnRow | null;
  close(): void;
}

/**
 * Opens the database read-only; throws when it cannot be read or has another
 * schema version. With the LAN prefixes ([network, mask] int32 pairs) rows
 * the daemon would quarantine are left out too.
 */
export function openReadOnly(file: string, lanPrefixes: ReadonlyArray<readonly [number, number]> | null = null): StoredConns {
  const reader = openStateReader(file, lanPrefixes);
  return {
    *iterate(now = Date.now()) {
      for (const r of reader.rows(SESSIONS)) if (r.expires > now) yield storedRow(r, now);
    },
    byId(id, now = Date.now()) {
      const r = reader.byId(SESSIONS, id);
      return r !== null && r.expires > now ? storedRow(r, now) : null;
    },
    close: () => reader.close(),
  };
}

function storedRow(r: StoredSession, now: number): ConnRow {
  const name = r.proto === PROTO_TCP ? 'tcp' : r.proto === PROTO_ICMP ? 'icmp' : 'udp';
  return {
    id: r.serial,
    proto: name,
    lan: { addr: int32ToIpv4(r.lan), port: r.lan_port },
    public: { addr: int32ToIpv4(r.pub_addr), port: r.pub_port },
    remote: { addr: int32ToIpv4(r.rem), port: r.rem_port },
    state: name === 'tcp' ? tcpStateName(r.state) : r.pkts_in > 0 ? 'REPLIED' : 'UNREPLIED',
    idleSeconds: Math.max(0, Math.round((now - r.last_seen) / 1000)),
    expiresInSeconds: Math.max(0, Math.round((r.expires - now) / 1000)),
    packets: { out: r.pkts_out, in: r.pkts_in },
    bytes: { out: r.bytes_out, in: r.bytes_in },
  };
}
