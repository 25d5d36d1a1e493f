/**
 * The config file's schema: every section's fields, their defaults and
 * checks, resolved into a complete {@link Config}. The file is JSON with
 * comment lines (json.ts); problems are collected and named by field
 * (checks.ts), so `vpnmasq config check FILE` lists everything to fix.
 * What a reload does with each field is declared once, in {@link RELOAD}.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { Cidr, cidrContains, formatCidr, formatIPv4, ipv4ToNumber, numberToIPv4, parseCidr } from '../core/ipv4-addr';
import { Forward, forwardClaim, PortRange } from '../core/forward';
import { ADDRESS_CHANGE_POLICIES, AddressChangePolicy, Synchronous, SYNCHRONOUS_MODES } from '../persist/options';
import {
  absolutePathProblem, Checker, ConfigError, ConfigProblem, describe, groupNameProblem, IntegerBounds, interfaceNameProblem, ipv4Problem,
  isPlainObject, listenProblem, parsePrefix, prefixProblem, socketPathProblem,
} from './checks';
import { JsonSyntaxError, readJsonWithComments } from './json';
import { TUN_NAME_MAX, tunDeviceNames } from '../core/side';

/** tun.name names two devices (core/side.ts): both must be valid interface names. */
function tunNameProblem(name: string): string | undefined {
  const bad = interfaceNameProblem(name);
  if (bad !== undefined) return bad;
  if (name.length > TUN_NAME_MAX) return `${JSON.stringify(name)} is too long: at most ${TUN_NAME_MAX} characters, so that the WAN-side device (the name plus "-w") fits the 15 of an interface name`;
  return undefined;
}

export type { AddressChangePolicy, Forward, PortRange };
export { ConfigError };
export type { ConfigProblem };

export const DEFAULT_CONFIG_PATH = '/etc/vpnmasq/vpnmasq.json';

export type WanMode = 'shared' | 'dedicated';
export type FilteringMode = 'address-port' | 'endpoint-independent';
export type NonPptpGrePolicy = 'drop' | 'address-only';
export type LogFormat = 'journal' | 'json';
export type LogLevel = 'error' | 'warn' | 'info' | 'debug';

export type TunIoMode = 'auto' | 'uring' | 'threads';
export interface TunConfig { name: string; mtu: number; offloads: boolean; io: TunIoMode; busyPollUs: number }
/** Every TUN device the daemon opens for this config; what follows the devices (the firewall ruleset) takes them from here. */
export function tunDevices(cfg: { tun: TunConfig }): string[] {
  return [...tunDeviceNames(cfg.tun.name)];
}
/**
 * What happens to IPv6 from the LAN; vpnmasq translates IPv4 only.
 * 'drop' (default): refused as it arrives, with ICMPv6 administratively
 * prohibited so dual-stack hosts fall back to IPv4 at once; 'route': left to
 * the kernel's IPv6 routing and the operator's ip6 firewall, untranslated.
 */
