/**
 * Read-only access to the state database for the CLI while the daemon is
 * down. Rows are streamed (better-sqlite3 `iterate`), so a table of a million
 * connections never sits in memory at once.
 */
import Database from 'better-sqlite3';
import { ConnRow } from '../query/rows';
import { tcpStateName } from '../nat/tcp-tracker';
import { PROTO_ICMP, PROTO_TCP } from '../wire/ipv4';
import { SCHEMA_VERSION } from './schema';
import { int32ToIpv4 } from '../core/ipv4-addr';

export interface StateReader {
  /** Schema version of the file. */
  readonly version: number;
  /** Connection rows in serial order; expired rows are skipped (the daemon discards them at start). */
  iterate(now?: number): Generator<ConnRow>;
  close(): void;
}

const COLUMNS = ['serial', 'proto', 'lan', 'lan_port', 'pub_addr', 'pub_port', 'rem', 'rem_port',
  'state', 'last_seen', 'expires', 'pkts_out', 'pkts_in', 'bytes_out', 'bytes_in'];

export function openReadOnly(file: string): StateReader {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  const version = db.pragma('user_version', { simple: true }) as number;
  if (version !== SCHEMA_VERSION) {
    db.close();
    throw new Error(`${file}: schema version ${version}, this vpnmasq reads ${SCHEMA_VERSION} (start the daemon once to migrate)`);
  }
  const select = db.prepare(`SELECT ${COLUMNS.join(', ')} FROM sessions ORDER BY serial`).raw();
  return {
    version,
    *iterate(now = Date.now()): Generator<ConnRow> {
      for (const v of select.iterate() as IterableIterator<number[]>) {
        if (v[10] > now) yield storedRow(v, now);
      }
    },
    close: () => db.close(),
  };
}

function storedRow(v: number[], now: number): ConnRow {
  const [serial, proto, lan, lanPort, pubAddr, pubPort, rem, remPort, state, lastSeen, expires, pktsOut, pktsIn, bytesOut, bytesIn] = v;
  const name = proto === PROTO_TCP ? 'tcp' : proto === PROTO_ICMP ? 'icmp' : 'udp';
  return {
    id: serial,
    proto: name,
    lan: { addr: int32ToIpv4(lan), port: lanPort },
    public: { addr: int32ToIpv4(pubAddr), port: pubPort },
    remote: { addr: int32ToIpv4(rem), port: remPort },
    state: name === 'tcp' ? tcpStateName(state) : pktsIn > 0 ? 'REPLIED' : 'UNREPLIED',
    idleSeconds: Math.max(0, Math.round((now - lastSeen) / 1000)),
    expiresInSeconds: Math.max(0, Math.round((expires - now) / 1000)),
    packets: { out: pktsOut, in: pktsIn },
    bytes: { out: bytesOut, in: bytesIn },
  };
}
