/**
 * The daemon's configuration file: JSON with full-line `#` and `//`
 * comments, validated into a fully resolved {@link Config}.
 *
 * Validation collects every problem (not just the first) and names each by
 * its full path, e.g. `forwards[1].publicPort`, so one run of
 * `vpnmasq check-config` shows everything that needs fixing.
 */
import { readFileSync } from 'node:fs';
import { Cidr, cidrContains, formatCidr, ipv4Equal, isIPv4, parseCidr } from '../core/ipv4-addr';

export const DEFAULT_CONFIG_PATH = '/etc/vpnmasq/vpnmasq.json';

export type WanMode = 'shared' | 'dedicated';
export type AddressChangePolicy = 'move' | 'drop';
export type FilteringMode = 'address-port' | 'endpoint-independent';
export type NonPptpGrePolicy = 'drop' | 'address-only';
export type SyncMode = 'normal' | 'full' | 'off';
export type LogFormat = 'journal' | 'json';
export type LogLevel = 'error' | 'warn' | 'info' | 'debug';
/** Inclusive [low, high] port range. */
export type PortRange = [number, number];

export type TunIoMode = 'auto' | 'uring' | 'threads';
export interface TunConfig { name: string; mtu: number; offloads: boolean; io: TunIoMode }
export interface LanConfig { interfaces: string[]; prefixes: string[] }
export interface WanConfig {
  interface: string;
  mode: WanMode;
  /** Required in dedicated mode; in shared mode null means "use the WAN interface's address". */
  publicAddress: string | null;
  onAddressChange: AddressChangePolicy;
}
export interface PortsConfig { range: PortRange; lowRange: PortRange | null; preserve: boolean }
/** Idle timeouts, in seconds. */
export interface TimeoutsConfig {
  tcpEstablished: number;
  tcpTransitory: number;
  udp: number;
  icmp: number;
  fragment: number;
  ipsec: number;
  espPending: number;
  espSquelch: number;
  pptpGrace: number;
}
export interface LimitsConfig { maxSessions: number; maxHeldFragments: number }
export interface IpsecConfig { parallel: boolean; guessing: boolean; guessMax: number; retries: number }
export interface PptpConfig { nonPptpGre: NonPptpGrePolicy }
export interface PortForward { proto: 'tcp' | 'udp'; publicPort: number; lanAddress: string; lanPort: number }
export interface ProtocolForward { proto: 'esp' | 'gre'; lanAddress: string }
export type Forward = PortForward | ProtocolForward;
/** null: no clamping; 'auto': clamp to the TUN MTU; a number: clamp to that MSS. */
export type MssClamp = null | 'auto' | number;
export interface StateConfig { path: string; synchronous: SyncMode; groupCommitMs: number; flushIntervalMs: number }
export interface LogConfig { format: LogFormat; level: LogLevel; rateLimitPerMinute: number }
export interface MetricsConfig { listen: string }
export interface ControlConfig { socket: string; group: string }

export interface Config {
  tun: TunConfig;
  lan: LanConfig;
  wan: WanConfig;
  ports: PortsConfig;
  timeouts: TimeoutsConfig;
  limits: LimitsConfig;
  filtering: FilteringMode;
  ipsec: IpsecConfig;
  pptp: PptpConfig;
  forwards: Forward[];
  mssClamp: MssClamp;
  state: StateConfig;
  log: LogConfig;
  metrics: MetricsConfig | null;
  control: ControlConfig;
}

/** Values used for absent fields. `wan.interface` has none: it is required. */
export const DEFAULTS = {
  tun: { name: 'vpnmasq0', mtu: 1500, offloads: true, io: 'auto' as TunIoMode },
  lan: { interfaces: ['lan0'], prefixes: ['10.77.0.0/24'] },
  wan: { mode: 'shared', publicAddress: null, onAddressChange: 'move' },
  ports: {
    shared: { range: [61000, 65535], lowRange: null },
    dedicated: { range: [1024, 65535], lowRange: [1, 1023] },
    preserve: true,
  },
  timeouts: {
    tcpEstablished: 7440,
    tcpTransitory: 240,
    udp: 300,
    icmp: 60,
    fragment: 5,
    ipsec: 1800,
    espPending: 120,
    espSquelch: 30,
    pptpGrace: 30,
  },
  limits: { maxSessions: 262144, maxHeldFragments: 512 },
  filtering: 'address-port',
  ipsec: { parallel: true, guessing: true, guessMax: 5, retries: 5 },
  pptp: { nonPptpGre: 'drop' },
  mssClamp: null,
  state: { path: '/var/lib/vpnmasq/state.db', synchronous: 'normal', groupCommitMs: 2, flushIntervalMs: 1000 },
  log: { format: 'journal', level: 'info', rateLimitPerMinute: 60 },
  metrics: null,
  control: { socket: '/run/vpnmasq/control.sock', group: 'vpnmasq' },
} as const;

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
// Public entry points