export type LanIpv6Policy = 'drop' | 'route';
export interface LanConfig { interfaces: string[]; prefixes: string[]; ipv6: LanIpv6Policy }
export interface WanConfig {
  interface: string;
  mode: WanMode;
  /**
   * Dedicated mode: the first public address (required, or given through
   * publicAddresses); in shared mode null means "use the WAN interface's address".
   */
  publicAddress: string | null;
  /** Dedicated mode: every public address (paired pooling spreads LAN hosts over them); empty in shared mode. */
  publicAddresses: string[];
  onAddressChange: AddressChangePolicy;
}
export interface PortsConfig {
  range: PortRange;
  lowRange: PortRange | null;
  preserve: boolean;
  /**
   * Whether ports.range and ports.lowRange were set in the file. A forward
   * inside a range that was set is an error; a default range leaves the
   * forwarded ports out.
   */
  rangeSet: boolean;
  lowRangeSet: boolean;
}
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
  /** A session the outside created lives this long until the LAN host answers. */
  unanswered: number;
}
export type RefusePolicy = 'icmp' | 'drop';
export interface LimitsConfig {
  maxSessions: number;
  maxHeldFragments: number;
  /** Sessions one LAN host may hold. */
  hostSessions: number;
  /** New sessions per second one LAN host may open (one second's worth at once); 0: no limit. */
  hostNewPerSecond: number;
  /** A new outbound flow that cannot be mapped: ICMP unreachable code 13 to its sender (RFC 5508 REQ-8), or only dropped. */
  refuse: RefusePolicy;
  /** Unanswered sessions per forward (and for all endpoint-independent mappings together); the oldest gives way. */
  forwardUnanswered: number;
  /** Unanswered sessions per remote address. */
  remoteUnanswered: number;
  /** Fragments one source address may have held at once. */
  fragmentsPerSource: number;
}
export interface IpsecConfig { parallel: boolean; guessing: boolean; guessMax: number; retries: number }
export interface PptpConfig { nonPptpGre: NonPptpGrePolicy }
/** null: no clamping; 'auto': clamp to the TUN MTU; a number: clamp to that MSS. */
export type MssClamp = null | 'auto' | number;
export interface StateConfig { path: string; synchronous: Synchronous; flushIntervalMs: number }
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
  tun: { name: 'vpnmasq0', mtu: 1500, offloads: true, io: 'auto' as TunIoMode, busyPollUs: 100 },
  lan: { interfaces: ['lan0'], prefixes: ['10.77.0.0/24'], ipv6: 'drop' as LanIpv6Policy },
  wan: { mode: 'shared', publicAddress: null, onAddressChange: 'move' },
  ports: {
    // Shared mode: Linux's ip_local_port_range defaults to 32768-60999; the box keeps 32768-36863 (4096 ports)
    // for its own connections and vpnmasq takes the rest up to 65535 (28672 ports).
    shared: { range: [36864, 65535], lowRange: null },
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
    unanswered: 10,
  },
  limits: {
    maxSessions: 262144, maxHeldFragments: 512, hostNewPerSecond: 20000, refuse: 'icmp',
    forwardUnanswered: 4096, remoteUnanswered: 64, fragmentsPerSource: 64,
  },
  filtering: 'address-port',
  ipsec: { parallel: true, guessing: true, guessMax: 5, retries: 5 },
  pptp: { nonPptpGre: 'drop' },
  mssClamp: null,
  state: { path: '/var/lib/vpnmasq/state.db', synchronous: 'normal', flushIntervalMs: 1000 },
  log: { format: 'journal', level: 'info', rateLimitPerMinute: 60 },
  metrics: null,
  control: { socket: '/run/vpnmasq/control.sock', group: 'vpnmasq' },
} as const;

// ---------------------------------------------------------------------------
// Reload

/**
 * What a reload (`vpnmasq reload`, SIGHUP) does with a changed field:
 * `runtime` fields are applied by the running daemon, to the entries that
 * exist as well as to new ones; a changed `restart` field makes the whole
 * reload fail with "FIELD: needs a restart (WHY)", the running config kept.
 */
export type ReloadKind = { readonly kind: 'runtime' } | { readonly kind: 'restart'; readonly why: string };

/** One kind per field; a section's object, an array or a nullable section is one field. */
export type ReloadKinds<T> = {
  readonly [K in keyof T]-?: null extends T[K] ? ReloadKind : T[K] extends readonly unknown[] ? ReloadKind
    : T[K] extends object ? ReloadKinds<T[K]> : ReloadKind;
};

const RUNTIME: ReloadKind = { kind: 'runtime' };
const restart = (why: string): ReloadKind => ({ kind: 'restart', why });

/**
 * Every field's reload kind. A field added to {@link Config} does not compile
 * until it is declared here; the daemon applies every runtime section
 * (src/daemon/reload.ts). Two limits are runtime only downwards: the tables
 * are allocated at start, so raising `limits.*` above the size the daemon
 * started with also needs a restart (the daemon says so).
 */
