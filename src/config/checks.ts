/**
 * How config values are checked: a Checker that collects every problem (not
 * just the first) and names each by its full path, e.g.
 * `forwards[1].publicPort`, so one `vpnmasq config check FILE` shows
 * everything that needs fixing; and the rules for single values (interface
 * names, addresses, prefixes, paths, listen addresses).
 */
import { Cidr, formatCidr, ipv4Equal, isIPv4, parseCidr } from '../core/ipv4-addr';
import type { PortRange } from '../core/forward';
import { childField } from './json';

// ---------------------------------------------------------------------------
// Errors

export interface ConfigProblem {
  /** Dotted/bracketed path of the offending field; '' for the whole file. */
  field: string;
  message: string;
}

export class ConfigError extends Error {
  constructor(readonly source: string, readonly problems: ConfigProblem[]) {
    super(problems.map((p) => (p.field ? `${source}: ${p.field}: ${p.message}` : `${source}: ${p.message}`)).join('\n'));
    this.name = 'ConfigError';
  }
}

// ---------------------------------------------------------------------------
// Addresses

/** Parses `a.b.c.d/len` (the length is required here); host bits may be set. */
export function parsePrefix(text: string): Cidr | undefined {
  if (!text.includes('/')) return undefined;
  try {
    return parseCidr(text);
  } catch {
    return undefined;
  }
}

/** Parses `HOST:PORT` where HOST is an IPv4 literal or `localhost` (bound as 127.0.0.1); port 0..65535. */
export function parseListenAddress(text: string): { host: string; port: number } | undefined {
  const m = /^([^:]+):(\d{1,5})$/.exec(text);
  if (!m || (m[1] !== 'localhost' && !isIPv4(m[1]))) return undefined;
  const port = Number(m[2]);
  if (port > 65535) return undefined;
  return { host: m[1] === 'localhost' ? '127.0.0.1' : m[1], port };
}

// ---------------------------------------------------------------------------
// Field checks

export function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** How a wrong value is shown after "got": `string "x"`, `number 1.5`, `array`, `null`. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'string') return `string ${JSON.stringify(value)}`;
  if (typeof value === 'object') return 'object';
  return `${typeof value} ${String(value)}`;
}

function levenshtein(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length];
}

/** The candidate within edit distance 2 of `word`, if any (the nearest one). */
function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const candidate of candidates) {
    const distance = levenshtein(word, candidate);
    if (distance < bestDistance) [best, bestDistance] = [candidate, distance];
  }
  return best;
}

export interface IntegerBounds {
  min: number;
  max: number;
  /** Why `min` is the minimum, e.g. an RFC requirement; shown when the value is below it. */
  minReason?: string;
}

/**
 * Checks raw JSON values field by field. Each check returns the value when
 * it is valid, or undefined when it is absent or invalid (having recorded
 * the problem), so callers can write `check.integer(...) ?? DEFAULT`.
 */
export class Checker {
  readonly problems: ConfigProblem[] = [];
  /** Fields that are accepted but do nothing any more. */
  readonly warnings: ConfigProblem[] = [];

  report(field: string, message: string): void {
    this.problems.push({ field, message });
  }

  /**
   * Members of an object section (absent → empty), reporting fields not in
   * `keys`. A `retired` field (name -> why) is accepted with a warning, so a
   * config written for an older vpnmasq still starts.
   */
  object<K extends string>(field: string, value: unknown, keys: readonly K[], retired: Readonly<Record<string, string>> = {}): Partial<Record<K, unknown>> {
    if (value === undefined) return {};
    if (!isPlainObject(value)) {
      this.report(field, `expected object, got ${describe(value)}`);
      return {};
    }
    for (const key of Object.keys(value)) {
      if ((keys as readonly string[]).includes(key)) continue;
      if (Object.hasOwn(retired, key)) {
        this.warnings.push({ field: childField(field, key), message: `no longer used: ${retired[key]}; remove it` });
        continue;
      }
      const suggestion = closest(key, keys);
      this.report(childField(field, key), `unknown field${suggestion ? ` (did you mean "${suggestion}"?)` : ''}`);
    }
    return value as Partial<Record<K, unknown>>;
  }

  required(field: string, value: unknown): boolean {
    if (value !== undefined) return true;
    this.report(field, 'missing required field');
    return false;
  }

  integer(field: string, value: unknown, bounds: IntegerBounds): number | undefined {
    if (value === undefined) return undefined;
    if (typeof value !== 'number' || !Number.isInteger(value)) {
      this.report(field, `expected integer, got ${describe(value)}`);
      return undefined;
    }
    const { min, max, minReason } = bounds;
    if (value < min && minReason) {
      this.report(field, `must be at least ${min} (${minReason}), got ${value}`);
    } else if (value < min || value > max) {
      this.report(field, `must be between ${min} and ${max}, got ${value}`);
    } else {
      return value;
    }
    return undefined;
  }

