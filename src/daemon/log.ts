/**
 * Daemon logging on stderr, for journald (sd-daemon `<N>` priority prefixes)
 * or as JSON lines, with per-kind rate limiting for high-volume events such
 * as VPN session changes and packet drops.
 */
import type { Writable } from 'node:stream';
import winston from 'winston';
import type { LogConfig, LogLevel } from '../config/schema';

export type LogFields = Record<string, unknown>;

export interface Logger {
  error(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  debug(msg: string, fields?: LogFields): void;
  /**
   * Logs a line (info, or `level`) for an event of `kind`, at most
   * `rateLimitPerMinute` per kind per minute. The first line logged after
   * some were suppressed carries `suppressed=N`.
   */
  event(kind: string, msg: string, fields?: LogFields, level?: 'info' | 'debug'): void;
  /** Like event(), for a line that costs something to build: `build` runs only when the line is written. */
  lazyEvent(kind: string, level: 'info' | 'debug', build: () => [msg: string, fields: LogFields]): void;
  /** Whether lines of `level` are written (so a caller can skip building them). */
  enabled(level: LogLevel): boolean;
  /** A reload's format, level and rate limit, from the next line on. */
  configure(options: LogConfig): void;
}

export interface LoggerOptions extends LogConfig {
  /** Clock in milliseconds; defaults to Date.now. */
  now?: () => number;
  /** Where lines go instead of stderr (for tests). */
  stream?: Writable;
}

/** Winston severities: lower is more severe. */
const SEVERITY: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

/** sd-daemon(3) prefixes: SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG. */
const JOURNAL_PRIORITY: Record<LogLevel, string> = { error: '<3>', warn: '<4>', info: '<6>', debug: '<7>' };

const RATE_WINDOW_MS = 60_000;

/** What the line formats receive on winston's info object besides level and message. */
interface LineInfo {
  level: string;
  message: unknown;
  ts?: string;
  fields?: LogFields;
}

export function createLogger(options: LoggerOptions): Logger {
  const now = options.now ?? Date.now;
  const renderer = (format: LogConfig['format']) => (format === 'json' ? renderJsonLine : renderJournalLine);
  let renderLine = renderer(options.format);
  const output = winston.createLogger({
    levels: SEVERITY,
    level: options.level,
    format: winston.format.printf((info) => renderLine(info as LineInfo)),
    transports: [
      options.stream
        ? new winston.transports.Stream({ stream: options.stream })
        : new winston.transports.Console({ stderrLevels: Object.keys(SEVERITY) }),
    ],
  });
  const write = (level: LogLevel, msg: string, fields: LogFields = {}): void => {
    output.log({ level, message: msg, ts: new Date(now()).toISOString(), fields });
  };
  const limiter = new EventRateLimiter(options.rateLimitPerMinute, now);
  const lazyEvent: Logger['lazyEvent'] = (kind, level, build) => {
    if (!output.isLevelEnabled(level)) return;
    const suppressed = limiter.admit(kind);
    if (suppressed === undefined) return;
    const [msg, fields] = build();
    write(level, msg, suppressed > 0 ? { event: kind, ...fields, suppressed } : { event: kind, ...fields });
  };

  return {
    error: (msg, fields) => write('error', msg, fields),
    warn: (msg, fields) => write('warn', msg, fields),
    info: (msg, fields) => write('info', msg, fields),
    debug: (msg, fields) => write('debug', msg, fields),
    event: (kind, msg, fields, level = 'info') => lazyEvent(kind, level, () => [msg, fields ?? {}]),
    lazyEvent,
    enabled: (level) => output.isLevelEnabled(level),
    configure(next) {
      renderLine = renderer(next.format);
      output.level = next.level;
      limiter.perMinute = next.rateLimitPerMinute;
    },
  };
}

/** Fixed one-minute windows per event kind. */
class EventRateLimiter {
  private readonly windows = new Map<string, { start: number; admitted: number; suppressed: number }>();

  constructor(public perMinute: number, private readonly now: () => number) {}

  /**
   * Returns undefined if this event must be suppressed, otherwise how many
   * events of this kind were suppressed since the last admitted one.
   */
  admit(kind: string): number | undefined {
    const t = this.now();
    let window = this.windows.get(kind);
    if (!window) {
      window = { start: t, admitted: 0, suppressed: 0 };
      this.windows.set(kind, window);
    } else if (t - window.start >= RATE_WINDOW_MS) {
      window.start = t;
      window.admitted = 0;
    }
    if (window.admitted >= this.perMinute) {
      window.suppressed++;
      return undefined;
    }
    window.admitted++;
    const suppressed = window.suppressed;
    window.suppressed = 0;
    return suppressed;
  }
}

/** Makes values JSON-friendly: errors become their message, bigints strings. */
function plain(_key: string, value: unknown): unknown {
  if (value instanceof Error) return value.message;
  if (typeof value === 'bigint') return value.toString();
  return value;
}

/** `<6>message key=value key="value with spaces"` */
function renderJournalLine(info: LineInfo): string {
  const level = info.level as LogLevel;
  let line = JOURNAL_PRIORITY[level] + String(info.message).replace(/\n/g, '\\n');
  for (const [key, value] of Object.entries(info.fields ?? {})) line += ` ${key}=${journalValue(value)}`;
  return line;
}

function journalValue(value: unknown): string {
  const v = plain('', value);
  if (typeof v !== 'string') return JSON.stringify(v, plain) ?? String(v);
  return v === '' || /[\s"=\\]/.test(v) ? JSON.stringify(v) : v;
}

/** `{"ts":…,"level":…,"msg":…,…fields}`; fields cannot override the first three. */
function renderJsonLine(info: LineInfo): string {
  const record: Record<string, unknown> = { ts: info.ts, level: info.level, msg: info.message };
  for (const [key, value] of Object.entries(info.fields ?? {})) {
    if (!(key in record)) record[key] = value;
  }
  return JSON.stringify(record, plain);
}