export function loadConfig(path: string = DEFAULT_CONFIG_PATH): Config {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(path, [{ field: '', message: `cannot read file: ${(err as Error).message}` }]);
  }
  return parseConfig(text, path);
}

/** Parses and validates a config file's text; `source` names the file in error messages. */
export function parseConfig(text: string, source: string): Config {
  const reader = new JsonReader(blankCommentLines(text));
  let document: unknown;
  try {
    document = reader.document();
  } catch (err) {
    if (!(err instanceof JsonSyntaxError)) throw err;
    const { line, column } = lineAndColumn(text, err.offset);
    throw new ConfigError(source, [{ field: '', message: `syntax error at line ${line}, column ${column}: ${err.message}` }]);
  }
  const check = new Checker();
  for (const dup of reader.duplicateFields) {
    const { line, column } = lineAndColumn(text, dup.offset);
    check.report(dup.field, `duplicate field at line ${line}, column ${column}`);
  }
  const config = resolveConfig(document, check);
  if (check.problems.length > 0) throw new ConfigError(source, check.problems);
  return config;
}

/** Paths of the fields whose values differ between two configs, e.g. `['timeouts.udp', 'forwards']`. */
export function configDiff(a: Config, b: Config): string[] {
  const changed: string[] = [];
  const walk = (x: unknown, y: unknown, field: string): void => {
    if (isPlainObject(x) && isPlainObject(y)) {
      for (const key of new Set([...Object.keys(x), ...Object.keys(y)])) walk(x[key], y[key], childField(field, key));
    } else if (JSON.stringify(x) !== JSON.stringify(y)) {
      changed.push(field);
    }
  };
  walk(a, b, '');
  return changed;
}

/** Fields that only take effect on restart: they define the interfaces, address plan and database. */
const RESTART_ONLY_FIELDS = ['tun.name', 'tun.io', 'wan.mode', 'wan.interface', 'lan.interfaces', 'lan.prefixes', 'state.path'];

/** Whether the running daemon can switch from config `a` to config `b` without a restart. */
export function reloadable(a: Config, b: Config): { ok: true } | { ok: false; reason: string } {
  const blocked = configDiff(a, b).filter((field) => RESTART_ONLY_FIELDS.includes(field));
  if (blocked.length === 0) return { ok: true };
  return { ok: false, reason: `${blocked.join(', ')} cannot change while running; restart vpnmasq to apply` };
}

// ---------------------------------------------------------------------------
// Addresses

/** Parses `a.b.c.d/len` (the length is required here); host bits may be set. */
function parsePrefix(text: string): Cidr | undefined {
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
// JSON with comment lines and source positions

/** Replaces full-line comments with spaces so offsets still match the original text. */
function blankCommentLines(text: string): string {
  return text.replace(/^\uFEFF/, ' ').replace(/^[ \t]*(?:#|\/\/).*$/gm, (line) => ' '.repeat(line.length));
}

function lineAndColumn(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, offset);
  const line = before.split('\n').length;
  return { line, column: offset - before.lastIndexOf('\n') };
}

class JsonSyntaxError extends Error {
  constructor(message: string, readonly offset: number) {
    super(message);
  }
}

const JSON_SCALAR = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null/y;
const JSON_ESCAPE = /\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})/y;
const BARE_WORD = /[A-Za-z_][\w.-]*/y;

/**
 * A strict JSON parser that reports the offset of a syntax error (V8's
 * JSON.parse does not always say where) and records duplicate fields, which
 * JSON.parse silently resolves to the last value.
 */
class JsonReader {
  readonly duplicateFields: { field: string; offset: number }[] = [];
  private offset = 0;

  constructor(private readonly text: string) {}