export const RELOAD: ReloadKinds<Config> = {
  tun: {
    name: restart('the TUN device is created at start'),
    mtu: restart('the packet buffers are sized for it at start'),
    offloads: restart('the TUN device is opened with them'),
    io: restart('the TUN queues are opened in this mode at start'),
    busyPollUs: restart('the packet loop is started with it'),
  },
  lan: {
    interfaces: restart('the policy rules for the LAN are installed at start'),
    prefixes: restart('the policy rules and the packet path\'s direction test are set up at start'),
    ipv6: restart('the IPv6 rules for the LAN are installed at start'),
  },
  wan: {
    interface: restart('the WAN interface is watched and routed from start'),
    mode: restart('shared and dedicated mode install different routing at start'),
    publicAddress: restart('the public address is bound at start; every mapping uses it'),
    publicAddresses: restart('the public addresses are bound at start; every mapping uses one of them'),
    onAddressChange: RUNTIME,
  },
  ports: { range: RUNTIME, lowRange: RUNTIME, preserve: RUNTIME, rangeSet: RUNTIME, lowRangeSet: RUNTIME },
  timeouts: {
    tcpEstablished: RUNTIME, tcpTransitory: RUNTIME, udp: RUNTIME, icmp: RUNTIME, fragment: RUNTIME,
    ipsec: RUNTIME, espPending: RUNTIME, espSquelch: RUNTIME, pptpGrace: RUNTIME, unanswered: RUNTIME,
  },
  limits: {
    maxSessions: RUNTIME, maxHeldFragments: RUNTIME, hostSessions: RUNTIME, hostNewPerSecond: RUNTIME, refuse: RUNTIME,
    forwardUnanswered: restart('each forward\'s ring of unanswered sessions is allocated at start'),
    remoteUnanswered: RUNTIME,
    fragmentsPerSource: restart('the fragment hold pool is set up at start'),
  },
  filtering: restart('the session table is built for it at start (endpoint-independent filtering gives each mapping a public port of its own)'),
  ipsec: { parallel: RUNTIME, guessing: RUNTIME, guessMax: RUNTIME, retries: RUNTIME },
  pptp: { nonPptpGre: RUNTIME },
  forwards: RUNTIME,
  mssClamp: RUNTIME,
  state: {
    path: restart('the state database is opened and restored at start'),
    synchronous: RUNTIME,
    flushIntervalMs: RUNTIME,
  },
  log: { format: RUNTIME, level: RUNTIME, rateLimitPerMinute: RUNTIME },
  metrics: RUNTIME,
  control: { socket: RUNTIME, group: RUNTIME },
};

/**
 * The reload kind of a field path as configDiff names it (`timeouts.udp`,
 * `metrics`, `forwards`): the declaration of the field or of the nearest
 * section above it that is declared as one field.
 */
export function reloadKind(field: string): ReloadKind {
  let node: unknown = RELOAD;
  for (const part of field.split('.')) {
    if (isReloadKind(node)) return node;
    if (!isPlainObject(node) || !Object.hasOwn(node, part)) throw new Error(`no reload kind declared for config field "${field}"`);
    node = node[part];
  }
  if (!isReloadKind(node)) throw new Error(`config field "${field}" is a section; its fields have their own reload kinds`);
  return node;
}

function isReloadKind(node: unknown): node is ReloadKind {
  return isPlainObject(node) && (node.kind === 'runtime' || node.kind === 'restart') && Object.keys(node).every((k) => k === 'kind' || k === 'why');
}

/** Every declared field path with its kind, in declaration order (`tun.name`, ..., `control.group`). */
export function reloadFields(): Array<[string, ReloadKind]> {
  const out: Array<[string, ReloadKind]> = [];
  const walk = (node: unknown, prefix: string): void => {
    if (isReloadKind(node)) { out.push([prefix, node]); return; }
    for (const [k, v] of Object.entries(node as Record<string, unknown>)) walk(v, prefix ? `${prefix}.${k}` : k);
  };
  walk(RELOAD, '');
  return out;
}

// ---------------------------------------------------------------------------
// Public entry points

export function loadConfig(path: string = DEFAULT_CONFIG_PATH, warnings?: ConfigProblem[]): Config {
  return parseConfig(readConfigText(path), path, warnings);
}

/** Largest config file read: a real one is a few KB; this stops /dev/zero or a wrong path to a big file before it fills memory. */
export const MAX_CONFIG_BYTES = 1 << 20;

