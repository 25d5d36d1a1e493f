/**
 * Read-only access to the state database for the CLI while the daemon is
 * down. Rows are streamed (better-sqlite3 `iterate`), so a table of a million
 * connections never sits in memory at once, and decoded and checked by the
 * tables' column specs; a row that fails its checks is skipped (the daemon
 * would not restore it either).
 */
import Database from 'better-sqlite3';
import { CheckContext, columnNames, RequiredColumn, Row, RowDecoder, TableSpec } from './columns';
import { SCHEMA_VERSION } from './schema';

export interface StateReader {
  /** Schema version of the file. */
  readonly version: number;
  /** The stored rows of a table in serial order. */
  rows<N extends string>(spec: TableSpec<never, N>): Generator<Row<N | RequiredColumn>>;
  /** The stored row with this serial (its primary key), or null. */
  byId<N extends string>(spec: TableSpec<never, N>, serial: number): Row<N | RequiredColumn> | null;
  close(): void;
}

/** `lanPrefixes` (from the config, as [network, mask] int32 pairs) lets the reader skip rows the daemon would quarantine. */
export function openStateReader(file: string, lanPrefixes: CheckContext['lanPrefixes'] = null): StateReader {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  const version = db.pragma('user_version', { simple: true }) as number;
  if (version !== SCHEMA_VERSION) {
    db.close();
    throw new Error(`${file}: schema version ${version}, this vpnmasq reads ${SCHEMA_VERSION} (start the daemon once to migrate)`);
  }
  const select = (spec: TableSpec<never, string>, where: string) =>
    db.prepare(`SELECT ${columnNames(spec).join(', ')} FROM ${spec.sqlTable} ${where}`).raw();
  const decode = <N extends string>(d: RowDecoder<N>, v: unknown[]): Row<N | RequiredColumn> | null =>
    (d.decode(v, { now: Date.now(), lanPrefixes }) === undefined ? d.copy() : null);
  return {
    version,
    *rows<N extends string>(spec: TableSpec<never, N>) {
      const d = new RowDecoder(spec);
      for (const v of select(spec, 'ORDER BY serial').iterate() as IterableIterator<unknown[]>) {
        const row = decode(d, v);
        if (row !== null) yield row;
      }
    },
    byId<N extends string>(spec: TableSpec<never, N>, serial: number) {
      const v = select(spec, 'WHERE serial = ?').get(serial) as unknown[] | undefined;
      return v === undefined ? null : decode(new RowDecoder(spec), v);
    },
    close: () => db.close(),
  };
}