  document(): unknown {
    const value = this.value('');
    this.skipWhitespace();
    if (this.offset < this.text.length) throw this.error(`unexpected ${this.found()} after the end of the document`);
    return value;
  }

  private value(field: string): unknown {
    this.skipWhitespace();
    const c = this.text[this.offset];
    if (c === '{') return this.object(field);
    if (c === '[') return this.array(field);
    if (c === '"') return this.string();
    const scalar = this.match(JSON_SCALAR);
    if (scalar !== undefined) return JSON.parse(scalar);
    const word = this.match(BARE_WORD);
    if (word !== undefined) {
      this.offset -= word.length;
      throw this.error(`unexpected word ${word}; strings must be in double quotes`);
    }
    throw this.error(`expected a value, found ${this.found()}`);
  }

  private object(field: string): Record<string, unknown> {
    // A null-prototype object keeps a "__proto__" key an ordinary (unknown) field.
    const result: Record<string, unknown> = Object.create(null);
    this.offset++;
    if (this.closes('}')) return result;
    for (;;) {
      this.skipWhitespace();
      if (this.text[this.offset] !== '"') throw this.error(`expected a double-quoted field name, found ${this.found()}`);
      const keyOffset = this.offset;
      const key = this.string();
      const child = childField(field, key);
      this.skipWhitespace();
      if (this.text[this.offset] !== ':') throw this.error(`expected ':' after field name, found ${this.found()}`);
      this.offset++;
      if (Object.hasOwn(result, key)) this.duplicateFields.push({ field: child, offset: keyOffset });
      result[key] = this.value(child);
      if (this.separatorCloses('}')) return result;
    }
  }

  private array(field: string): unknown[] {
    const result: unknown[] = [];
    this.offset++;
    if (this.closes(']')) return result;
    for (;;) {
      result.push(this.value(`${field}[${result.length}]`));
      if (this.separatorCloses(']')) return result;
    }
  }

  /** Consumes `close` (after whitespace) if it comes next. */
  private closes(close: string): boolean {
    this.skipWhitespace();
    if (this.text[this.offset] !== close) return false;
    this.offset++;
    return true;
  }

  /** After a member: consumes ',' (returning false) or `close` (returning true). */
  private separatorCloses(close: '}' | ']'): boolean {
    if (this.closes(close)) return true;
    if (this.text[this.offset] !== ',') throw this.error(`expected ',' or '${close}', found ${this.found()}`);
    this.offset++;
    this.skipWhitespace();
    if (this.text[this.offset] === close) throw this.error(`trailing comma before '${close}'`);
    return false;
  }

  private string(): string {
    const start = this.offset++;
    for (;;) {
      const c = this.text.charCodeAt(this.offset);
      if (c === 0x22) break;
      if (Number.isNaN(c) || c === 0x0a) throw this.error('unterminated string');
      if (c < 0x20) throw this.error('control character in string (escape it)');
      if (c === 0x5c) {
        if (this.match(JSON_ESCAPE) === undefined) throw this.error('invalid escape sequence in string');
      } else {
        this.offset++;
      }
    }
    this.offset++;
    return JSON.parse(this.text.slice(start, this.offset)) as string;
  }

  /** Consumes and returns a sticky regexp's match at the current offset. */
  private match(pattern: RegExp): string | undefined {
    pattern.lastIndex = this.offset;
    const m = pattern.exec(this.text);
    if (!m) return undefined;
    this.offset += m[0].length;
    return m[0];
  }

  private skipWhitespace(): void {
    while (/[ \t\r\n]/.test(this.text[this.offset] ?? '')) this.offset++;
  }

  private found(): string {
    const c = this.text[this.offset];
    return c === undefined ? 'end of file' : JSON.stringify(c);
  }

  private error(message: string): JsonSyntaxError {
    return new JsonSyntaxError(message, this.offset);
  }
}

// ---------------------------------------------------------------------------
// Field checks

