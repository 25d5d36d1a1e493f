/**
 * What the config may say about the store (its `state` section and
 * `wan.onAddressChange`): the values the store understands, so the config's
 * checks offer exactly these. Imports nothing, so reading a config loads no
 * table code.
 */

/** `state.synchronous`: SQLite's PRAGMA synchronous for the WAL (store.ts says what each costs). */
export const SYNCHRONOUS_MODES = ['normal', 'full', 'off'] as const;
export type Synchronous = (typeof SYNCHRONOUS_MODES)[number];

/** Where and how the store writes (the `state` section of the config). */
export interface StoreConfig {
  path: string;
  synchronous: Synchronous;
  /** Period of the update flush and health check. */
  flushIntervalMs: number;
}

/** What restore (and the daemon, when the WAN address changes) does with entries under another public address. */
export const ADDRESS_CHANGE_POLICIES = ['move', 'drop'] as const;
export type AddressChangePolicy = (typeof ADDRESS_CHANGE_POLICIES)[number];