/** The file's text, read at most MAX_CONFIG_BYTES (whatever the file type: stat cannot size a device or a pipe). */
function readConfigText(path: string): string {
  const buf = new Uint8Array(MAX_CONFIG_BYTES + 1);
  let length = 0;
  try {
    const fd = openSync(path, 'r');
    try {
      for (let n = 1; n > 0 && length < buf.length; length += n) n = readSync(fd, buf, length, buf.length - length, null);
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    throw new ConfigError(path, [{ field: '', message: `cannot read file: ${(err as Error).message}` }]);
  }
  if (length > MAX_CONFIG_BYTES) {
    throw new ConfigError(path, [{ field: '', message: `file larger than ${MAX_CONFIG_BYTES} bytes (stopped reading at byte ${MAX_CONFIG_BYTES + 1}); a config file is a few KB` }]);
  }
  return new TextDecoder().decode(buf.subarray(0, length));
}

/**
 * Parses and validates a config file's text; `source` names the file in
 * error messages. Fields that are accepted but no longer used are pushed to
 * `warnings`.
 */
export function parseConfig(text: string, source: string, warnings: ConfigProblem[] = []): Config {
  let document;
  try {
    document = readJsonWithComments(text);
  } catch (err) {
    if (!(err instanceof JsonSyntaxError)) throw err;
    throw new ConfigError(source, [{ field: '', message: err.message }]);
  }
  const check = new Checker();
  for (const dup of document.duplicates) check.report(dup.field, `duplicate field at line ${dup.line}, column ${dup.column}`);
  const config = resolveConfig(document.value, check);
  warnings.push(...check.warnings);
  if (check.problems.length > 0) throw new ConfigError(source, check.problems);
  return config;
}

// ---------------------------------------------------------------------------
// Bounds

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
  unanswered: { min: 1, max: 240 },
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
  const ports = resolvePorts(check, raw.ports, wan.mode);
  return {
    tun,
    lan: lan.config,
    wan,
    ports,
    timeouts: resolveTimeouts(check, raw.timeouts),
    limits: resolveLimits(check, raw.limits),
    filtering: check.choice('filtering', raw.filtering, ['address-port', 'endpoint-independent']) ?? DEFAULTS.filtering,
    ipsec: resolveIpsec(check, raw.ipsec),
    pptp: resolvePptp(check, raw.pptp),
    forwards: resolveForwards(check, raw.forwards, lan.prefixes, ports),
    mssClamp: resolveMssClamp(check, raw.mssClamp),
    state: resolveState(check, raw.state),
    log: resolveLog(check, raw.log),
    metrics: resolveMetrics(check, raw.metrics),
    control: resolveControl(check, raw.control),
  };
}

function resolveTun(check: Checker, value: unknown): TunConfig {
  const raw = check.object('tun', value, ['name', 'mtu', 'offloads', 'io', 'busyPollUs']);
  const d = DEFAULTS.tun;
  return {
    name: check.string('tun.name', raw.name, tunNameProblem) ?? d.name,
    mtu: check.integer('tun.mtu', raw.mtu, { min: 576, max: 65535 }) ?? d.mtu,
    offloads: check.boolean('tun.offloads', raw.offloads) ?? d.offloads,
    io: check.choice('tun.io', raw.io, ['auto', 'uring', 'threads']) ?? d.io,
    busyPollUs: check.integer('tun.busyPollUs', raw.busyPollUs, { min: 0, max: 1000 }) ?? d.busyPollUs,
  };
}

/** The LAN section, plus its parsed prefixes (null when any is invalid, so containment checks are skipped). */
function resolveLan(check: Checker, value: unknown): { config: LanConfig; prefixes: Cidr[] | null } {
  const raw = check.object('lan', value, ['interfaces', 'prefixes', 'ipv6']);
  const d = DEFAULTS.lan;
  const interfaces = check.list('lan.interfaces', raw.interfaces, (f, v) => check.string(f, v, interfaceNameProblem));
  const prefixes = check.list('lan.prefixes', raw.prefixes, (f, v) => check.string(f, v, prefixProblem));
  const valid = raw.prefixes === undefined || prefixes !== undefined;
  const resolved = prefixes ?? [...d.prefixes];
  return {
    config: { interfaces: interfaces ?? [...d.interfaces], prefixes: resolved, ipv6: check.choice('lan.ipv6', raw.ipv6, ['drop', 'route']) ?? d.ipv6 },
    prefixes: valid ? resolved.map((p) => parsePrefix(p) as Cidr) : null,
  };
}