function childField(parent: string, key: string): string {
  return parent ? `${parent}.${key}` : key;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** How a wrong value is shown after "got": `string "x"`, `number 1.5`, `array`, `null`. */
function describe(value: unknown): string {
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

interface IntegerBounds {
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
class Checker {
  readonly problems: ConfigProblem[] = [];

  report(field: string, message: string): void {
    this.problems.push({ field, message });
  }

  /** Members of an object section (absent → empty), reporting fields not in `keys`. */
  object<K extends string>(field: string, value: unknown, keys: readonly K[]): Partial<Record<K, unknown>> {
    if (value === undefined) return {};
    if (!isPlainObject(value)) {
      this.report(field, `expected object, got ${describe(value)}`);
      return {};
    }
    for (const key of Object.keys(value)) {
      if ((keys as readonly string[]).includes(key)) continue;
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
function interfaceNameProblem(name: string): string | undefined {
  return /^[A-Za-z0-9_.-]{1,15}$/.test(name) ? undefined : `invalid interface name ${JSON.stringify(name)} (1-15 characters from A-Z a-z 0-9 _ . -)`;
}

function ipv4Problem(text: string): string | undefined {
  return isIPv4(text) ? undefined : `invalid IPv4 address ${JSON.stringify(text)}`;
}

function prefixProblem(text: string): string | undefined {
  const prefix = parsePrefix(text);
  if (!prefix) return `invalid IPv4 prefix ${JSON.stringify(text)} (expected a.b.c.d/len)`;
  if (ipv4Equal(prefix.network, prefix.address)) return undefined;
  return `host bits set in ${text} (did you mean ${formatCidr(prefix)}?)`;
}

function absolutePathProblem(path: string): string | undefined {
  return path.startsWith('/') ? undefined : `must be an absolute path, got ${JSON.stringify(path)}`;
}

/** sockaddr_un.sun_path holds 108 bytes including the terminating NUL. */
function socketPathProblem(path: string): string | undefined {
  if (Buffer.byteLength(path) > 107) return `socket path is longer than 107 bytes`;
  return absolutePathProblem(path);
}

/** The shadow-utils default NAME_REGEX. */
function groupNameProblem(name: string): string | undefined {
  return /^[a-z_][a-z0-9_-]{0,31}$/.test(name) ? undefined : `invalid group name ${JSON.stringify(name)}`;
}

function listenProblem(text: string): string | undefined {
  const address = parseListenAddress(text);
  if (address && address.port > 0) return undefined;
  return `expected "HOST:PORT" with an IPv4 address or localhost and a port 1-65535, got ${JSON.stringify(text)}`;
}

/** Longest timer Node's setTimeout accepts (2^31-1 ms), in seconds. */
const MAX_TIMEOUT = 2147483;

const TIMEOUT_BOUNDS: Record<keyof TimeoutsConfig, IntegerBounds> = {
  tcpEstablished: { min: 7440, max: MAX_TIMEOUT, minReason: 'RFC 5382 REQ-5 minimum' },
  tcpTransitory: { min: 240, max: MAX_TIMEOUT, minReason: 'RFC 5382 REQ-5 minimum' },
  udp: { min: 120, max: MAX_TIMEOUT, minReason: 'RFC 4787 REQ-5 minimum' },
  icmp: { min: 60, max: MAX_TIMEOUT, minReason: 'RFC 5508 REQ-2 minimum' },
  fragment: { min: 1, max: 60 },
  ipsec: { min: 900, max: MAX_TIMEOUT },
  espPending: { min: 10, max: MAX_TIMEOUT },
  espSquelch: { min: 0, max: MAX_TIMEOUT },
  pptpGrace: { min: 0, max: MAX_TIMEOUT },
};

const PORT = { min: 1, max: 65535 };

// ---------------------------------------------------------------------------
// Sections

function resolveConfig(document: unknown, check: Checker): Config {
  if (!isPlainObject(document)) {
    check.report('', `expected a JSON object at the top level, got ${describe(document)}`);
    document = {};
  }
  const raw = check.object('', document, [
    'tun', 'lan', 'wan', 'ports', 'timeouts', 'limits', 'filtering', 'ipsec',
    'pptp', 'forwards', 'mssClamp', 'state', 'log', 'metrics', 'control',
  ]);
  // Resolved in file order so problems are listed in that order.
  const tun = resolveTun(check, raw.tun);
  const lan = resolveLan(check, raw.lan);
  const wan = resolveWan(check, raw.wan, lan.prefixes);
  return {
    tun,
    lan: lan.config,
    wan,
    ports: resolvePorts(check, raw.ports, wan.mode),
    timeouts: resolveTimeouts(check, raw.timeouts),
    limits: resolveLimits(check, raw.limits),
    filtering: check.choice('filtering', raw.filtering, ['address-port', 'endpoint-independent']) ?? DEFAULTS.filtering,
    ipsec: resolveIpsec(check, raw.ipsec),
    pptp: resolvePptp(check, raw.pptp),
    forwards: resolveForwards(check, raw.forwards, lan.prefixes),
    mssClamp: resolveMssClamp(check, raw.mssClamp),
    state: resolveState(check, raw.state),
    log: resolveLog(check, raw.log),
    metrics: resolveMetrics(check, raw.metrics),
    control: resolveControl(check, raw.control),
  };
}

function resolveTun(check: Checker, value: unknown): TunConfig {
  const raw = check.object('tun', value, ['name', 'mtu', 'offloads', 'io']);
  const d = DEFAULTS.tun;
  return {
    name: check.string('tun.name', raw.name, interfaceNameProblem) ?? d.name,
    mtu: check.integer('tun.mtu', raw.mtu, { min: 576, max: 65535 }) ?? d.mtu,
    offloads: check.boolean('tun.offloads', raw.offloads) ?? d.offloads,
    io: check.choice('tun.io', raw.io, ['auto', 'uring', 'threads']) ?? d.io,
  };
}

/** The LAN section, plus its parsed prefixes (null when any is invalid, so containment checks are skipped). */
function resolveLan(check: Checker, value: unknown): { config: LanConfig; prefixes: Cidr[] | null } {
  const raw = check.object('lan', value, ['interfaces', 'prefixes']);
  const d = DEFAULTS.lan;
  const interfaces = check.list('lan.interfaces', raw.interfaces, (f, v) => check.string(f, v, interfaceNameProblem));
  const prefixes = check.list('lan.prefixes', raw.prefixes, (f, v) => check.string(f, v, prefixProblem));
  const valid = raw.prefixes === undefined || prefixes !== undefined;
  const resolved = prefixes ?? [...d.prefixes];
  return {
    config: { interfaces: interfaces ?? [...d.interfaces], prefixes: resolved },
    prefixes: valid ? resolved.map((p) => parsePrefix(p) as Cidr) : null,
  };
}

function lanPrefixHolding(prefixes: Cidr[], address: string): Cidr | undefined {
  return prefixes.find((prefix) => cidrContains(prefix, address));
}

function resolveWan(check: Checker, value: unknown, lanPrefixes: Cidr[] | null): WanConfig {
  const raw = check.object('wan', value, ['interface', 'mode', 'publicAddress', 'onAddressChange']);
  const d = DEFAULTS.wan;
  check.required('wan.interface', raw.interface);
  const mode = check.choice('wan.mode', raw.mode, ['shared', 'dedicated']) ?? d.mode;
  if (mode === 'dedicated') check.required('wan.publicAddress', raw.publicAddress);
  const publicAddress = check.string('wan.publicAddress', raw.publicAddress, ipv4Problem);
  const holder = publicAddress && lanPrefixes ? lanPrefixHolding(lanPrefixes, publicAddress) : undefined;
  if (holder) check.report('wan.publicAddress', `${publicAddress} lies inside LAN prefix ${formatCidr(holder)}`);
  return {
    interface: check.string('wan.interface', raw.interface, interfaceNameProblem) ?? '',
    mode,
    publicAddress: publicAddress ?? d.publicAddress,
    onAddressChange: check.choice('wan.onAddressChange', raw.onAddressChange, ['move', 'drop']) ?? d.onAddressChange,
  };
}

function resolvePorts(check: Checker, value: unknown, mode: WanMode): PortsConfig {
  const raw = check.object('ports', value, ['range', 'lowRange', 'preserve']);
  const d = DEFAULTS.ports[mode];
  const range = check.portRange('ports.range', raw.range, { ...PORT, minPorts: 64 }) ?? [...d.range];
  let lowRange: PortRange | null = d.lowRange && [...d.lowRange];
  if (raw.lowRange === null) {
    lowRange = null;
  } else if (raw.lowRange !== undefined) {
    lowRange = check.portRange('ports.lowRange', raw.lowRange, { min: 1, max: 1023, minPorts: 1 }) ?? null;
  }
  if (lowRange && lowRange[1] >= range[0] && range[1] >= lowRange[0]) {
    check.report(
      'ports.lowRange',
      `${lowRange[0]}-${lowRange[1]} overlaps ports.range ${range[0]}-${range[1]} (set ports.lowRange to null to map low ports into ports.range)`,
    );
  }
  return { range, lowRange, preserve: check.boolean('ports.preserve', raw.preserve) ?? DEFAULTS.ports.preserve };
}

function resolveTimeouts(check: Checker, value: unknown): TimeoutsConfig {
  const names = Object.keys(TIMEOUT_BOUNDS) as (keyof TimeoutsConfig)[];
  const raw = check.object('timeouts', value, names);
  const resolved: TimeoutsConfig = { ...DEFAULTS.timeouts };
  for (const name of names) {
    resolved[name] = check.integer(`timeouts.${name}`, raw[name], TIMEOUT_BOUNDS[name]) ?? resolved[name];
  }
  return resolved;
}

function resolveLimits(check: Checker, value: unknown): LimitsConfig {
  const raw = check.object('limits', value, ['maxSessions', 'maxHeldFragments']);
  const d = DEFAULTS.limits;
  return {
    maxSessions: check.integer('limits.maxSessions', raw.maxSessions, { min: 1024, max: 16777216 }) ?? d.maxSessions,
    maxHeldFragments: check.integer('limits.maxHeldFragments', raw.maxHeldFragments, { min: 0, max: 65536 }) ?? d.maxHeldFragments,
  };
}

function resolveIpsec(check: Checker, value: unknown): IpsecConfig {
  const raw = check.object('ipsec', value, ['parallel', 'guessing', 'guessMax', 'retries']);
  const d = DEFAULTS.ipsec;
  return {
    parallel: check.boolean('ipsec.parallel', raw.parallel) ?? d.parallel,
    guessing: check.boolean('ipsec.guessing', raw.guessing) ?? d.guessing,
    guessMax: check.integer('ipsec.guessMax', raw.guessMax, { min: 1, max: 16 }) ?? d.guessMax,
    retries: check.integer('ipsec.retries', raw.retries, { min: 1, max: 100 }) ?? d.retries,
  };
}

function resolvePptp(check: Checker, value: unknown): PptpConfig {
  const raw = check.object('pptp', value, ['nonPptpGre']);
  return { nonPptpGre: check.choice('pptp.nonPptpGre', raw.nonPptpGre, ['drop', 'address-only']) ?? DEFAULTS.pptp.nonPptpGre };
}

/**
 * A list of forwards checked exactly as the config's "forwards" section is
 * (shape, LAN prefix, one owner per port or protocol), for runtime forwards
 * (`vpnmasq forwards add`). `lanPrefixes` null skips the prefix check;
 * `fieldOf(i)` names entry i in problems. Throws ConfigError.
 */
export function checkForwards(list: unknown[], lanPrefixes: readonly string[] | null, fieldOf: (i: number) => string, source: string): Forward[] {
  const check = new Checker();
  const forwards = resolveForwards(check, list, lanPrefixes && lanPrefixes.map((p) => parseCidr(p)), fieldOf);
  if (check.problems.length > 0) throw new ConfigError(source, check.problems);
  return forwards;
}

function resolveForwards(check: Checker, value: unknown, lanPrefixes: Cidr[] | null, fieldOf = (i: number) => `forwards[${i}]`): Forward[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) {
    check.report('forwards', `expected array, got ${describe(value)}`);
    return [];
  }
  const claimedBy = new Map<string, string>();
  const forwards: Forward[] = [];
  value.forEach((item, i) => {
    const field = fieldOf(i);
    const forward = resolveForward(check, field, item, lanPrefixes);
    if (!forward) return;
    const claim = forward.proto === 'tcp' || forward.proto === 'udp' ? `${forward.proto} port ${forward.publicPort}` : forward.proto;
    const previous = claimedBy.get(claim);
    if (previous === undefined) {
      claimedBy.set(claim, field);
      forwards.push(forward);
    } else if ('publicPort' in forward) {
      check.report(`${field}.publicPort`, `${claim} is already forwarded by ${previous}`);
    } else {
      check.report(`${field}.proto`, `only one ${claim} forward is allowed; ${previous} already forwards ${claim}`);
    }
  });
  return forwards;
}

function resolveForward(check: Checker, field: string, value: unknown, lanPrefixes: Cidr[] | null): Forward | undefined {
  if (!isPlainObject(value)) {
    check.report(field, `expected object, got ${describe(value)}`);
    return undefined;
  }
  const raw = check.object(field, value, ['proto', 'publicPort', 'lanAddress', 'lanPort']);
  const proto = check.required(`${field}.proto`, raw.proto)
    ? check.choice(`${field}.proto`, raw.proto, ['tcp', 'udp', 'esp', 'gre'])
    : undefined;
  const lanAddress = check.required(`${field}.lanAddress`, raw.lanAddress)
    ? check.string(`${field}.lanAddress`, raw.lanAddress, ipv4Problem)
    : undefined;
  if (lanAddress && lanPrefixes && !lanPrefixHolding(lanPrefixes, lanAddress)) {
    const prefixes = lanPrefixes.map(formatCidr).join(', ');
    check.report(`${field}.lanAddress`, `${lanAddress} is not inside a LAN prefix (${prefixes})`);
  }
  if (proto === 'esp' || proto === 'gre') {
    for (const key of ['publicPort', 'lanPort'] as const) {
      if (raw[key] !== undefined) check.report(`${field}.${key}`, `not allowed for ${proto} forwards (${proto} has no ports)`);
    }
    return lanAddress ? { proto, lanAddress } : undefined;
  }
  // With an invalid proto it is unknown whether ports are required; still check their types.
  const publicPort = proto === undefined || check.required(`${field}.publicPort`, raw.publicPort)
    ? check.integer(`${field}.publicPort`, raw.publicPort, PORT)
    : undefined;
  const lanPort = check.integer(`${field}.lanPort`, raw.lanPort, PORT);
  if (!proto || !lanAddress || publicPort === undefined) return undefined;
  return { proto, publicPort, lanAddress, lanPort: lanPort ?? publicPort };
}

function resolveMssClamp(check: Checker, value: unknown): MssClamp {
  if (value === undefined) return DEFAULTS.mssClamp;
  if (value === null || value === 'auto') return value;
  if (typeof value === 'number') return check.integer('mssClamp', value, { min: 536, max: 65495 }) ?? DEFAULTS.mssClamp;
  check.report('mssClamp', `expected null, "auto" or an integer, got ${describe(value)}`);
  return DEFAULTS.mssClamp;
}

function resolveState(check: Checker, value: unknown): StateConfig {
  const raw = check.object('state', value, ['path', 'synchronous', 'groupCommitMs', 'flushIntervalMs']);
  const d = DEFAULTS.state;
  return {
    path: check.string('state.path', raw.path, absolutePathProblem) ?? d.path,
    synchronous: check.choice('state.synchronous', raw.synchronous, ['normal', 'full', 'off']) ?? d.synchronous,
    groupCommitMs: check.integer('state.groupCommitMs', raw.groupCommitMs, { min: 0, max: 100 }) ?? d.groupCommitMs,
    flushIntervalMs: check.integer('state.flushIntervalMs', raw.flushIntervalMs, { min: 50, max: 10000 }) ?? d.flushIntervalMs,
  };
}

function resolveLog(check: Checker, value: unknown): LogConfig {
  const raw = check.object('log', value, ['format', 'level', 'rateLimitPerMinute']);
  const d = DEFAULTS.log;
  return {
    format: check.choice('log.format', raw.format, ['journal', 'json']) ?? d.format,
    level: check.choice('log.level', raw.level, ['error', 'warn', 'info', 'debug']) ?? d.level,
    rateLimitPerMinute: check.integer('log.rateLimitPerMinute', raw.rateLimitPerMinute, { min: 1, max: 100000 }) ?? d.rateLimitPerMinute,
  };
}

function resolveMetrics(check: Checker, value: unknown): MetricsConfig | null {
  if (value === undefined || value === null) return DEFAULTS.metrics;
  const raw = check.object('metrics', value, ['listen']);
  if (!isPlainObject(value) || !check.required('metrics.listen', raw.listen)) return DEFAULTS.metrics;
  const listen = check.string('metrics.listen', raw.listen, listenProblem);
  return listen === undefined ? DEFAULTS.metrics : { listen };
}

function resolveControl(check: Checker, value: unknown): ControlConfig {
  const raw = check.object('control', value, ['socket', 'group']);
  const d = DEFAULTS.control;
  return {
    socket: check.string('control.socket', raw.socket, socketPathProblem) ?? d.socket,
    group: check.string('control.group', raw.group, groupNameProblem) ?? d.group,
  };
}
