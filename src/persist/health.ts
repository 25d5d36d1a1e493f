/**
 * Health of the state database as operators see it (status, metrics, log),
 * and the classification of the faults the store survives.
 */

export interface DbHealth {
  /** Writes reach the database; false while a fault lasts. */
  healthy: boolean;
  /** Table events not yet committed (queued, or the live rows still to rewrite after a fault). */
  pendingWrites: number;
  /** The last fault, kept after recovery for the operator: `CODE: message`. */
  lastError: string | null;
  /** When the last fault happened (wall-clock ms), or null. */
  lastErrorAt: number | null;
  rowsRestored: number;
  /** Rows dropped at start as their timers or the address policy say (expired, another public address, a call without its control connection). */
  rowsDiscarded: number;
  /** Rows that could not be restored (a value that cannot be right, a conflict, no room): kept in the quarantine table with their reason. */
  rowsQuarantined: number;
  /** The file was moved aside (corrupt, a wrong schema, restore failed, an explicit downgrade): its new name. */
  movedAside: string | null;
  /** Why it was moved aside, in plain words. */
  movedAsideReason: string | null;
  /** The file is left untouched and not used (a newer schema version): why, and what to do. */
  refused: string | null;
  /** WAL checkpoints run on their own thread (checkpointer.ts); false before the store started and after that thread failed (they run inside commits then). */
  checkpointThread: boolean;
}

/** Health of a daemon that persists nothing. */
export const NOT_PERSISTED: DbHealth = {
  healthy: true, pendingWrites: 0, lastError: null, lastErrorAt: null, rowsRestored: 0, rowsDiscarded: 0, rowsQuarantined: 0,
  movedAside: null, movedAsideReason: null, refused: null, checkpointThread: false,
};

/** What the store does about an error. */
export const enum Fault {
  /** Another connection holds the lock: retry soon, nothing is wrong with the file. */
  BUSY,
  /** The file is not a database or is damaged: move it aside (at start) or rewrite it. */
  CORRUPT,
  /** Disk full, read-only, permissions, I/O: retry until it clears. */
  IO,
}

/** A database at the current version whose tables are not the ones this vpnmasq writes. */
export const SCHEMA_MISMATCH = 'SCHEMA_MISMATCH';
/** A database written by a newer vpnmasq. */
export const SCHEMA_NEWER = 'SCHEMA_NEWER';

const CORRUPT_CODES = new Set(['SQLITE_CORRUPT', 'SQLITE_NOTADB', SCHEMA_MISMATCH]);

/** better-sqlite3 errors carry an extended code like SQLITE_BUSY_SNAPSHOT; node fs errors a code like EACCES. */
export function classify(e: unknown): Fault {
  const code = errorCode(e);
  const primary = code.replace(/^(SQLITE_[A-Z]+)_.*$/, '$1');
  if (primary === 'SQLITE_BUSY' || primary === 'SQLITE_LOCKED') return Fault.BUSY;
  if (CORRUPT_CODES.has(primary)) return Fault.CORRUPT;
  return Fault.IO;
}

export function errorCode(e: unknown): string {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : 'ERROR';
}

export function describeError(e: unknown): string {
  return `${errorCode(e)}: ${e instanceof Error ? e.message : String(e)}`;
}