function lanPrefixHolding(prefixes: Cidr[], address: string): Cidr | undefined {
  return prefixes.find((prefix) => cidrContains(prefix, address));
}

function resolveWan(check: Checker, value: unknown, lanPrefixes: Cidr[] | null): WanConfig {
  const raw = check.object('wan', value, ['interface', 'mode', 'publicAddress', 'publicAddresses', 'onAddressChange']);
  const d = DEFAULTS.wan;
  check.required('wan.interface', raw.interface);
  const mode = check.choice('wan.mode', raw.mode, ['shared', 'dedicated']) ?? d.mode;
  if (mode === 'dedicated' && raw.publicAddresses === undefined) check.required('wan.publicAddress', raw.publicAddress);
  const publicAddress = check.string('wan.publicAddress', raw.publicAddress, ipv4Problem);
  const inLan = (field: string, address: string): void => {
    const holder = lanPrefixes ? lanPrefixHolding(lanPrefixes, address) : undefined;
    if (holder) check.report(field, `${address} lies inside LAN prefix ${formatCidr(holder)}`);
  };
  if (publicAddress) inLan('wan.publicAddress', publicAddress);
  let publicAddresses = mode === 'dedicated' && publicAddress ? [publicAddress] : [];
  if (raw.publicAddresses !== undefined) {
    if (mode !== 'dedicated') {
      check.report('wan.publicAddresses', 'only in dedicated mode (shared mode uses the WAN interface\'s address)');
    } else if (raw.publicAddress !== undefined) {
      check.report('wan.publicAddresses', 'give either wan.publicAddress or wan.publicAddresses');
    } else {
      publicAddresses = resolvePublicAddresses(check, raw.publicAddresses) ?? [];
      publicAddresses.forEach((a, i) => inLan(`wan.publicAddresses[${i}]`, a));
    }
  }
  return {
    interface: check.string('wan.interface', raw.interface, interfaceNameProblem) ?? '',
    mode,
    publicAddress: publicAddresses[0] ?? publicAddress ?? d.publicAddress,
    publicAddresses,
    onAddressChange: check.choice('wan.onAddressChange', raw.onAddressChange, ADDRESS_CHANGE_POLICIES) ?? d.onAddressChange,
  };
}

/** At most a /24 of public addresses (each takes about 200 KB of port state). */
const MAX_PUBLIC_ADDRESSES = 256;

/**
 * wan.publicAddresses: a list of addresses, or a prefix standing for its
 * host addresses (without the network and broadcast addresses up to /30;
 * list them to use those too).
 */