  boolean(field: string, value: unknown): boolean | undefined {
    if (value === undefined || typeof value === 'boolean') return value;
    this.report(field, `expected boolean, got ${describe(value)}`);
    return undefined;
  }

  /** A string, optionally checked by `problem` (which returns a message for bad values). */
  string(field: string, value: unknown, problem?: (text: string) => string | undefined): string | undefined {
    if (value === undefined) return undefined;
    if (typeof value !== 'string') {
      this.report(field, `expected string, got ${describe(value)}`);
      return undefined;
    }
    const message = problem?.(value);
    if (message === undefined) return value;
    this.report(field, message);
    return undefined;
  }

  choice<T extends string>(field: string, value: unknown, options: readonly T[]): T | undefined {
    if (value === undefined || (options as readonly unknown[]).includes(value)) return value as T | undefined;
    this.report(field, `expected one of ${options.map((o) => JSON.stringify(o)).join(', ')}, got ${describe(value)}`);
    return undefined;
  }

  /** A non-empty array, each element checked by `element` (which returns undefined for bad ones). */
  list<T>(field: string, value: unknown, element: (field: string, value: unknown) => T | undefined): T[] | undefined {
    if (value === undefined) return undefined;
    if (!Array.isArray(value)) {
      this.report(field, `expected array, got ${describe(value)}`);
      return undefined;
    }
    if (value.length === 0) {
      this.report(field, 'must not be empty');
      return undefined;
    }
    const items = value.map((item, i) => element(`${field}[${i}]`, item));
    return items.every((item) => item !== undefined) ? (items as T[]) : undefined;
  }

  /** A `[low, high]` port range inside `bounds` with at least `minPorts` ports. */
  portRange(field: string, value: unknown, bounds: { min: number; max: number; minPorts: number }): PortRange | undefined {
    if (value === undefined) return undefined;
    if (!Array.isArray(value) || value.length !== 2) {
      this.report(field, `expected [low, high], got ${describe(value)}`);
      return undefined;
    }
    const low = this.integer(`${field}[0]`, value[0], bounds);
    const high = this.integer(`${field}[1]`, value[1], bounds);
    if (low === undefined || high === undefined) return undefined;
    if (low > high) {
      this.report(field, `low port ${low} is above high port ${high}`);
    } else if (high - low + 1 < bounds.minPorts) {
      this.report(field, `must contain at least ${bounds.minPorts} ports, got ${high - low + 1} (${low}-${high})`);
    } else {
      return [low, high];
    }
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// Value rules

/** Linux IFNAMSIZ is 16 including the terminating NUL. */
export function interfaceNameProblem(name: string): string | undefined {
  return /^[A-Za-z0-9_.-]{1,15}$/.test(name) ? undefined : `invalid interface name ${JSON.stringify(name)} (1-15 characters from A-Z a-z 0-9 _ . -)`;
}

export function ipv4Problem(text: string): string | undefined {
  return isIPv4(text) ? undefined : `invalid IPv4 address ${JSON.stringify(text)}`;
}

export function prefixProblem(text: string): string | undefined {
  const prefix = parsePrefix(text);
  if (!prefix) return `invalid IPv4 prefix ${JSON.stringify(text)} (expected a.b.c.d/len)`;
  if (ipv4Equal(prefix.network, prefix.address)) return undefined;
  return `host bits set in ${text} (did you mean ${formatCidr(prefix)}?)`;
}

export function absolutePathProblem(path: string): string | undefined {
  return path.startsWith('/') ? undefined : `must be an absolute path, got ${JSON.stringify(path)}`;
}

/** sockaddr_un.sun_path holds 108 bytes including the terminating NUL. */
export function socketPathProblem(path: string): string | undefined {
  if (Buffer.byteLength(path) > 107) return `socket path is longer than 107 bytes`;
  return absolutePathProblem(path);
}

/** The shadow-utils default NAME_REGEX. */
export function groupNameProblem(name: string): string | undefined {
  return /^[a-z_][a-z0-9_-]{0,31}$/.test(name) ? undefined : `invalid group name ${JSON.stringify(name)}`;
}

export function listenProblem(text: string): string | undefined {
  const address = parseListenAddress(text);
  if (address && address.port > 0) return undefined;
  return `expected "HOST:PORT" with an IPv4 address or localhost and a port 1-65535, got ${JSON.stringify(text)}`;
}

