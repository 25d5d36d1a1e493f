/**
 * Schema of the state database. The version lives in `PRAGMA user_version`.
 *
 * A fresh database is created at SCHEMA_VERSION with CREATE_STATEMENTS; an
 * older one is brought forward by running MIGRATIONS[v - 1] for every
 * version v from its own up to SCHEMA_VERSION - 1, each in one transaction.
 * Never edit a released migration: add a new version instead, append its
 * migration, update CREATE_STATEMENTS, and add the old CREATE statements to
 * SCHEMAS so the test migrates from it.
 *
 * Every table persisted through a codec (see store.ts) has `serial INTEGER
 * PRIMARY KEY` as first column; times are wall-clock milliseconds.
 */

/** Version 1 (first design): NAPT sessions without public address or counters. */
const V1: readonly string[] = [
  `CREATE TABLE sessions (
    serial INTEGER PRIMARY KEY, proto INTEGER NOT NULL, lan INTEGER NOT NULL, lan_port INTEGER NOT NULL,
    pub_port INTEGER NOT NULL, rem INTEGER NOT NULL, rem_port INTEGER NOT NULL, state INTEGER NOT NULL,
    created REAL NOT NULL, last_seen REAL NOT NULL, expires REAL NOT NULL)`,
];

/**
 * Version 2: the public address of each mapping (restore follows
 * wan.onAddressChange when it changed) and the traffic counters.
 */
const V2: readonly string[] = [
  `CREATE TABLE sessions (
    serial INTEGER PRIMARY KEY, proto INTEGER NOT NULL, lan INTEGER NOT NULL, lan_port INTEGER NOT NULL,
    pub_addr INTEGER NOT NULL, pub_port INTEGER NOT NULL, rem INTEGER NOT NULL, rem_port INTEGER NOT NULL,
    state INTEGER NOT NULL, created REAL NOT NULL, last_seen REAL NOT NULL, expires REAL NOT NULL,
    pkts_out REAL NOT NULL DEFAULT 0, pkts_in REAL NOT NULL DEFAULT 0,
    bytes_out REAL NOT NULL DEFAULT 0, bytes_in REAL NOT NULL DEFAULT 0)`,
  'CREATE INDEX sessions_expires ON sessions (expires)',
];

/** CREATE statements of every version, by version (for the migration tests). */
export const SCHEMAS: Readonly<Record<number, readonly string[]>> = { 1: V1, 2: V2 };

export const SCHEMA_VERSION = 2;
export const CREATE_STATEMENTS = SCHEMAS[SCHEMA_VERSION];

/**
 * MIGRATIONS[v - 1] takes a database from version v to v + 1. Version 1 rows
 * get pub_addr 0, which never equals a configured address, so restore
 * applies wan.onAddressChange to them.
 */
export const MIGRATIONS: readonly (readonly string[])[] = [
  [
    'ALTER TABLE sessions ADD COLUMN pub_addr INTEGER NOT NULL DEFAULT 0',
    'ALTER TABLE sessions ADD COLUMN pkts_out REAL NOT NULL DEFAULT 0',
    'ALTER TABLE sessions ADD COLUMN pkts_in REAL NOT NULL DEFAULT 0',
    'ALTER TABLE sessions ADD COLUMN bytes_out REAL NOT NULL DEFAULT 0',
    'ALTER TABLE sessions ADD COLUMN bytes_in REAL NOT NULL DEFAULT 0',
    'CREATE INDEX sessions_expires ON sessions (expires)',
  ],
];