function resolvePublicAddresses(check: Checker, value: unknown): string[] | undefined {
  const field = 'wan.publicAddresses';
  let list: string[] | undefined;
  if (typeof value === 'string') {
    const problem = prefixProblem(value);
    if (problem !== undefined) {
      check.report(field, `${problem}, or give a list of addresses`);
      return undefined;
    }
    const c = parsePrefix(value) as Cidr;
    const size = 2 ** (32 - c.prefixLen);
    if (size > MAX_PUBLIC_ADDRESSES + 2) {
      check.report(field, `${value} has ${size} addresses; at most ${MAX_PUBLIC_ADDRESSES} are allowed`);
      return undefined;
    }
    const base = ipv4ToNumber(c.network);
    const skip = c.prefixLen <= 30 ? 1 : 0;
    list = [];
    for (let i = skip; i < size - skip; i++) list.push(formatIPv4(numberToIPv4(base + i)));
  } else {
    list = check.list(field, value, (f, v) => check.string(f, v, ipv4Problem));
    if (list === undefined) return undefined;
    if (list.length > MAX_PUBLIC_ADDRESSES) check.report(field, `${list.length} addresses; at most ${MAX_PUBLIC_ADDRESSES} are allowed`);
    const seen = new Map<string, number>();
    list.forEach((a, i) => {
      const first = seen.get(a);
      if (first !== undefined) check.report(`${field}[${i}]`, `${a} is already listed at ${field}[${first}]`);
      else seen.set(a, i);
    });
  }
  return list;
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
  return { range, lowRange, preserve: check.boolean('ports.preserve', raw.preserve) ?? DEFAULTS.ports.preserve,
    rangeSet: raw.range !== undefined, lowRangeSet: raw.lowRange !== undefined };
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
  const raw = check.object('limits', value, [
    'maxSessions', 'maxHeldFragments', 'hostSessions', 'hostNewPerSecond', 'refuse', 'forwardUnanswered', 'remoteUnanswered', 'fragmentsPerSource',
  ]);
  const d = DEFAULTS.limits;
  // The session table's records are numbered below 2^24 (src/core/tuple-index.ts).
  const maxSessions = check.integer('limits.maxSessions', raw.maxSessions, { min: 1024, max: 16777215 }) ?? d.maxSessions;
  const maxHeldFragments = check.integer('limits.maxHeldFragments', raw.maxHeldFragments, { min: 0, max: 65536 }) ?? d.maxHeldFragments;
  return {
    maxSessions,
    maxHeldFragments,
    // One host may hold an eighth of the table unless told otherwise.
    hostSessions: check.integer('limits.hostSessions', raw.hostSessions, { min: 16, max: maxSessions }) ?? Math.max(1024, maxSessions >>> 3),
    hostNewPerSecond: check.integer('limits.hostNewPerSecond', raw.hostNewPerSecond, { min: 0, max: 10_000_000 }) ?? d.hostNewPerSecond,
    refuse: check.choice('limits.refuse', raw.refuse, ['icmp', 'drop']) ?? d.refuse,
    forwardUnanswered: check.integer('limits.forwardUnanswered', raw.forwardUnanswered, { min: 16, max: maxSessions }) ?? d.forwardUnanswered,
    remoteUnanswered: check.integer('limits.remoteUnanswered', raw.remoteUnanswered, { min: 1, max: maxSessions }) ?? d.remoteUnanswered,
    fragmentsPerSource: check.integer('limits.fragmentsPerSource', raw.fragmentsPerSource, { min: 1, max: 65536 }) ?? d.fragmentsPerSource,
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
export function checkForwards(list: unknown[], lanPrefixes: readonly string[] | null, fieldOf: (i: number) => string, source: string,
  ports: PortsConfig | null = null): Forward[] {
  const check = new Checker();
  const forwards = resolveForwards(check, list, lanPrefixes && lanPrefixes.map((p) => parseCidr(p)), ports, fieldOf);
  if (check.problems.length > 0) throw new ConfigError(source, check.problems);
  return forwards;
}

/**
 * The forwards; with `ports` (a range set in the file) a TCP/UDP forward
 * inside the dynamic range is refused: a LAN host's mapping could take its
 * port (RFC 4787 REQ-3a classes included).
 */
function resolveForwards(check: Checker, value: unknown, lanPrefixes: Cidr[] | null, ports: PortsConfig | null,
  fieldOf = (i: number) => `forwards[${i}]`): Forward[] {
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
    if (ports && 'publicPort' in forward) {
      const p = forward.publicPort;
      const inside = (r: PortRange | null) => r !== null && p >= r[0] && p <= r[1];
      if (ports.rangeSet && inside(ports.range)) {
        check.report(`${field}.publicPort`, `${p} lies inside ports.range ${ports.range[0]}-${ports.range[1]}, where LAN hosts get their public ports: move the forward or narrow ports.range`);
      } else if (ports.lowRangeSet && inside(ports.lowRange)) {
        check.report(`${field}.publicPort`, `${p} lies inside ports.lowRange ${ports.lowRange?.[0]}-${ports.lowRange?.[1]}, where LAN hosts' low ports get theirs: move the forward or set ports.lowRange`);
      }
    }
    const claim = forwardClaim(forward);
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
  const raw = check.object('state', value, ['path', 'synchronous', 'flushIntervalMs'], {
    groupCommitMs: 'every batch that creates entries is committed before it is written',
  });
  const d = DEFAULTS.state;
  return {
    path: check.string('state.path', raw.path, absolutePathProblem) ?? d.path,
    synchronous: check.choice('state.synchronous', raw.synchronous, SYNCHRONOUS_MODES) ?? d.synchronous,
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
