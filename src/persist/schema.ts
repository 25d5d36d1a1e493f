/**
 * Schema of the state database. The version lives in `PRAGMA user_version`.
 *
 * A fresh database is created at SCHEMA_VERSION with CREATE_STATEMENTS,
 * generated from the table specs (tables.ts); an older one is brought forward
 * by running MIGRATIONS[v - 1] for every version v from its own up to
 * SCHEMA_VERSION - 1, each in one transaction. Released versions are history
 * and stay literal text here. To change a table: change its spec, bump
 * SCHEMA_VERSION, append the migration, and freeze the previous version's
 * statements in SCHEMAS (version 3 is `[...V2, ...VPN_TABLES]`), so
 * the test migrates every old version and compares the result with a fresh
 * database.
 */
import { createStatements } from './columns';
import { TABLES } from './tables';

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

/** Added in version 3: the VPN tables (ISAKMP, ESP, PPTP calls; tables.ts). */
const VPN_TABLES: readonly string[] = [
  `CREATE TABLE isakmp (
    serial INTEGER PRIMARY KEY, lan INTEGER NOT NULL, rem INTEGER NOT NULL, pub_addr INTEGER NOT NULL,
    icookie0 INTEGER NOT NULL, icookie1 INTEGER NOT NULL, rcookie0 INTEGER NOT NULL, rcookie1 INTEGER NOT NULL,
    has_rcookie INTEGER NOT NULL, server INTEGER NOT NULL, expires REAL NOT NULL)`,
  `CREATE TABLE esp (
    serial INTEGER PRIMARY KEY, lan INTEGER NOT NULL, rem INTEGER NOT NULL, pub_addr INTEGER NOT NULL,
    out_spi INTEGER NOT NULL, in_spi INTEGER NOT NULL, state INTEGER NOT NULL, blocking INTEGER NOT NULL,
    retries INTEGER NOT NULL, created REAL NOT NULL, expires REAL NOT NULL,
    pkts_out REAL NOT NULL, pkts_in REAL NOT NULL)`,
  `CREATE TABLE gre_calls (
    serial INTEGER PRIMARY KEY, lan INTEGER NOT NULL, rem INTEGER NOT NULL, pub_addr INTEGER NOT NULL,
    lan_call_id INTEGER NOT NULL, pub_call_id INTEGER NOT NULL, rem_call_id INTEGER NOT NULL,
    role INTEGER NOT NULL, state INTEGER NOT NULL, ctl_serial REAL NOT NULL, expires REAL NOT NULL,
    last_seen REAL NOT NULL, pkts_out REAL NOT NULL, pkts_in REAL NOT NULL)`,
];

/** Version 3: version 2 plus the ISAKMP, ESP and PPTP call tables. */
const V3: readonly string[] = [...V2, ...VPN_TABLES];

/**
 * Counters kept across restarts (the VPN event counts of `vpnmasq stats` and
 * vpnmasq_vpn_events_total), one row per counter name.
 */
export const COUNTERS_TABLE = 'CREATE TABLE counters (name TEXT PRIMARY KEY, value REAL NOT NULL)';

export const SCHEMA_VERSION = 4;

/**
 * Rows restore could not take, with their values and the reason (store.ts).
 * A side table, created when missing at any version: older and newer
 * vpnmasq versions leave a table they do not know alone.
 */
export const QUARANTINE_TABLE = 'quarantine';

/** Tables outside the versioned schema, created when missing whatever the version. */
export const SIDE_TABLES: readonly string[] = [
  `CREATE TABLE IF NOT EXISTS ${QUARANTINE_TABLE} (
    id INTEGER PRIMARY KEY, quarantined_at REAL NOT NULL, source TEXT NOT NULL, serial, reason TEXT NOT NULL, row TEXT NOT NULL)`,
];
/** The current version (4: version 3 with the ISAKMP packet counters and the counters table), from the specs. */
export const CREATE_STATEMENTS: readonly string[] = [...TABLES.flatMap((spec) => createStatements(spec)), COUNTERS_TABLE];

/** CREATE statements of every version, by version (for the migration tests). */
export const SCHEMAS: Readonly<Record<number, readonly string[]>> = { 1: V1, 2: V2, 3: V3, [SCHEMA_VERSION]: CREATE_STATEMENTS };

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
  VPN_TABLES,
  [
    'ALTER TABLE isakmp ADD COLUMN pkts_out REAL NOT NULL DEFAULT 0',
    'ALTER TABLE isakmp ADD COLUMN pkts_in REAL NOT NULL DEFAULT 0',
    COUNTERS_TABLE,
  ],
];
